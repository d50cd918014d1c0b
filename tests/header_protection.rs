//! What readers see: RFC 9788 header protection of what we sign and
//! encrypt, checked by openssl, gpgsm, NSS and Python's `email` package;
//! read back inbound (differences named, hidden fields restored); and the
//! visible verdict (subject tags, info header) that no sender can forge.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// The original header fields of the test message, as a sender wrote them
/// (and a Date of now: signingTime and Date must agree inbound).
const FIELDS: [(&str, &str); 6] = [
    ("From", "Alice <alice@example.com>"),
    ("To", "Carol <carol@example.com>"),
    ("Cc", "dave@example.net"),
    ("Subject", "Quarterly figures"),
    ("Message-ID", "<hp-test-1@example.com>"),
    ("Keywords", "finance, secret"),
];

fn now() -> String {
    let out = run(Command::new("date").arg("-R"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn message() -> Vec<u8> {
    let mut m = format!("Date: {}\n", now());
    for (n, v) in FIELDS {
        m.push_str(&format!("{n}: {v}\n"));
    }
    m.push_str("MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\nThe numbers are good.\nSecond line.\n");
    m.into_bytes()
}

fn config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let certs = cert_dir(&["carol"]);
    let path = certs.keep();
    write_config(
        dir,
        "",
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n[decrypt]\nenabled = true\n[harvest]\nenabled = false\n\
             [encrypt]\ncerts_dir = \"{}\"\n[[encrypt.policy]]\nrecipient = \"carol@example.com\"\nmode = \"required\"\n{extra}\n{}",
            pki().path("root.crt").display(),
            path.display(),
            pki().key_table()
        ),
    )
}

/// The header fields of an entity as Python's `email` package reads them
/// (policy default: RFC 2047 decoded), one `Name: value` per line.
fn python_fields(entity: &[u8]) -> Vec<(String, String)> {
    let script = r#"
import sys, email, email.policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
for k, v in m.items():
    print("%s: %s" % (k, str(v).replace("\n", " ")))
"#;
    let out = pipe(
        {
            let mut c = Command::new("/usr/bin/python3");
            c.args(["-c", script]);
            c
        },
        entity,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn value<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The fields the sender wrote are the payload's, as Python reads them.
fn assert_protected(payload: &[u8]) {
    let fields = python_fields(payload);
    for (n, v) in FIELDS {
        assert_eq!(value(&fields, n), vec![v], "{n} in {fields:?}");
    }
}

fn head(msg: &[u8]) -> String {
    let s = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    s[..s.find("\n\n").unwrap_or(s.len())]
        .replace("\n ", " ")
        .replace("\n\t", " ")
}

#[test]
fn a_signed_message_carries_its_header_inside_and_every_verifier_accepts_it() {
    let d = tempdir();
    let cfg = config(d.path(), "");
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "bob@example.org"],
        &message(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("action=signed") && r.stderr.contains("hp=clear"),
        "{}",
        r.stderr
    );
    // Outside: nothing hidden.
    let outer = head(&r.stdout);
    assert!(
        outer.contains("Subject: Quarterly figures") && outer.contains("Keywords: finance"),
        "{outer}"
    );
    let (content, sig) = split_clear_signed(&r.stdout);
    let payload_head = head(&content);
    assert!(
        payload_head.contains("hp=\"clear\"") && payload_head.contains("protected-headers=\"v1\""),
        "{payload_head}"
    );
    assert!(
        !payload_head.contains("HP-Outer"),
        "signed only: {payload_head}"
    );
    assert_protected(&content);
    openssl_verify(&r.stdout).expect("openssl");
    Gpgsm::new().verify_detached(&sig, &content).expect("gpgsm");
    Nss::with_keys(&[])
        .verify(&sig, Some(&content))
        .expect("NSS");

    // Read back inbound: pass, the headers agree.
    let r = test_mode(
        &cfg,
        &["--inbound", "--rcpt", "carol@example.com"],
        &r.stdout,
    );
    assert!(
        r.stderr.contains("smime=pass signer=alice@example.com"),
        "{}",
        r.stderr
    );
    let h = head(&r.stdout);
    assert!(h.contains("smime=pass") && !h.contains("differ"), "{h}");
}

#[test]
fn an_encrypted_message_hides_its_subject_and_reads_back_restored() {
    let d = tempdir();
    let cfg = config(d.path(), "");
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &message(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("action=signed+encrypted") && r.stderr.contains("hp=cipher"),
        "{}",
        r.stderr
    );
    let outer = head(&r.stdout);
    assert!(outer.contains("Subject: [...]"), "{outer}");
    assert!(
        !outer.contains("Keywords") && !outer.contains("Quarterly"),
        "{outer}"
    );
    assert!(
        outer.contains("To: Carol <carol@example.com>")
            && outer.contains("Message-ID: <hp-test-1@example.com>")
    );

    // Decrypted by openssl, gpgsm and NSS alike; signed inside.
    let signed = openssl_decrypt(&r.stdout, "carol").expect("openssl decrypts");
    let der = pkcs7_mime_der(&r.stdout);
    assert_eq!(
        Gpgsm::with_key("carol")
            .decrypt(&der)
            .expect("gpgsm decrypts")
            .replace_crlf(),
        signed.replace_crlf()
    );
    assert_eq!(
        Nss::with_keys(&["carol"])
            .decrypt(&der)
            .expect("NSS decrypts")
            .replace_crlf(),
        signed.replace_crlf()
    );
    let content = openssl_verify(&signed).expect("inner signature");
    let (payload, _) = split_clear_signed(&signed);
    assert_eq!(payload.replace_crlf(), content.replace_crlf());
    let ph = head(&payload);
    assert!(
        ph.contains("hp=\"cipher\"") && ph.contains("hp-legacy-display=\"1\""),
        "{ph}"
    );
    // HP-Outer records what was left outside, and only that.
    assert!(
        ph.contains("HP-Outer: Subject: [...]")
            && ph.contains("HP-Outer: To: Carol <carol@example.com>"),
        "{ph}"
    );
    assert!(!ph.contains("HP-Outer: Keywords"), "{ph}");
    assert_protected(&payload);
    // The Legacy Display Element: what Thunderbird and Outlook show.
    let text = String::from_utf8_lossy(&payload).replace("\r\n", "\n");
    let body = &text[text.find("\n\n").unwrap() + 2..];
    assert!(
        body.starts_with("Subject: Quarterly figures\n\nThe numbers are good."),
        "{body}"
    );

    // Our own inbound, holding carol's key: pass, Subject and Keywords back.
    let r = test_mode(
        &cfg,
        &["--inbound", "--rcpt", "carol@example.com"],
        &r.stdout,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("smime=pass signer=alice@example.com"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("restored protected Subject, Keywords"),
        "{}",
        r.stderr
    );
    let h = head(&r.stdout);
    assert!(
        h.contains("Subject: Quarterly figures") && h.contains("Keywords: finance, secret"),
        "{h}"
    );
    assert!(!h.contains("[...]") && !h.contains("differ"), "{h}");
}

#[test]
fn a_long_subject_in_another_script_survives_the_round_trip() {
    let d = tempdir();
    let cfg = config(d.path(), "");
    let subject =
        "Quartalszahlen f\u{fc}r das dritte Quartal \u{2013} vertraulich, bitte nicht weiterleiten";
    let msg = String::from_utf8(message())
        .unwrap()
        .replace("Subject: Quarterly figures", &format!("Subject: {subject}"));
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        msg.as_bytes(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The legacy display is UTF-8 now, the text part relabelled to match.
    let signed = openssl_decrypt(&r.stdout, "carol").unwrap();
    let (payload, _) = split_clear_signed(&signed);
    assert!(
        head(&payload).contains("charset=\"utf-8\"; hp-legacy-display=\"1\""),
        "{}",
        head(&payload)
    );
    let fields = python_fields(&payload);
    assert_eq!(value(&fields, "Subject"), vec![subject]);
    // Read back: the Subject restored as encoded words, one safe field.
    let back = test_mode(
        &cfg,
        &["--inbound", "--rcpt", "carol@example.com"],
        &r.stdout,
    );
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert!(
        back.stderr.contains("smime=pass") && back.stderr.contains("restored protected Subject"),
        "{}",
        back.stderr
    );
    let fields = python_fields(&back.stdout);
    assert_eq!(value(&fields, "Subject"), vec![subject]);
}

#[test]
fn a_message_its_sender_signed_is_encrypted_without_hiding_anything() {
    let d = tempdir();
    let cfg = config(d.path(), "");
    // Signed by alice's client; the gateway only encrypts it.
    let mut msg = format!("Date: {}\r\nFrom: alice@example.com\r\nTo: carol@example.com\r\nSubject: Signed at the desk\r\n", now()).into_bytes();
    let signed = openssl_sign(
        "alice",
        "sha256",
        b"Content-Type: text/plain\r\n\r\nHi Carol.\r\n",
    );
    msg.extend_from_slice(
        String::from_utf8_lossy(&signed)
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .as_bytes(),
    );
    let r = test_mode(&cfg, &["--outbound", "--rcpt", "carol@example.com"], &msg);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("action=encrypted") && !r.stderr.contains("hp="),
        "{}",
        r.stderr
    );
    assert!(
        head(&r.stdout).contains("Subject: Signed at the desk"),
        "{}",
        head(&r.stdout)
    );
    let inner = openssl_decrypt(&r.stdout, "carol").unwrap();
    openssl_verify(&inner).expect("the sender's signature holds");
}

#[test]
fn encrypted_only_and_other_policies() {
    let d = tempdir();
    // Not signed: the payload is the entity itself.
    let cfg = config(d.path(), "[signing]\nenabled = false\n[header_protection]\npolicy = \"hcp_minimal\"\nlegacy_display = false\n");
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &message(),
    );
    assert!(
        r.stderr.contains("action=encrypted") && r.stderr.contains("hp=cipher"),
        "{}",
        r.stderr
    );
    let outer = head(&r.stdout);
    assert!(
        outer.contains("Subject: [...]") && outer.contains("Keywords: finance"),
        "minimal keeps Keywords: {outer}"
    );
    let payload = openssl_decrypt(&r.stdout, "carol").unwrap();
    let ph = head(&payload);
    assert!(
        ph.contains("hp=\"cipher\"") && ph.contains("HP-Outer: Keywords: finance, secret"),
        "{ph}"
    );
    assert!(!ph.contains("hp-legacy-display"), "{ph}");
    assert_protected(&payload);
    // No confidentiality: the Subject stays; off: no header section at all.
    let cfg = config(
        d.path(),
        "[header_protection]\npolicy = \"hcp_no_confidentiality\"\n",
    );
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &message(),
    );
    assert!(head(&r.stdout).contains("Subject: Quarterly figures"));
    let cfg = config(d.path(), "[header_protection]\nenabled = false\n");
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &message(),
    );
    assert!(head(&r.stdout).contains("Subject: Quarterly figures"));
    let signed = openssl_decrypt(&r.stdout, "carol").unwrap();
    let (payload, _) = split_clear_signed(&signed);
    assert!(!head(&payload).contains("hp=") && !head(&payload).contains("From:"));
}

/// RFC 9788 Appendix C.3.1.2: the payload of `smime-signed-enc-hp-baseline`
/// as the RFC prints it with both layers off. Encrypted here to carol, as
/// the sender's client would have (AES-256-GCM), without its signature.
const RFC_PAYLOAD: &str = include_str!("data/rfc9788-c3.1.2-payload.eml");

fn rfc_message(subject: &str) -> Vec<u8> {
    let der = openssl_encrypt("carol", RFC_PAYLOAD.as_bytes(), "-aes-256-gcm");
    let mut m = format!(
        "Message-ID: <smime-signed-enc-hp-baseline@example>\r\nSubject: {subject}\r\nFrom: Alice <alice@smime.example>\r\nTo: Bob <bob@smime.example>\r\nDate: Sat, 20 Feb 2021 10:09:02 -0500\r\nUser-Agent: Sample MUA Version 1.0\r\nMIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    for line in openssl::base64::encode_block(&der).as_bytes().chunks(76) {
        m.extend_from_slice(line);
        m.extend_from_slice(b"\r\n");
    }
    m
}

#[test]
fn the_rfc_payload_reads_back_as_the_rfc_says() {
    let d = tempdir();
    let cfg = config(d.path(), "");
    let r = test_mode(
        &cfg,
        &["--inbound", "--rcpt", "carol@example.com"],
        &rfc_message("[...]"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let h = head(&r.stdout);
    assert!(
        h.contains("Subject: smime-signed-enc-hp-baseline"),
        "{h}\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("restored protected Subject") && !r.stderr.contains("differ"),
        "{}",
        r.stderr
    );
    // An outer Subject changed on the way is not what the sender left out.
    let r = test_mode(
        &cfg,
        &["--inbound", "--rcpt", "carol@example.com"],
        &rfc_message("Invoice overdue"),
    );
    assert!(
        r.stderr.contains("protected Subject differs"),
        "{}",
        r.stderr
    );
    assert!(head(&r.stdout).contains("Subject: smime-signed-enc-hp-baseline"));
}

/// A message signed by openssl whose payload protects `protected` fields,
/// sent with `outer` fields.
fn signed_with_protected(outer: &str, protected: &str) -> Vec<u8> {
    let entity = format!(
        "{protected}Content-Type: text/plain; charset=us-ascii; hp=\"clear\"\r\n\r\nHello.\r\n"
    );
    let mut m = outer.replace('\n', "\r\n").into_bytes();
    let signed = openssl_sign("alice", "sha256", entity.as_bytes());
    let signed = String::from_utf8_lossy(&signed)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    m.extend_from_slice(signed.as_bytes());
    m
}

#[test]
fn protected_headers_that_differ_are_reported() {
    let d = tempdir();
    let cfg = config(d.path(), "");
    let inbound = |m: &[u8]| test_mode(&cfg, &["--inbound", "--rcpt", "carol@example.com"], m);
    let outer = "From: alice@example.com\nTo: carol@example.com\nSubject: Lunch?\n";
    // The same: pass, nothing said.
    let r = inbound(&signed_with_protected(
        outer,
        "From: alice@example.com\r\nTo: carol@example.com\r\nSubject: Lunch?\r\n",
    ));
    let h = head(&r.stdout);
    assert!(h.contains("smime=pass") && !h.contains("differ"), "{h}");
    // Subject and To changed on the way: still the signer's, named.
    let r = inbound(&signed_with_protected(
        outer,
        "From: alice@example.com\r\nTo: bob@example.com\r\nSubject: Wire the money\r\n",
    ));
    let h = head(&r.stdout);
    assert!(
        h.contains("smime=pass (protected Subject, To differ)"),
        "{h}"
    );
    // The protected From is someone else: not the signer's word.
    let r = inbound(&signed_with_protected(
        outer,
        "From: bob@example.com\r\nSubject: Lunch?\r\n",
    ));
    let h = head(&r.stdout);
    assert!(h.contains("smime=policy"), "{h}");
}

fn display_config(dir: &Path) -> std::path::PathBuf {
    config(
        dir,
        "[display]\nsubject_tag_pass = \"[S/MIME signed: %{signer}]\"\nsubject_tag_fail = \"[S/MIME: INVALID signature]\"\nsubject_tag_other = \"[S/MIME: not verified]\"\nsubject_tag_decrypted = \"[decrypted]\"\ninfo_header = \"X-SMIME-Verdict\"\ninfo_value = \"%{result}; signer=%{signer}\"\n",
    )
}

#[test]
fn forged_tags_and_info_headers_are_removed_from_every_message() {
    let d = tempdir();
    let cfg = display_config(d.path());
    let inbound = |m: &str| {
        let r = test_mode(
            &cfg,
            &["--inbound", "--rcpt", "carol@example.com"],
            m.as_bytes(),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        (head(&r.stdout), r.stderr)
    };
    // Unsigned, a tag and the info header written by the sender.
    let (h, log) = inbound("From: ceo@example.com\nSubject: [S/MIME signed: ceo@example.com] Pay this today\nX-SMIME-Verdict: pass; signer=ceo@example.com\n\nPay.\n");
    assert!(
        h.contains("Subject: Pay this today") && !h.contains("X-SMIME-Verdict"),
        "{h}"
    );
    assert!(
        log.contains("removed a forged subject tag")
            && log.contains("removed 1 forged X-SMIME-Verdict"),
        "{log}"
    );
    // Encoded, in another case and spacing, in a second Subject field.
    let (h, _) = inbound("From: ceo@example.com\nSubject: Hello\nSubject: =?utf-8?q?=5Bs/mime__SIGNED:ceo@example.com=5D?= Pay\n\nPay.\n");
    assert!(
        h.contains("Subject: Hello")
            && h.contains("Subject: Pay")
            && !h.contains("ceo@example.com]"),
        "{h}"
    );
    // Behind a bare CR, where readers that split there would see them.
    let (h, log) = inbound("From: ceo@example.com\nSubject: Hi\rX-SMIME-Verdict: pass; signer=ceo@example.com\nX-Note: a\rSubject: [S/MIME signed: ceo@example.com] Pay\n\nPay.\n");
    assert!(!h.contains("\r"), "flattened: {h:?}");
    assert!(log.contains("removed 1 forged X-SMIME-Verdict"), "{log}");
    // A tagged Subject that also hides the info header: flattened, and
    // still without the tag.
    let (h, _) = inbound("From: ceo@example.com\nSubject: [S/MIME signed: ceo@example.com] Pay\rX-SMIME-Verdict: pass\n\nPay.\n");
    assert!(
        h.contains("Subject: Pay") && !h.contains("signed: ceo"),
        "{h:?}"
    );
    // A Subject that only looks close stays as it is.
    let (h, _) = inbound("From: a@example.com\nSubject: [S/MIME] question\n\nQ\n");
    assert!(h.contains("Subject: [S/MIME] question"), "{h}");
}

#[test]
fn each_result_gets_its_tag_and_the_info_header() {
    let (d, d2) = (tempdir(), tempdir());
    let cfg = display_config(d.path());
    let sender = config(d2.path(), "");
    let plain = test_mode(
        &sender,
        &["--outbound", "--rcpt", "bob@example.org"],
        &message(),
    );
    let inbound = |m: &[u8]| {
        let r = test_mode(&cfg, &["--inbound", "--rcpt", "carol@example.com"], m);
        assert_eq!(r.code, 0, "{}", r.stderr);
        head(&r.stdout)
    };
    // pass, with a forged tag of the sender's in the Subject.
    let forged = String::from_utf8_lossy(&plain.stdout).replacen(
        "Subject: Quarterly figures",
        "Subject: [S/MIME: INVALID signature] Quarterly figures",
        1,
    );
    let h = inbound(forged.as_bytes());
    assert!(
        h.contains("Subject: [S/MIME signed: alice@example.com] Quarterly figures"),
        "{h}"
    );
    assert!(
        h.contains("X-SMIME-Verdict: pass; signer=alice@example.com"),
        "{h}"
    );
    // fail: the body changed.
    let tampered =
        String::from_utf8_lossy(&plain.stdout).replacen("Second line.", "Second lime.", 1);
    let h = inbound(tampered.as_bytes());
    assert!(
        h.contains("Subject: [S/MIME: INVALID signature] Quarterly figures"),
        "{h}"
    );
    assert!(h.contains("X-SMIME-Verdict: fail; signer=unknown"), "{h}");
    // policy (other): the From is not the signer's.
    let other = String::from_utf8_lossy(&plain.stdout).replacen(
        "From: Alice <alice@example.com>",
        "From: Bob <bob@example.com>",
        1,
    );
    let h = inbound(other.as_bytes());
    assert!(
        h.contains("Subject: [S/MIME: not verified] Quarterly figures"),
        "{h}"
    );
    // decrypted and signed: both tags, the restored Subject.
    let enc = test_mode(
        &sender,
        &["--outbound", "--rcpt", "carol@example.com"],
        &message(),
    );
    let h = inbound(&enc.stdout);
    assert!(
        h.contains("Subject: [decrypted] [S/MIME signed: alice@example.com] Quarterly figures"),
        "{h}"
    );
}

trait Crlf {
    fn replace_crlf(&self) -> Vec<u8>;
}

impl Crlf for Vec<u8> {
    fn replace_crlf(&self) -> Vec<u8> {
        String::from_utf8_lossy(self)
            .replace("\r\n", "\n")
            .into_bytes()
    }
}
