//! Outbound encryption with certificates from the local store, through the
//! test mode (the milter's code path); results are decrypted by openssl and
//! gpgsm.

mod common;
use common::*;
use std::path::PathBuf;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(project_dir().join("tests/data").join(name)).unwrap()
}

fn config(dir: &std::path::Path, certs: &std::path::Path, encrypt: &str) -> PathBuf {
    write_config(
        dir,
        "",
        &format!(
            "[encrypt]\ncerts_dir = \"{}\"\n{encrypt}\n{}",
            certs.display(),
            pki().key_table()
        ),
    )
}

fn head(msg: &[u8]) -> String {
    let s = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    s[..s.find("\n\n").unwrap_or(s.len())].to_string()
}

fn rcpt_args<'a>(rcpts: &[&'a str]) -> Vec<&'a str> {
    rcpts.iter().flat_map(|r| ["--rcpt", r]).collect()
}

#[test]
fn required_encryption_decrypts_for_every_recipient_with_openssl_and_gpgsm() {
    let certs = cert_dir(&["alice", "carol", "bob"]);
    let d = tempdir();
    let cfg = config(
        d.path(),
        certs.path(),
        "default_policy = \"required\"\n[signing]\nenabled = false",
    );
    // One GnuPG home per recipient, so that each decrypts with its own key.
    let homes: Vec<(&str, Gpgsm)> = ["carol", "alice"]
        .into_iter()
        .map(|who| (who, Gpgsm::with_key(who)))
        .collect();
    for name in ["plain.eml", "utf8-8bit.eml", "multipart-binary.eml"] {
        let original = data(name);
        let mut args = vec!["--outbound"];
        args.extend(rcpt_args(&[
            "carol@example.com",
            "alice@example.com",
            "bob@example.com",
        ]));
        let r = test_mode(&cfg, &args, &original);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(
            r.stderr.contains("action=encrypted") && r.stderr.contains("recipients=3"),
            "{}",
            r.stderr
        );
        let h = head(&r.stdout);
        assert!(h.contains("Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=\"smime.p7m\""), "{h}");
        assert!(h.contains("Subject: "), "other headers stay");
        assert!(
            !String::from_utf8_lossy(&r.stdout).contains("Hello Bob"),
            "no plaintext"
        );
        // Every recipient, RSA (carol, alice) and EC (bob), with openssl;
        // the RSA ones with gpgsm too.
        for who in ["carol", "alice", "bob"] {
            let plain =
                openssl_decrypt(&r.stdout, who).unwrap_or_else(|e| panic!("{name} {who}: {e}"));
            assert_eq!(mime_leaves(&plain), mime_leaves(&original), "{name} {who}");
        }
        let der = pkcs7_mime_der(&r.stdout);
        for (who, gpgsm) in &homes {
            let plain = gpgsm
                .decrypt(&der)
                .unwrap_or_else(|e| panic!("{name} {who}: gpgsm: {e}"));
            assert_eq!(
                mime_leaves(&plain),
                mime_leaves(&original),
                "{name} {who} (gpgsm)"
            );
        }
    }
}

#[test]
fn sign_then_encrypt_decrypts_and_verifies() {
    let certs = cert_dir(&["carol", "bob"]);
    let d = tempdir();
    let cfg = config(d.path(), certs.path(), "default_policy = \"required\"");
    let original = data("utf8-8bit.eml"); // From: alice, who has a key
    let mut args = vec!["--outbound"];
    args.extend(rcpt_args(&["carol@example.com", "bob@example.com"]));
    let r = test_mode(&cfg, &args, &original);
    assert!(
        r.stderr.contains("action=signed+encrypted") && r.stderr.contains("key=alice@example.com"),
        "{}",
        r.stderr
    );
    for who in ["carol", "bob"] {
        let inner = openssl_decrypt(&r.stdout, who).unwrap();
        assert!(
            head(&inner).contains("multipart/signed"),
            "signed inside: {}",
            head(&inner)
        );
        let content = openssl_verify(&inner).unwrap();
        assert_eq!(mime_leaves(&content), mime_leaves(&original));
    }
}

#[test]
fn gcm_gives_auth_enveloped_data() {
    let certs = cert_dir(&["carol"]);
    let d = tempdir();
    let cfg = config(
        d.path(),
        certs.path(),
        "default_policy = \"required\"\ncipher = \"aes-256-gcm\"\n[signing]\nenabled = false",
    );
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &data("plain.eml"),
    );
    assert!(
        head(&r.stdout).contains("smime-type=authEnveloped-data"),
        "{}",
        head(&r.stdout)
    );
    let plain = openssl_decrypt(&r.stdout, "carol").unwrap();
    assert_eq!(mime_leaves(&plain), mime_leaves(&data("plain.eml")));
    let d2 = tempdir();
    std::fs::write(d2.path().join("m.der"), pkcs7_mime_der(&r.stdout)).unwrap();
    let out = run(std::process::Command::new("openssl")
        .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
        .arg(d2.path().join("m.der")));
    assert!(String::from_utf8_lossy(&out.stdout).contains("id-smime-ct-authEnvelopedData"));
}

#[test]
fn required_recipient_without_certificate_is_never_sent_in_plaintext() {
    let certs = cert_dir(&["carol"]);
    let d = tempdir();
    for (action, code) in [("tempfail", 75), ("reject", 69)] {
        let cfg = config(
            d.path(),
            certs.path(),
            &format!("default_policy = \"required\"\nmissing_cert = \"{action}\""),
        );
        let mut args = vec!["--outbound"];
        args.extend(rcpt_args(&["carol@example.com", "nocert@example.net"]));
        let r = test_mode(&cfg, &args, &data("plain.eml"));
        assert_eq!(r.code, code, "{action}: {}", r.stderr);
        assert!(r.stdout.is_empty());
        assert!(
            r.stderr
                .contains("no usable certificate for <nocert@example.net> (encryption required)"),
            "{}",
            r.stderr
        );
    }
    // accept is not a valid choice here.
    let cfg = config(
        d.path(),
        certs.path(),
        "default_policy = \"required\"\nmissing_cert = \"accept\"",
    );
    let out = run(std::process::Command::new(bin())
        .arg("--check-config")
        .arg("-c")
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("would send mail in plaintext"));
}

#[test]
fn opportunistic_encrypts_only_when_every_recipient_has_a_certificate() {
    let certs = cert_dir(&["carol", "bob"]);
    let d = tempdir();
    let cfg = config(d.path(), certs.path(), "default_policy = \"opportunistic\"");
    let both = test_mode(
        &cfg,
        &[
            "--outbound",
            "--rcpt",
            "carol@example.com",
            "--rcpt",
            "bob@example.com",
        ],
        &data("plain.eml"),
    );
    assert!(
        both.stderr.contains("action=signed+encrypted"),
        "{}",
        both.stderr
    );
    let one_missing = test_mode(
        &cfg,
        &[
            "--outbound",
            "--rcpt",
            "carol@example.com",
            "--rcpt",
            "x@example.net",
        ],
        &data("plain.eml"),
    );
    assert!(
        one_missing.stderr.contains("action=signed ")
            && one_missing
                .stderr
                .contains("not encrypted: no usable certificate for <x@example.net>"),
        "{}",
        one_missing.stderr
    );
    openssl_verify(&one_missing.stdout).unwrap();
}

#[test]
fn policy_rules_pick_recipients_and_senders() {
    let certs = cert_dir(&["carol", "bob"]);
    let d = tempdir();
    let rules = "default_policy = \"never\"\n[[encrypt.policy]]\nrecipient = \"@example.com\"\nmode = \"required\"\n";
    let cfg = config(d.path(), certs.path(), rules);
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &data("plain.eml"),
    );
    assert!(r.stderr.contains("encrypted"), "{}", r.stderr);
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "someone@example.net"],
        &data("plain.eml"),
    );
    assert!(
        r.stderr.contains("action=signed ") && !r.stderr.contains("encrypted"),
        "{}",
        r.stderr
    );
    // Inbound mail is never encrypted.
    let r = test_mode(
        &cfg,
        &["--inbound", "--rcpt", "carol@example.com"],
        &data("plain.eml"),
    );
    assert_eq!(r.stdout, data("plain.eml"));
}

#[test]
fn unusable_certificates_are_not_chosen() {
    // web: no emailProtection; expired: expired; nosig has keyEncipherment only
    // and is usable for encryption.
    let certs = cert_dir(&["web", "expired", "nosig"]);
    let d = tempdir();
    let cfg = config(
        d.path(),
        certs.path(),
        "default_policy = \"required\"\n[signing]\nenabled = false",
    );
    for (rcpt, usable) in [
        ("web@example.com", false),
        ("expired@example.com", false),
        ("nosig@example.com", true),
    ] {
        let r = test_mode(&cfg, &["--outbound", "--rcpt", rcpt], &data("plain.eml"));
        assert_eq!(r.code == 0, usable, "{rcpt}: {}", r.stderr);
    }
}

#[test]
fn refuse_at_rcpt_rejects_only_that_recipient() {
    let certs = cert_dir(&["carol"]);
    let d = tempdir();
    let cfg = config(
        d.path(),
        certs.path(),
        "default_policy = \"required\"\nrefuse_at_rcpt = true",
    );
    let mut args = vec!["--outbound"];
    args.extend(rcpt_args(&["nocert@example.net", "carol@example.com"]));
    let r = test_mode(&cfg, &args, &data("plain.eml"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("recipient refused: <nocert@example.net> has no S/MIME certificate"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("recipients=1"), "{}", r.stderr);
    openssl_decrypt(&r.stdout, "carol").unwrap();
}

#[test]
fn required_encryption_overrides_accepting_failure_actions() {
    let certs = cert_dir(&["carol"]);
    let d = tempdir();
    let cfg = write_config(
        d.path(),
        "max_message_size = \"2K\"\n[actions]\noversized = \"accept\"\nmalformed = \"accept\"\n",
        &format!(
            "[encrypt]\ncerts_dir = \"{}\"\ndefault_policy = \"required\"\n{}",
            certs.path().display(),
            pki().key_table()
        ),
    );
    let mut big = data("plain.eml");
    big.extend(std::iter::repeat_n(b'a', 5000));
    let args = ["--outbound", "--rcpt", "carol@example.com"];
    let r = test_mode(&cfg, &args, &big);
    assert_eq!(r.code, 75, "oversized plaintext is held: {}", r.stderr);
    assert!(r.stdout.is_empty());
    // The same message to a recipient without required encryption flows.
    let cfg_opt = write_config(
        d.path(),
        "max_message_size = \"2K\"\n[actions]\noversized = \"accept\"\n",
        &format!(
            "[encrypt]\ncerts_dir = \"{}\"\ndefault_policy = \"opportunistic\"\n{}",
            certs.path().display(),
            pki().key_table()
        ),
    );
    let r = test_mode(&cfg_opt, &args, &big);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
