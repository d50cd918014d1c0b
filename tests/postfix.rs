//! End to end through a real Postfix: SMTP in on 127.0.0.1, smtpd_milters
//! pointing at smime-milter, delivery to smtp-sink; what arrives must verify
//! with openssl and gpgsm and decode to what was sent.

mod common;
use common::slapd;
use common::*;
use slapd::{test_ldif, Slapd};
use std::time::{Duration, Instant};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(project_dir().join("tests/data").join(name)).unwrap()
}

/// The Subject its recipients read (protected, when hidden outside).
fn subject(msg: &[u8]) -> String {
    shown_subject(msg, &["carol", "alice", "dave"])
}

fn queue_id(reply: &str) -> String {
    reply.rsplit(' ').next().unwrap().to_string()
}

fn skip_unless_root() -> bool {
    !can_run_as_root()
}

#[test]
fn outbound_mail_arrives_signed_and_verifies() {
    if skip_unless_root() {
        return;
    }
    let milter = Milter::start("", &pki().key_table());
    let postfix = Postfix::start(&milter.spec());
    let gpgsm = Gpgsm::new();
    let nss = Nss::with_keys(&[]);
    let names = [
        "plain.eml",
        "utf8-8bit.eml",
        "multipart-binary.eml",
        "long-lines.eml",
        "fragile-lines.eml",
        "forwarded-8bit.eml",
    ];
    let mut qids = Vec::new();
    for name in names {
        let reply = postfix.send("alice@example.com", &["bob@example.net"], &data(name));
        assert!(
            reply.starts_with("250"),
            "{name}: {reply}\n{}",
            milter.log()
        );
        qids.push(queue_id(&reply));
    }
    let delivered = postfix.delivered(names.len());
    for name in names {
        let mut original = data(name);
        // SMTP ends every message with a line end.
        if !original.ends_with(b"\n") {
            original.push(b'\n');
        }
        let msg = delivered
            .iter()
            .find(|m| subject(m) == subject(&original))
            .unwrap_or_else(|| panic!("{name} not delivered"));
        let text = String::from_utf8_lossy(msg);
        assert!(text.contains("Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256"), "{name}:\n{text}");
        let content = openssl_verify(msg).unwrap_or_else(|e| panic!("{name}: openssl: {e}"));
        let (signed, sig) = split_clear_signed(msg);
        assert_eq!(signed, content);
        gpgsm
            .verify_detached(&sig, &signed)
            .unwrap_or_else(|e| panic!("{name}: gpgsm: {e}"));
        nss.verify(&sig, Some(&signed))
            .unwrap_or_else(|e| panic!("{name}: NSS: {e}"));
        assert_eq!(
            mime_leaves(&content),
            mime_leaves(&original),
            "{name}: content changed on the way"
        );
    }
    // Trailing blanks and `From ` lines were signed quoted-printable: no
    // relay or mbox writer has anything to change.
    let fragile = delivered
        .iter()
        .find(|m| subject(m) == "fragile lines")
        .unwrap();
    let (signed, _) = split_clear_signed(fragile);
    let signed = String::from_utf8(signed).unwrap();
    assert!(
        signed.contains("Content-Transfer-Encoding: quoted-printable"),
        "{signed}"
    );
    assert!(
        signed
            .split("\r\n")
            .all(|l| !l.ends_with(' ') && !l.ends_with('\t') && !l.starts_with("From ")),
        "{signed}"
    );
    // The attached 8-bit message arrived byte for byte.
    let forwarded = delivered
        .iter()
        .find(|m| subject(m) == "forwarded 8bit message")
        .unwrap();
    let wanted = "8bit\n\n\u{dc}ber den Fluss \nFrom the other side, Gr\u{fc}\u{df}e.\n";
    assert!(
        String::from_utf8_lossy(forwarded)
            .replace("\r\n", "\n")
            .contains(wanted),
        "{}",
        String::from_utf8_lossy(forwarded)
    );
    // One summary line per message, under Postfix's queue id.
    let log = milter.wait_log(qids.last().unwrap());
    for q in &qids {
        assert!(
            log.contains(&format!(
                "{q}: outbound action=signed verdict=accept key=alice@example.com"
            )),
            "{q}:\n{log}"
        );
    }
}

#[test]
fn unsigned_cases_and_a_stopped_milter_lose_no_mail() {
    if skip_unless_root() {
        return;
    }
    let mut milter = Some(Milter::start("", &pki().key_table()));
    let spec = milter.as_ref().unwrap().spec();
    let postfix = Postfix::start(&spec);

    // A sender without a key: delivered, unchanged.
    let original = data("plain.eml");
    let other = String::from_utf8_lossy(&original).replace(
        "From: Alice <alice@example.com>",
        "From: Zed <zed@unknown.example>",
    );
    let reply = postfix.send(
        "zed@unknown.example",
        &["bob@example.net"],
        other.as_bytes(),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = postfix.delivered(1);
    let text = String::from_utf8_lossy(&delivered[0]).replace("\r\n", "\n");
    assert!(!text.contains("multipart/signed"), "{text}");
    let body_sent = other.split_once("\n\n").unwrap().1;
    // smtp-sink ends its dump with one more newline of its own.
    assert!(
        text.contains(&format!("\n\n{body_sent}")),
        "body unchanged:\n{text:?}"
    );

    // The milter is down: Postfix (milter_default_action = tempfail) refuses
    // with a 4xx, so the client keeps the message.
    drop(milter.take());
    let reply = postfix.send("alice@example.com", &["bob@example.net"], &original);
    assert!(
        reply.starts_with("451") || reply.starts_with("421"),
        "expected a temporary failure, got {reply}"
    );
    assert_eq!(
        postfix.queued(),
        0,
        "nothing was accepted to be delivered unsigned"
    );
}

#[test]
fn inbound_signed_mail_arrives_with_our_verdict_and_without_the_forged_one() {
    if skip_unless_root() {
        return;
    }
    // 127.0.0.1 is not internal here, so Postfix's client is inbound.
    let top = "internal_hosts = [\"192.0.2.0/24\"]\nauthserv_id = \"mx.example.com\"\n";
    let tables = format!(
        "[verify]\ntrust_anchors = \"{}\"\n",
        pki().path("root.crt").display()
    );
    let milter = Milter::start(top, &tables);
    let postfix = Postfix::start(&milter.spec());

    // Signed by openssl, not by us.
    let signed = openssl_sign(
        "bob",
        "sha256",
        b"Content-Type: text/plain; charset=us-ascii\n\nSigned elsewhere.\n",
    );
    let mut msg = b"Authentication-Results: mx.example.com; smime=pass body.smime-identifier=ceo@example.com\n\
From: Bob <bob@example.com>\nTo: alice@example.com\nSubject: inbound signed\n"
        .to_vec();
    msg.extend_from_slice(&signed);
    let unsigned = b"Authentication-Results: MX.EXAMPLE.COM; smime=pass\nFrom: x@example.net\nSubject: inbound plain\n\nhello\n".to_vec();

    for m in [&msg, &unsigned] {
        let reply = postfix.send("bob@example.com", &["alice@example.com"], m);
        assert!(reply.starts_with("250"), "{reply}");
    }
    let delivered = postfix.delivered(2);
    let find = |s: &str| {
        delivered
            .iter()
            .find(|m| subject(m) == s)
            .unwrap_or_else(|| panic!("{s} not delivered"))
    };
    // Unfolded, as a reader sees the fields.
    let text = String::from_utf8_lossy(find("inbound signed"))
        .replace("\r\n", "\n")
        .replace("\n ", " ");
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("authentication-results: mx.example.com")
        })
        .collect();
    assert_eq!(ours.len(), 1, "{text}");
    assert!(ours[0].starts_with("Authentication-Results: mx.example.com; smime=pass body.smime-identifier=bob@example.com body.smime-part=1"), "{}", ours[0]);
    assert!(
        !text.contains("ceo@example.com"),
        "forged header removed:\n{text}"
    );
    assert!(text.contains("\nSigned elsewhere.\n"), "body kept");
    // Still verifies after delivery: the body was not touched.
    openssl_verify(find("inbound signed")).unwrap();

    let text = String::from_utf8_lossy(find("inbound plain")).to_ascii_lowercase();
    assert!(
        !text.contains("authentication-results: mx.example.com"),
        "forged header removed, none added:\n{text}"
    );
}

#[test]
fn outbound_mail_to_two_recipients_arrives_encrypted_for_each() {
    if skip_unless_root() {
        return;
    }
    let ldap = Slapd::start(&test_ldif());
    let tables = format!(
        "[encrypt]\ndefault_policy = \"required\"\n[ldap]\nuris = [\"{}\"]\nbase_dn = \"{}\"\n{}",
        ldap.uri(),
        slapd::BASE_DN,
        pki().key_table()
    );
    let milter = Milter::start("", &tables);
    let postfix = Postfix::start(&milter.spec());
    let rcpts = ["carol@example.com", "alice@example.com"];

    // From someone without a signing key (key_not_found = accept): encrypted only.
    let plain = String::from_utf8_lossy(&data("multipart-binary.eml")).replace(
        "From: Alice <alice@example.com>",
        "From: Zed <zed@unsigned.example>",
    );
    let plain = plain.replace(
        "Subject: multipart with attachments",
        "Subject: encrypted only",
    );
    let reply = postfix.send("zed@unsigned.example", &rcpts, plain.as_bytes());
    assert!(reply.starts_with("250"), "{reply}\n{}", milter.log());
    // From alice: signed, then encrypted.
    let signed = String::from_utf8_lossy(&data("utf8-8bit.eml")).replace(
        "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=",
        "Subject: signed and encrypted",
    );
    let reply = postfix.send("alice@example.com", &rcpts, signed.as_bytes());
    assert!(reply.starts_with("250"), "{reply}\n{}", milter.log());

    let delivered = postfix.delivered(2);
    let homes: Vec<(&str, Gpgsm)> = ["carol", "alice"]
        .into_iter()
        .map(|who| (who, Gpgsm::with_key(who)))
        .collect();
    let enc_only = delivered
        .iter()
        .find(|m| subject(m) == "encrypted only")
        .expect("delivered");
    let both = delivered
        .iter()
        .find(|m| subject(m) == "signed and encrypted")
        .expect("delivered");
    for m in [enc_only, both] {
        let text = String::from_utf8_lossy(m);
        assert!(
            text.contains("Content-Type: application/pkcs7-mime; smime-type=enveloped-data"),
            "{text}"
        );
        assert!(
            !text.contains("See the attached files") && !text.contains("Grüße"),
            "no plaintext on the wire"
        );
    }
    for (who, gpgsm) in &homes {
        let a = openssl_decrypt(enc_only, who).unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(
            mime_leaves(&a),
            mime_leaves(plain.as_bytes()),
            "{who}: encrypted only"
        );
        let b = gpgsm
            .decrypt(&pkcs7_mime_der(enc_only))
            .unwrap_or_else(|e| panic!("{who}: gpgsm: {e}"));
        assert_eq!(a, b, "{who}: openssl and gpgsm agree");

        let inner = openssl_decrypt(both, who).unwrap();
        let content =
            openssl_verify(&inner).unwrap_or_else(|e| panic!("{who}: inner signature: {e}"));
        assert_eq!(
            mime_leaves(&content),
            mime_leaves(signed.as_bytes()),
            "{who}: signed and encrypted"
        );
        let inner_gpgsm = gpgsm.decrypt(&pkcs7_mime_der(both)).unwrap();
        assert_eq!(inner, inner_gpgsm);
    }
    let log = milter.wait_log("action=signed+encrypted");
    assert!(
        log.contains("action=encrypted") && log.contains("recipients=2"),
        "{log}"
    );
}

/// DER EnvelopedData of `data` for a test PKI certificate, by openssl.
fn pkcs7_message(from: &str, subject: &str, der: &[u8], smime_type: &str) -> Vec<u8> {
    let d = tempdir();
    std::fs::write(d.path().join("der"), der).unwrap();
    let b64 = run(std::process::Command::new("base64").arg(d.path().join("der"))).stdout;
    let mut m = format!(
        "From: {from}\nTo: carol@example.com\nSubject: {subject}\nMIME-Version: 1.0\n\
         Content-Type: application/pkcs7-mime; smime-type={smime_type}; name=smime.p7m\nContent-Transfer-Encoding: base64\n\n"
    )
    .into_bytes();
    m.extend_from_slice(&b64);
    m
}

#[test]
fn inbound_encrypted_mail_arrives_decrypted_and_replies_are_encrypted_to_harvested_certificates() {
    if skip_unless_root() {
        return;
    }
    let harvest = tempdir();
    set_mode(harvest.path(), 0o777); // written by the milter's user
    let top = "internal_hosts = [\"127.0.0.2\"]\nauthserv_id = \"mx.example.com\"\n";
    let tables = format!(
        "[decrypt]\nenabled = true\n[harvest]\ndir = \"{}\"\n[encrypt]\ndefault_policy = \"opportunistic\"\n[verify]\ntrust_anchors = \"{}\"\n{}",
        harvest.path().display(),
        pki().path("root.crt").display(),
        pki().key_table()
    );
    let milter = Milter::start(top, &tables);
    let postfix = Postfix::start(&milter.spec());
    let entity = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nFor Carol only.\r\n";

    // From outside (127.0.0.1): encrypted by openssl with three ciphers and by gpgsm.
    let gpgsm = Gpgsm::new();
    let cases = [
        (
            "openssl aes-128-cbc",
            pkcs7_message(
                "x@example.net",
                "openssl aes-128-cbc",
                &openssl_encrypt("carol", entity, "-aes-128-cbc"),
                "enveloped-data",
            ),
        ),
        (
            "openssl aes-256-cbc",
            pkcs7_message(
                "x@example.net",
                "openssl aes-256-cbc",
                &openssl_encrypt("carol", entity, "-aes-256-cbc"),
                "enveloped-data",
            ),
        ),
        (
            "openssl aes-256-gcm",
            pkcs7_message(
                "x@example.net",
                "openssl aes-256-gcm",
                &openssl_encrypt("carol", entity, "-aes-256-gcm"),
                "authEnveloped-data",
            ),
        ),
        (
            "gpgsm",
            pkcs7_message(
                "x@example.net",
                "gpgsm",
                &gpgsm.encrypt_to("carol", entity),
                "enveloped-data",
            ),
        ),
    ];
    for (name, m) in &cases {
        let reply = postfix.send("x@example.net", &["carol@example.com"], m);
        assert!(reply.starts_with("250"), "{name}: {reply}");
    }
    // Dave (a new correspondent) signs, then encrypts to carol.
    let signed = openssl_sign("dave", "sha384", entity);
    let m = pkcs7_message(
        "Dave <dave@example.net>",
        "signed then encrypted",
        &openssl_encrypt("carol", &signed, "-aes-256-cbc"),
        "enveloped-data",
    );
    assert!(postfix
        .send("dave@example.net", &["carol@example.com"], &m)
        .starts_with("250"));

    let delivered = postfix.delivered(cases.len() + 1);
    for (name, _) in &cases {
        let msg = delivered.iter().find(|m| subject(m) == *name).unwrap();
        let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
        if name.ends_with("gcm") {
            // Authenticated encryption: the plaintext is released.
            assert!(
                text.contains("X-SMIME-Decrypted: yes; by=mx.example.com; key=carol@example.com"),
                "{name}:\n{text}"
            );
            assert!(
                text.contains("Content-Type: text/plain; charset=us-ascii\n")
                    && text.contains("\n\nFor Carol only.\n"),
                "{name}:\n{text}"
            );
            assert!(!text.contains("pkcs7-mime"), "{name}");
        } else {
            // CBC that no signature covers stays encrypted (EFAIL).
            assert!(
                text.contains("X-SMIME-Decrypted: no (unauthenticated CBC plaintext withheld, EFAIL); by=mx.example.com"),
                "{name}:\n{text}"
            );
            assert!(
                text.contains("pkcs7-mime") && !text.contains("For Carol only."),
                "{name}"
            );
        }
    }
    let msg = delivered
        .iter()
        .find(|m| subject(m) == "signed then encrypted")
        .unwrap();
    let text = String::from_utf8_lossy(msg)
        .replace("\r\n", "\n")
        .replace("\n ", " ");
    assert!(text.contains("Authentication-Results: mx.example.com; smime=pass (decrypted at gateway) body.smime-identifier=dave@example.net"), "{text}");
    openssl_verify(msg).expect("the delivered signed entity verifies");
    assert!(
        harvest.path().join("dave@example.net.pem").exists(),
        "{}",
        milter.log()
    );

    // From inside (127.0.0.2), to dave: encrypted to the harvested certificate,
    // by the same running milter.
    let reply = postfix.send_from(
        "127.0.0.2".parse().unwrap(),
        "alice@example.com",
        &["dave@example.net"],
        &data("plain.eml"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let delivered = postfix.delivered(cases.len() + 2);
    let reply_msg = delivered
        .iter()
        .find(|m| subject(m) == "plain text")
        .expect("reply delivered");
    let inner =
        openssl_decrypt(reply_msg, "dave").unwrap_or_else(|e| panic!("{e}\n{}", milter.log()));
    let content = openssl_verify(&inner).unwrap();
    assert_eq!(mime_leaves(&content), mime_leaves(&data("plain.eml")));
}

/// SIGTERM stops the milter: messages it cannot finish are deferred by
/// Postfix (milter_default_action = tempfail), the rest were signed.
#[test]
fn sigterm_under_load_loses_no_message() {
    if skip_unless_root() {
        return;
    }
    let milter = Milter::start("", &pki().key_table());
    let postfix = Postfix::start(&milter.spec());
    let port = postfix.smtpd_port;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut replies = Vec::new();
                for i in 0..15 {
                    let msg = format!("From: alice@example.com\nTo: bob@example.net\nSubject: load {t}-{i}\n\nmessage {t}-{i}\n");
                    replies.push((format!("load {t}-{i}"), smtp_send(port, "alice@example.com", &["bob@example.net"], msg.as_bytes())));
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                replies
            })
        })
        .collect();
    while sent.load(std::sync::atomic::Ordering::SeqCst) < 20 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    unsafe { libc::kill(milter.pid() as i32, libc::SIGTERM) };
    let replies: Vec<(String, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let accepted: Vec<&String> = replies
        .iter()
        .filter(|(_, r)| r.starts_with("250"))
        .map(|(s, _)| s)
        .collect();
    let deferred = replies.iter().filter(|(_, r)| r.starts_with('4')).count();
    assert_eq!(
        accepted.len() + deferred,
        60,
        "every message was accepted or deferred: {replies:?}"
    );
    assert!(
        !accepted.is_empty() && deferred > 0,
        "the stop happened mid-load ({} accepted)",
        accepted.len()
    );

    // Everything accepted is delivered, and signed.
    let delivered = postfix.delivered(accepted.len());
    assert_eq!(delivered.len(), accepted.len());
    for m in &delivered {
        assert!(
            String::from_utf8_lossy(m).contains("multipart/signed"),
            "delivered unsigned:\n{}",
            String::from_utf8_lossy(m)
        );
    }
    openssl_verify(&delivered[0]).unwrap();
    assert_eq!(postfix.queued(), 0);
    let log = milter.wait_log("smime-milter stopped");
    assert!(log.contains("smime-milter stopped"), "{log}");
}

/// A directory that accepts connections and never answers (slapd stopped
/// with SIGSTOP) costs one search timeout; progress replies keep Postfix
/// waiting through it. Alone, it defers the message within the budget.
#[test]
fn a_silent_directory_meets_no_postfix_milter_timeout() {
    if skip_unless_root() {
        return;
    }
    let silent = Slapd::start(&test_ldif());
    let ldap = Slapd::start(&test_ldif());
    silent.pause();
    let tables = |servers: &[&Slapd]| {
        slapd::required_encryption_tables(
            servers,
            "search_timeout = \"12s\"\nretry_after = \"60s\"",
        )
    };
    let milter = Milter::start("lookup_budget = \"20s\"\n", &tables(&[&silent, &ldap]));
    // Postfix's end-of-headers timeout shortened below the silent server's
    // 12 s: only progress replies (every 4 s) keep it waiting.
    let postfix = Postfix::start_extra(&milter.spec(), "milter_content_timeout = 10s");
    let plain = String::from_utf8_lossy(&data("plain.eml")).replace(
        "From: Alice <alice@example.com>",
        "From: Zed <zed@unsigned.example>",
    );
    let started = Instant::now();
    let reply = postfix.send(
        "zed@unsigned.example",
        &["carol@example.com", "alice@example.com"],
        plain.as_bytes(),
    );
    let took = started.elapsed();
    assert!(reply.starts_with("250"), "{reply}\n{}", milter.log());
    assert!(
        took >= Duration::from_secs(11),
        "the silent server was waited for: {took:?}"
    );
    let delivered = postfix.delivered(1);
    let text = String::from_utf8_lossy(&delivered[0]);
    assert!(text.contains("smime-type=enveloped-data"), "{text}");
    let maillog = postfix.maillog();
    assert!(!maillog.contains("timeout"), "no milter timeout: {maillog}");
    assert_eq!(milter.log().matches("skipped for 60 s").count(), 1);

    // The silent server alone, default budget (8 s) and Postfix defaults:
    // deferred within the budget, nothing delivered in plaintext.
    let milter = Milter::start("", &tables(&[&silent]));
    let postfix = Postfix::start(&milter.spec());
    let started = Instant::now();
    let reply = postfix.send(
        "zed@unsigned.example",
        &["bob@example.com"],
        plain.as_bytes(),
    );
    let took = started.elapsed();
    assert!(
        reply.starts_with("4"),
        "deferred: {reply}\n{}",
        milter.log()
    );
    assert!(
        took < Duration::from_secs(11),
        "within the budget: {took:?}"
    );
    assert!(
        !postfix.maillog().contains("timeout"),
        "{}",
        postfix.maillog()
    );
    // The summary line is written once the MTA has its answer: waited for.
    let log = milter.wait_log("time budget spent");
    assert!(log.contains("time budget spent"), "{log}");
    silent.unpause();
}

/// A header parameter in raw Latin-1 (not UTF-8) reaches the signed part
/// byte for byte, and the signature verifies over it.
#[test]
fn a_latin1_header_parameter_is_signed_byte_for_byte() {
    if skip_unless_root() {
        return;
    }
    let milter = Milter::start("", &pki().key_table());
    let postfix = Postfix::start(&milter.spec());
    let mut msg = b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n\
        Subject: latin1\r\nMIME-Version: 1.0\r\n\
        Content-Type: application/octet-stream; name=\"\xe4rger.bin\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    msg.extend_from_slice(b"aGVsbG8gd29ybGQ=\r\n");
    let reply = postfix.send("alice@example.com", &["bob@example.net"], &msg);
    assert!(reply.starts_with("250"), "{reply}\n{}", milter.log());
    let delivered = postfix.delivered(1);
    let signed_part = openssl_verify(&delivered[0]).unwrap_or_else(|e| panic!("{e}"));
    let wanted: &[u8] = b"name=\"\xe4rger.bin\"";
    assert!(
        signed_part.windows(wanted.len()).any(|w| w == wanted),
        "{}",
        String::from_utf8_lossy(&signed_part)
    );
    // No replacement character (U+FFFD, UTF-8 EF BF BD) anywhere.
    assert!(!signed_part.windows(3).any(|w| w == [0xef, 0xbf, 0xbd]));
}
