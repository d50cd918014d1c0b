//! Keys in a PKCS#11 token: a SoftHSM2 token made for each test (its own
//! SOFTHSM2_CONF), RSA and EC keys imported, used through `pkcs11:` URIs.

mod common;
use common::milter_client;
use common::softhsm;

use common::*;
use milter_client::{split_message, MilterClient, Reply};
use softhsm::{SoftHsm, MODULE, PIN};
use std::path::{Path, PathBuf};
use std::process::Command;

fn pin_file(dir: &Path, pin: &str) -> PathBuf {
    let p = dir.join("token.pin");
    std::fs::write(&p, format!("{pin}\n")).unwrap();
    set_mode(&p, 0o600);
    p
}

/// Runs the test mode with SOFTHSM2_CONF pointing at this token.
fn test_mode_hsm(hsm: &SoftHsm, cfg: &Path, args: &[&str], input: &[u8]) -> TestRun {
    test_mode_env(cfg, args, input, &[("SOFTHSM2_CONF", &hsm.conf())])
}

#[test]
fn token_keys_sign_messages_that_openssl_gpgsm_and_we_verify() {
    let hsm = SoftHsm::new();
    let d = tempdir();
    let pin = pin_file(d.path(), PIN);
    let gpgsm = Gpgsm::new();
    for (padding, senders) in [
        ("", vec!["alice@example.com", "bob@example.com"]),
        ("rsa_padding = \"pss\"", vec!["alice@example.com"]),
    ] {
        let cfg = write_config(
            d.path(),
            "authserv_id = \"mx.hsm.test\"",
            &format!(
                "{}\n[verify]\ntrust_anchors = \"{}\"\n",
                hsm.tables(&pin, padding),
                pki().path("root.crt").display()
            ),
        );
        for from in senders {
            let msg = format!(
                "From: {from}\nSubject: signed in the token\n\nThe key never left the token.\n"
            );
            let r = test_mode_hsm(&hsm, &cfg, &["--outbound"], msg.as_bytes());
            assert!(
                r.stderr.contains("action=signed"),
                "{from} {padding}: {}",
                r.stderr
            );
            let content =
                openssl_verify(&r.stdout).unwrap_or_else(|e| panic!("{from} {padding}: {e}"));
            assert!(String::from_utf8_lossy(&content).contains("The key never left the token."));
            let (signed, sig) = split_clear_signed(&r.stdout);
            // gpgsm 2.2 verifies RSA (PKCS#1 v1.5) and ECDSA, not RSASSA-PSS.
            if padding.is_empty() {
                gpgsm
                    .verify_detached(&sig, &signed)
                    .unwrap_or_else(|e| panic!("{from}: gpgsm: {e}"));
            } else {
                let d2 = tempdir();
                std::fs::write(d2.path().join("s"), &sig).unwrap();
                let out = run(Command::new("openssl")
                    .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
                    .arg(d2.path().join("s")));
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains("rsassaPss"),
                    "PSS signature"
                );
            }
            // Our own inbound verification accepts it.
            let v = test_mode_hsm(&hsm, &cfg, &["--inbound"], &r.stdout);
            let out = String::from_utf8_lossy(&v.stdout);
            assert!(
                out.contains("Authentication-Results: mx.hsm.test; smime=pass"),
                "{from} {padding}: {out}"
            );
        }
    }
}

#[test]
fn certificate_and_key_by_uri_with_id() {
    let hsm = SoftHsm::new();
    let d = tempdir();
    let pin = pin_file(d.path(), PIN);
    let tables = format!(
        "[pkcs11]\nmodule = \"{MODULE}\"\npin_file = \"{}\"\n[[signing.key]]\nsender = \"alice@example.com\"\n\
         certificate = \"pkcs11:token=smime;object=alice-rsa;type=cert\"\nprivate_key = \"pkcs11:token=smime;id=%01;type=private\"\n",
        pin.display()
    );
    let cfg = write_config(d.path(), "", &tables);
    let r = test_mode_hsm(
        &hsm,
        &cfg,
        &["--outbound"],
        b"From: alice@example.com\nSubject: uri\n\nby id\n",
    );
    assert!(r.stderr.contains("action=signed"), "{}", r.stderr);
    // The token holds no intermediate: the signature carries none.
    let (_, sig) = split_clear_signed(&r.stdout);
    let d2 = tempdir();
    std::fs::write(d2.path().join("s"), &sig).unwrap();
    let out = run(Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout", "-in"])
        .arg(d2.path().join("s")));
    let certs = String::from_utf8_lossy(&out.stdout);
    assert!(
        certs.contains("subject=O = smime-milter tests, CN = alice")
            && certs.matches("subject=").count() == 1,
        "{certs}"
    );
}

/// The token chosen by its serial number instead of its label (RFC 7512
/// `serial`), as when several tokens carry the same label.
#[test]
fn token_chosen_by_serial() {
    let hsm = SoftHsm::new();
    let out = run(Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", hsm.conf())
        .arg("--show-slots"));
    let slots = String::from_utf8_lossy(&out.stdout);
    let serial = slots
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial number:"))
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("no token serial in {slots}"))
        .to_string();
    let d = tempdir();
    let pin = pin_file(d.path(), PIN);
    let uri = |kind: &str| format!("pkcs11:serial={serial};object=alice-rsa;type={kind}");
    let tables = format!(
        "[pkcs11]\nmodule = \"{MODULE}\"\npin_file = \"{}\"\n[[signing.key]]\nsender = \"alice@example.com\"\n\
         certificate = \"{}\"\nprivate_key = \"{}\"\n",
        pin.display(),
        uri("cert"),
        uri("private")
    );
    let cfg = write_config(d.path(), "", &tables);
    let r = test_mode_hsm(
        &hsm,
        &cfg,
        &["--outbound"],
        b"From: alice@example.com\nSubject: serial\n\nby serial\n",
    );
    assert!(r.stderr.contains("action=signed"), "{}", r.stderr);
    // A serial no token has is an error naming the URI.
    let wrong = tables.replace(&serial, "0000000000000000");
    let cfg = write_config(d.path(), "", &wrong);
    let r = test_mode_hsm(
        &hsm,
        &cfg,
        &["--outbound"],
        b"From: alice@example.com\n\nx\n",
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("serial=0000000000000000"), "{}", r.stderr);
}

#[test]
fn token_keys_decrypt_pkcs1_and_oaep_key_transport() {
    let hsm = SoftHsm::new();
    let d = tempdir();
    let pin = pin_file(d.path(), PIN);
    let cfg = write_config(
        d.path(),
        "",
        &format!(
            // CBC plaintext is released here: the key transport is tested.
            "[decrypt]\nenabled = true\nrelease_unauthenticated = true\n[harvest]\nenabled = false\n{}",
            hsm.tables(&pin, "")
        ),
    );
    for keyopt in [None, Some("rsa_padding_mode:oaep")] {
        let dd = tempdir();
        std::fs::write(
            dd.path().join("e"),
            "Content-Type: text/plain\r\n\r\nDecrypted by the token.\r\n",
        )
        .unwrap();
        let mut cmd = Command::new("openssl");
        cmd.args(["cms", "-encrypt", "-aes-256-cbc", "-in"])
            .arg(dd.path().join("e"))
            .arg("-recip")
            .arg(pki().path("alice.crt"));
        if let Some(k) = keyopt {
            cmd.args(["-keyopt", k]);
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut msg =
            b"From: x@example.net\nTo: alice@example.com\nSubject: for the token\n".to_vec();
        msg.extend_from_slice(&out.stdout);
        let r = test_mode_hsm(
            &hsm,
            &cfg,
            &["--inbound", "--rcpt", "alice@example.com"],
            &msg,
        );
        assert!(
            r.stderr.contains("action=decrypted"),
            "{keyopt:?}: {}",
            r.stderr
        );
        assert!(
            String::from_utf8_lossy(&r.stdout).contains("\nDecrypted by the token."),
            "{keyopt:?}"
        );
        // Damaged ciphertext (the end of the encrypted content)
        // fails as the message's fault: the token is not restarted, which
        // would let any sender keep it restarting.
        let text = String::from_utf8_lossy(&msg).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        // The last block of the ciphertext: its padding no longer checks.
        let i = lines.iter().rposition(|l| !l.trim().is_empty()).unwrap();
        let at = lines[i].trim_end().trim_end_matches('=').len() - 2;
        let flipped: String = lines[i]
            .chars()
            .enumerate()
            .map(|(n, c)| match (n == at, c) {
                (true, 'A') => 'B',
                (true, _) => 'A',
                (false, c) => c,
            })
            .collect();
        let mut bad: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        bad[i] = flipped;
        let r = test_mode_hsm(
            &hsm,
            &cfg,
            &["--inbound", "--rcpt", "alice@example.com"],
            (bad.join("\n") + "\n").as_bytes(),
        );
        assert!(
            String::from_utf8_lossy(&r.stdout).contains("X-SMIME-Decrypted: failed"),
            "{keyopt:?}: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("restarted the PKCS#11 module"),
            "{keyopt:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn wrong_pin_missing_token_and_missing_module_are_clear_start_errors() {
    let hsm = SoftHsm::new();
    let d = tempdir();
    let check = |cfg: &Path| {
        let out = run(Command::new(bin())
            .env("SOFTHSM2_CONF", hsm.conf())
            .arg("--check-config")
            .arg("-c")
            .arg(cfg));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let wrong = pin_file(d.path(), "not-the-pin");
    let (code, err) = check(&write_config(d.path(), "", &hsm.tables(&wrong, "")));
    assert_eq!(code, Some(78));
    assert!(
        err.contains("key 'private_key'") && err.contains("PIN incorrect"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-pin"),
        "the PIN is never printed: {err}"
    );

    let pin = pin_file(d.path(), PIN);
    let tables = hsm.tables(&pin, "").replace(
        "token=smime;object=alice-rsa;type=private",
        "token=absent;object=alice-rsa;type=private",
    );
    let (code, err) = check(&write_config(d.path(), "", &tables));
    assert_eq!(code, Some(78));
    assert!(
        err.contains("cannot use pkcs11:token=absent") && err.contains("not found"),
        "{err}"
    );

    let tables = hsm
        .tables(&pin, "")
        .replace(MODULE, "/usr/lib/softhsm/libnot-there.so");
    let (code, err) = check(&write_config(d.path(), "", &tables));
    assert_eq!(code, Some(78));
    assert!(
        err.contains("key 'module': cannot load PKCS#11 module /usr/lib/softhsm/libnot-there.so"),
        "{err}"
    );

    // A PIN file others can read is refused, like a key file.
    set_mode(&pin, 0o644);
    let (code, err) = check(&write_config(d.path(), "", &hsm.tables(&pin, "")));
    assert_eq!(code, Some(78));
    assert!(err.contains("chmod 600") && !err.contains(PIN), "{err}");
}

fn sign_via(m: &Milter, qid: &str) -> Reply {
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) =
        split_message(b"From: alice@example.com\r\nSubject: token\r\n\r\nhello\r\n");
    let r = c
        .message(
            qid,
            None,
            "alice@example.com",
            &["x@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    c.quit();
    if r.new_body().is_some() {
        openssl_verify(&r.apply(&headers, &body)).expect("verifies");
    }
    r.reply
}

#[test]
fn a_token_that_disappears_gives_tempfail_recovers_when_restored_and_the_pin_stays_secret() {
    let hsm = SoftHsm::new();
    let d = tempdir();
    let pin = pin_file(d.path(), PIN);
    let m = Milter::start_env("", &hsm.tables(&pin, ""), &[("SOFTHSM2_CONF", &hsm.conf())]);
    assert!(matches!(
        sign_via(&m, "T1"),
        Reply::Continue | Reply::Accept
    ));

    // The token's files go away under the running milter.
    let away = hsm.dir.path().join("tokens.away");
    std::fs::rename(hsm.tokens(), &away).unwrap();
    let r = sign_via(&m, "T2");
    assert!(
        matches!(&r, Reply::Code(t) if t.starts_with("451")),
        "token gone: {r:?}\n{}",
        m.log()
    );
    // The token comes back: the milter restarts the module and signs again,
    // without a restart of its own (the restart is tried at most every 2 s).
    std::fs::rename(&away, hsm.tokens()).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut n = 3;
    loop {
        let r = sign_via(&m, &format!("T{n}"));
        if matches!(r, Reply::Continue | Reply::Accept) {
            break;
        }
        assert!(
            matches!(&r, Reply::Code(t) if t.starts_with("451")),
            "while recovering: {r:?}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "token restored but never used again:\n{}",
            m.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
        n += 1;
    }
    // And keeps signing (a fresh engine, not a lucky retry).
    assert!(matches!(
        sign_via(&m, "TX"),
        Reply::Continue | Reply::Accept
    ));
    assert!(
        m.log()
            .contains("restarted the PKCS#11 module and reloaded the keys"),
        "{}",
        m.log()
    );

    let log = m.log();
    assert!(log.contains("T2: outbound action=tempfail"), "{log}");
    assert!(!log.contains(PIN), "the PIN is never logged");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", m.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(PIN),
        "nor in ps"
    );
}

#[test]
fn concurrent_signing_with_token_keys() {
    let hsm = SoftHsm::new();
    let d = tempdir();
    let pin = pin_file(d.path(), PIN);
    let m = Milter::start_env("", &hsm.tables(&pin, ""), &[("SOFTHSM2_CONF", &hsm.conf())]);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let path = m.socket_path.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let from = if (t + i) % 2 == 0 {
                        "alice@example.com"
                    } else {
                        "bob@example.com"
                    };
                    let mut c = MilterClient::connect(&path).unwrap();
                    c.connect_info("127.0.0.1").unwrap();
                    let raw = format!(
                        "From: {from}\r\nSubject: {t}/{i}\r\n\r\nthread {t} message {i}\r\n"
                    );
                    let (headers, body) = split_message(raw.as_bytes());
                    let r = c
                        .message(
                            &format!("P{t}x{i}"),
                            None,
                            from,
                            &["x@example.net"],
                            &headers,
                            &body,
                        )
                        .unwrap();
                    openssl_verify(&r.apply(&headers, &body)).unwrap();
                    c.quit();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
