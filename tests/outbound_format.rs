//! What our signatures and ciphertexts say, field by field, and that they
//! age well: the SMIMECapabilities we sign, the KDF of EC key agreement,
//! the signingTime of a message held before it reached us, encodings that
//! survive relays, attached messages kept byte for byte, escrow
//! recipients; read back by openssl, gpgsm, NSS `cmsutil` and our own
//! inbound check. Through the test mode (the milter's code path).

mod common;
use common::*;
use std::path::{Path, PathBuf};

fn signing_config(dir: &Path, signing: &str) -> PathBuf {
    write_config(
        dir,
        "authserv_id = \"mx.test\"",
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n[signing]\n{signing}\n{}",
            pki().path("root.crt").display(),
            pki().key_table()
        ),
    )
}

fn message(from: &str, date: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: someone@example.net\r\nDate: {date}\r\nSubject: test\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}"
    )
    .into_bytes()
}

fn rfc5322_date(secs_ago: i64) -> String {
    let out = run(std::process::Command::new("date")
        .args(["-u", "-R", "-d"])
        .arg(format!("{secs_ago} seconds ago")));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn sign(cfg: &Path, msg: &[u8]) -> Vec<u8> {
    let r = test_mode(cfg, &["--outbound"], msg);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("action=signed"), "{}", r.stderr);
    r.stdout
}

/// The signature of a clear- or opaque-signed message.
fn signature_der(signed: &[u8]) -> Vec<u8> {
    if String::from_utf8_lossy(signed).contains("multipart/signed") {
        split_clear_signed(signed).1
    } else {
        pkcs7_mime_der(signed)
    }
}

/// The capability identifiers in `openssl cms -cmsout -print` output, in
/// order (the ones at depth 2 of the SMIMECapabilities dump).
fn capabilities(print: &str) -> Option<Vec<String>> {
    let start = print.find("S/MIME Capabilities")?;
    let section = &print[start..];
    let end = section[1..]
        .find("object:")
        .or_else(|| section.find("unsignedAttrs"))
        .unwrap_or(section.len());
    Some(
        section[..end]
            .lines()
            .filter(|l| l.contains("d=2") && l.contains("OBJECT"))
            .map(|l| l.rsplit(':').next().unwrap().trim().to_string())
            .collect(),
    )
}

fn inbound_verdict(cfg: &Path, msg: &[u8]) -> String {
    let r = test_mode(cfg, &["--inbound"], msg);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = String::from_utf8_lossy(&r.stdout).replace("\r\n", "\n");
    let ar = text
        .lines()
        .find(|l| l.starts_with("Authentication-Results: mx.test"))
        .unwrap_or_else(|| panic!("no verdict: {text}"));
    ar.to_string()
}

#[test]
fn signatures_announce_exactly_our_capabilities() {
    let d = tempdir();
    let all = [
        "aes-256-gcm",
        "aes-128-gcm",
        "aes-256-cbc",
        "aes-128-cbc",
        "rsaesOaep",
        "rsassaPss",
    ];
    for format in ["clear", "opaque"] {
        for from in ["alice@example.com", "bob@example.com"] {
            let cfg = signing_config(d.path(), &format!("format = \"{format}\""));
            let signed = sign(&cfg, &message(from, &rfc5322_date(0), "hello\r\n"));
            let print = cms_print(&signature_der(&signed));
            assert_eq!(
                capabilities(&print).expect("SMIMECapabilities signed"),
                all,
                "{format} {from}"
            );
            for weak in [":des", ":rc2"] {
                assert!(!print.contains(weak), "{weak} announced: {print}");
            }
            assert!(print.contains("signingTime"), "{print}");
            openssl_verify(&signed).unwrap_or_else(|e| panic!("{format} {from}: {e}"));
        }
    }
    // Configured: exactly that list; empty: no attribute at all.
    let cfg = signing_config(
        d.path(),
        "capabilities = [\"aes-128-cbc\", \"aes-256-gcm\"]",
    );
    let signed = sign(
        &cfg,
        &message("alice@example.com", &rfc5322_date(0), "x\r\n"),
    );
    let print = cms_print(&signature_der(&signed));
    assert_eq!(
        capabilities(&print).unwrap(),
        ["aes-128-cbc", "aes-256-gcm"]
    );
    let cfg = signing_config(d.path(), "capabilities = []");
    let signed = sign(
        &cfg,
        &message("alice@example.com", &rfc5322_date(0), "x\r\n"),
    );
    let print = cms_print(&signature_der(&signed));
    assert!(capabilities(&print).is_none(), "{print}");
    openssl_verify(&signed).unwrap();
}

#[test]
fn a_message_held_before_us_keeps_its_date_as_signing_time() {
    // held@example.com's chain began three days ago; its root is trusted.
    let d = tempdir();
    let anchors = d.path().join("anchors.pem");
    let mut roots = std::fs::read(pki().path("root.crt")).unwrap();
    roots.extend(std::fs::read(pki().path("held-root.crt")).unwrap());
    std::fs::write(&anchors, roots).unwrap();
    let cfg_with = |signing: &str| {
        write_config(
            d.path(),
            "authserv_id = \"mx.test\"",
            &format!(
                "[verify]\ntrust_anchors = \"{}\"\n[signing]\n{signing}\n[[signing.key]]\nsender = \"held@example.com\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                anchors.display(),
                pki().path("held.chain.pem").display(),
                pki().path("held.key").display()
            ),
        )
    };
    let ten_hours = message("held@example.com", &rfc5322_date(36_000), "held\r\n");
    let two_days = message("held@example.com", &rfc5322_date(172_800), "held\r\n");

    // Default (signing_time = "date", window 1 day): held ten hours,
    // signed as of its Date; our own verifier (max_date_skew 1 h) says
    // pass, and the log line says the Date was used.
    let cfg = cfg_with("");
    let r = test_mode(&cfg, &["--outbound"], &ten_hours);
    // The Date was made a moment before the milter read it: a second
    // boundary may lie between.
    let age: Option<u64> = r
        .stderr
        .split("signing_time=Date-")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|n| n.parse().ok());
    assert!(
        age.is_some_and(|a| (36_000..=36_002).contains(&a)),
        "{}",
        r.stderr
    );
    let ar = inbound_verdict(&cfg, &r.stdout);
    assert!(ar.contains("smime=pass"), "{ar}");
    // Beyond the window, the gateway's clock: policy, as before.
    let ar = inbound_verdict(&cfg, &sign(&cfg, &two_days));
    assert!(
        ar.contains("smime=policy") && ar.contains("signing time far from Date"),
        "{ar}"
    );
    // A wider window takes it.
    let cfg = cfg_with("signing_time_window = \"3d\"");
    let ar = inbound_verdict(&cfg, &sign(&cfg, &two_days));
    assert!(ar.contains("smime=pass"), "{ar}");
    // signing_time = "now" never takes the Date.
    let cfg = cfg_with("signing_time = \"now\"");
    let ar = inbound_verdict(&cfg, &sign(&cfg, &ten_hours));
    assert!(ar.contains("smime=policy"), "{ar}");
    // The test PKI's own certificates began today: a Date before them
    // cannot be the signing time (the chain was not valid then), so now.
    let cfg = signing_config(d.path(), "");
    let before_cert = message("alice@example.com", &rfc5322_date(36_000), "x\r\n");
    let signed = sign(&cfg, &before_cert);
    let ar = inbound_verdict(&cfg, &signed);
    assert!(ar.contains("smime=policy"), "{ar}");
    openssl_verify(&signed).unwrap();
}

#[test]
fn trailing_blanks_and_from_lines_are_quoted_printable_and_verify_everywhere() {
    let d = tempdir();
    let body = "Dear Bob, \r\nFrom now on we meet on Fridays.\t\r\n>From quoted\r\nFrom\r\nbye\r\n";
    let nss = Nss::with_keys(&[]);
    let gpgsm = Gpgsm::new();
    for format in ["clear", "opaque"] {
        let cfg = signing_config(d.path(), &format!("format = \"{format}\""));
        let original = message("alice@example.com", &rfc5322_date(0), body);
        let signed = sign(&cfg, &original);
        let content = openssl_verify(&signed).unwrap_or_else(|e| panic!("{format}: {e}"));
        let text = String::from_utf8_lossy(&content).into_owned();
        assert!(
            text.contains("Content-Transfer-Encoding: quoted-printable"),
            "{text}"
        );
        // No line a relay would change, in what was signed.
        for line in text.split("\r\n") {
            assert!(
                !line.ends_with(' ') && !line.ends_with('\t') && !line.starts_with("From "),
                "{format}: fragile line {line:?} in {text}"
            );
        }
        // The text reads back the same.
        assert_eq!(mime_leaves(&content), mime_leaves(&original), "{format}");
        let der = signature_der(&signed);
        if format == "clear" {
            let (signed_part, _) = split_clear_signed(&signed);
            nss.verify(&der, Some(&signed_part))
                .unwrap_or_else(|e| panic!("NSS: {e}"));
            gpgsm
                .verify_detached(&der, &signed_part)
                .unwrap_or_else(|e| panic!("gpgsm: {e}"));
        } else {
            nss.verify(&der, None)
                .unwrap_or_else(|e| panic!("NSS: {e}"));
            gpgsm
                .verify_opaque(&der)
                .unwrap_or_else(|e| panic!("gpgsm: {e}"));
        }
        let ar = inbound_verdict(&cfg, &signed);
        assert!(ar.contains("smime=pass"), "{ar}");
    }
}

#[test]
fn an_attached_8bit_message_is_signed_byte_for_byte() {
    let d = tempdir();
    let inner = "From: Zoë <zoe@example.net>\r\nSubject: Grüße\r\nMIME-Version: 1.0\r\n\
                 Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
                 Über den Fluss \r\nFrom the other side.\r\n";
    let body = format!(
        "--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nForwarded:\r\n\
         --b1\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n{inner}\r\n--b1--\r\n"
    );
    let original = format!(
        "From: alice@example.com\r\nTo: bob@example.net\r\nDate: {}\r\nSubject: fwd\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{body}",
        rfc5322_date(0)
    )
    .into_bytes();
    let nss = Nss::with_keys(&[]);
    for format in ["clear", "opaque"] {
        let cfg = signing_config(d.path(), &format!("format = \"{format}\""));
        let signed = sign(&cfg, &original);
        let content = openssl_verify(&signed).unwrap_or_else(|e| panic!("{format}: {e}"));
        // The attached message, byte for byte, labelled 8bit; the
        // multipart around it labelled 8bit too.
        let want = format!(
            "Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{inner}"
        );
        let content_text = String::from_utf8_lossy(&content);
        assert!(content_text.contains(&want), "{format}: {content_text}");
        // The header protected (RFC 9788), then the entity's own fields.
        assert!(
            content_text.contains("\r\nSubject: fwd\r\nContent-Type: multipart/mixed; boundary=\"b1\"; hp=\"clear\"; protected-headers=\"v1\"\r\nContent-Transfer-Encoding: 8bit\r\n"),
            "{content_text}"
        );
        let der = signature_der(&signed);
        if format == "clear" {
            // The message itself is 8bit now.
            let head = String::from_utf8_lossy(&signed);
            let head = &head[..head.find("\r\n\r\n").unwrap()];
            assert!(head.contains("Content-Transfer-Encoding: 8bit"), "{head}");
            let (signed_part, _) = split_clear_signed(&signed);
            nss.verify(&der, Some(&signed_part)).unwrap();
        } else {
            nss.verify(&der, None).unwrap();
        }
        assert_eq!(mime_leaves(&content), mime_leaves(&original), "{format}");
        let ar = inbound_verdict(&cfg, &signed);
        assert!(ar.contains("smime=pass"), "{ar}");
    }
}

fn encrypt_config(dir: &Path, certs: &Path, encrypt: &str) -> PathBuf {
    write_config(
        dir,
        "",
        &format!(
            "[encrypt]\ncerts_dir = \"{}\"\ndefault_policy = \"required\"\n{encrypt}\n{}",
            certs.display(),
            pki().key_table()
        ),
    )
}

fn encrypt(cfg: &Path, from: &str, rcpts: &[&str]) -> TestRun {
    let mut args = vec!["--outbound"];
    args.extend(rcpts.iter().flat_map(|r| ["--rcpt", r]));
    let msg =
        format!("From: {from}\r\nTo: x@example.net\r\nSubject: s\r\n\r\nThe secret plan.\r\n");
    test_mode(cfg, &args, msg.as_bytes())
}

#[test]
fn ec_recipients_get_a_sha2_kdf() {
    let certs = cert_dir(&["alice", "bob", "dave"]);
    let d = tempdir();
    let cfg = encrypt_config(d.path(), certs.path(), "[signing]\nenabled = false");
    let r = encrypt(
        &cfg,
        "x@example.com",
        &["alice@example.com", "bob@example.com", "dave@example.net"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let print = cms_print(&pkcs7_mime_der(&r.stdout));
    // bob: P-256, SHA-256; dave: P-384, SHA-384 (RFC 5753 §7.1.4).
    assert!(
        print.contains("dhSinglePass-stdDH-sha256kdf-scheme"),
        "{print}"
    );
    assert!(
        print.contains("dhSinglePass-stdDH-sha384kdf-scheme"),
        "{print}"
    );
    assert!(!print.contains("sha1kdf"), "{print}");
    for who in ["alice", "bob", "dave"] {
        let plain = openssl_decrypt(&r.stdout, who).unwrap_or_else(|e| panic!("{who}: {e}"));
        assert!(String::from_utf8_lossy(&plain).contains("The secret plan."));
    }
}

#[test]
fn nss_decrypts_and_verifies_what_it_supports() {
    // NSS 3.87 (Debian 12) reads RSA key transport with AES-CBC; it reads
    // neither AuthEnvelopedData (GCM) nor EC key agreement yet.
    let nss = Nss::with_keys(&["alice", "carol"]);
    let certs = cert_dir(&["alice", "carol"]);
    let d = tempdir();
    for cipher in ["aes-128-cbc", "aes-256-cbc"] {
        for signing in [
            "enabled = false",
            "format = \"clear\"",
            "format = \"opaque\"",
        ] {
            let cfg = encrypt_config(
                d.path(),
                certs.path(),
                &format!("cipher = \"{cipher}\"\n[signing]\n{signing}"),
            );
            let r = encrypt(
                &cfg,
                "bob@example.com",
                &["alice@example.com", "carol@example.com"],
            );
            assert_eq!(r.code, 0, "{}", r.stderr);
            let plain = nss
                .decrypt(&pkcs7_mime_der(&r.stdout))
                .unwrap_or_else(|e| panic!("{cipher} {signing}: {e}"));
            let text = String::from_utf8_lossy(&plain).into_owned();
            match signing {
                "enabled = false" => assert!(text.contains("The secret plan."), "{text}"),
                "format = \"clear\"" => {
                    let (part, sig) = split_clear_signed(&plain);
                    nss.verify(&sig, Some(&part)).unwrap();
                }
                _ => nss.verify(&pkcs7_mime_der(&plain), None).unwrap(),
            }
        }
    }
    // Signatures by every key type we sign with, PSS included.
    for (signing, from) in [
        ("rsa_padding = \"pss\"", "alice@example.com"),
        ("", "bob@example.com"),
        ("", "dave@example.net"),
    ] {
        let cfg = signing_config(d.path(), signing);
        let signed = sign(&cfg, &message(from, &rfc5322_date(0), "hi\r\n"));
        let (part, sig) = split_clear_signed(&signed);
        nss.verify(&sig, Some(&part))
            .unwrap_or_else(|e| panic!("{from}: {e}"));
    }
}

#[test]
fn the_escrow_key_decrypts_everything_we_encrypt() {
    let certs = cert_dir(&["alice", "bob", "dave"]);
    let d = tempdir();
    let carol = pki().path("carol.crt");
    for (cipher, signing) in [
        ("aes-256-cbc", "enabled = false"),
        ("aes-256-gcm", "enabled = false"),
        ("aes-128-cbc", "format = \"clear\""),
        ("aes-256-gcm", "format = \"opaque\""),
    ] {
        // carol by file, dave by address (looked up in certs_dir).
        let cfg = encrypt_config(
            d.path(),
            certs.path(),
            &format!(
                "cipher = \"{cipher}\"\nadditional_recipients = [\"{}\", \"dave@example.net\"]\n[signing]\n{signing}",
                carol.display()
            ),
        );
        for rcpts in [
            &["alice@example.com"][..],
            &["bob@example.com", "alice@example.com"],
        ] {
            let r = encrypt(&cfg, "bob@example.com", rcpts);
            assert_eq!(r.code, 0, "{}", r.stderr);
            let n = rcpts.len() + 2;
            assert!(
                r.stderr.contains(&format!("recipients={n}")),
                "{}",
                r.stderr
            );
            for who in ["carol", "dave"].iter().chain(rcpts.iter().map(|r| {
                if r.starts_with("alice") {
                    &"alice"
                } else {
                    &"bob"
                }
            })) {
                let plain = openssl_decrypt(&r.stdout, who)
                    .unwrap_or_else(|e| panic!("{cipher} {signing} {who}: {e}"));
                let content = if signing.starts_with("format") {
                    openssl_verify(&plain).unwrap_or_else(|e| panic!("{who}: {e}"))
                } else {
                    plain
                };
                let text = String::from_utf8_lossy(&content).into_owned();
                assert!(text.contains("The secret plan."), "{who}: {text}");
            }
        }
    }
    // An escrow address without a certificate: deferred, never sent
    // without it; an escrow recipient who is also a recipient counts once.
    let cfg = encrypt_config(
        d.path(),
        certs.path(),
        "additional_recipients = [\"archive@example.com\"]\n[signing]\nenabled = false",
    );
    let r = encrypt(&cfg, "x@example.com", &["alice@example.com"]);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("additional recipient <archive@example.com>"),
        "{}",
        r.stderr
    );
    let cfg = encrypt_config(
        d.path(),
        certs.path(),
        "additional_recipients = [\"alice@example.com\"]\n[signing]\nenabled = false",
    );
    let r = encrypt(&cfg, "x@example.com", &["alice@example.com"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("recipients=1"), "{}", r.stderr);
    // An unusable escrow file stops the start, at its line.
    for bad in ["expired.crt", "web.crt", "root.crt"] {
        let text = format!(
            "[encrypt]\ndefault_policy = \"required\"\ncerts_dir = \"{}\"\nadditional_recipients = [\n  \"{}\",\n]\n",
            certs.path().display(),
            pki().path(bad).display()
        );
        let cfg = d.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = run(std::process::Command::new(bin())
            .args(["--check-config", "-c"])
            .arg(&cfg));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{bad}: {err}");
        assert!(
            err.contains("bad.toml:5:") && err.contains("cannot be encrypted to"),
            "{bad}: {err}"
        );
    }
}
