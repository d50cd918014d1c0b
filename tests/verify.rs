//! Inbound verification, through `smime-milter test --inbound` (the milter's
//! own code path): a corpus made by openssl and gpgsm with an expected result
//! per message, Thunderbird's public samples, and a round trip of everything
//! smime-milter signs.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const AUTHSERV: &str = "mx.corpus.test";

fn verify_config(dir: &Path, anchors: &Path, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!("authserv_id = \"{AUTHSERV}\"\n{extra}"),
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n{}",
            anchors.display(),
            pki().key_table()
        ),
    )
}

/// Our Authentication-Results values in a delivered message.
fn our_results(msg: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    // Unfolded, as a reader sees the fields.
    let head = text
        .split("\n\n")
        .next()
        .unwrap_or("")
        .replace("\n ", " ")
        .replace("\n\t", "\t");
    let mut out = Vec::new();
    for line in head.split('\n') {
        if let Some(v) = line.strip_prefix("Authentication-Results: ") {
            if v.to_ascii_lowercase().starts_with(AUTHSERV) {
                out.push(v.to_string());
            }
        }
    }
    out
}

fn result_of(value: &str) -> String {
    value
        .split("smime=")
        .nth(1)
        .unwrap_or("")
        .split([' ', ';'])
        .next()
        .unwrap_or("")
        .to_string()
}

fn body_of(msg: &[u8]) -> Vec<u8> {
    // The first empty line, whatever its line ends.
    let crlf = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4));
    let lf = msg
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| (p, p + 2));
    let start = [crlf, lf]
        .into_iter()
        .flatten()
        .min()
        .map_or(msg.len(), |(_, s)| s);
    msg[start..].to_vec()
}

struct Case {
    file: String,
    expected: String,
    why: String,
}

fn manifest(path: &Path) -> Vec<Case> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Case {
                file: f[0].into(),
                expected: f[1].into(),
                why: f.get(2).copied().unwrap_or("-").into(),
            }
        })
        .collect()
}

#[test]
fn corpus_from_independent_implementations_gets_the_expected_results() {
    let corpus = tempdir();
    let out = run(Command::new("bash")
        .arg(project_dir().join("tests/corpus/make-corpus.sh"))
        .arg(&pki().dir)
        .arg(corpus.path()));
    assert!(
        out.status.success(),
        "make-corpus.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = tempdir();
    let cfg = verify_config(d.path(), &pki().path("root.crt"), "");
    let cases = manifest(&corpus.path().join("MANIFEST.tsv"));
    assert!(cases.len() >= 30, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let input = std::fs::read(corpus.path().join(&c.file)).unwrap();
        let r = test_mode(&cfg, &["--inbound"], &input);
        assert_eq!(r.code, 0, "{}: {}", c.file, r.stderr);
        let results = our_results(&r.stdout);
        let got = match results.as_slice() {
            [] => "none".to_string(),
            [one] => result_of(one),
            many => format!("{} headers", many.len()),
        };
        let why_ok = c.why == "-" || results.first().is_some_and(|v| v.contains(c.why.as_str()));
        if got != c.expected || !why_ok {
            failures.push(format!(
                "{}: expected {} ({}), got {:?}",
                c.file, c.expected, c.why, results
            ));
        }
        // Verification never touches the body (line ends are the MTA's: CRLF).
        let lf = |b: Vec<u8>| String::from_utf8_lossy(&b).replace("\r\n", "\n");
        assert!(
            lf(body_of(&r.stdout)) == lf(body_of(&input)),
            "{}: body changed",
            c.file
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn forged_authentication_results_are_removed_in_every_spelling() {
    let d = tempdir();
    let cfg = verify_config(d.path(), &pki().path("root.crt"), "");
    let signed = test_mode(
        &cfg,
        &["--outbound"],
        b"From: alice@example.com\nSubject: x\n\nsigned\n",
    )
    .stdout;
    for forged in [
        "Authentication-Results: mx.corpus.test; smime=pass",
        "Authentication-Results: MX.CORPUS.TEST; smime=pass",
        "Authentication-Results: (sneaky) mx.corpus.test;\n\tsmime=pass body.smime-identifier=ceo@example.com",
        "authentication-results:   mx.corpus.test 1 ; smime=pass",
    ] {
        for body in [&signed[..], b"From: alice@example.com\nSubject: unsigned\n\nplain\n"] {
            let mut input = format!("{forged}\nAuthentication-Results: other.example; spf=pass\n").into_bytes();
            input.extend_from_slice(body);
            let r = test_mode(&cfg, &["--inbound"], &input);
            let out = String::from_utf8_lossy(&r.stdout).to_string();
            assert!(!out.contains("smime=pass body.smime-identifier=ceo") && !out.contains("(sneaky)"), "{forged}: {out}");
            let ours = our_results(&r.stdout);
            let is_signed = body.starts_with(b"From: alice@example.com\r\n") || body.len() > 200;
            assert_eq!(ours.len(), usize::from(is_signed), "{forged}: {ours:?}");
            assert!(out.contains("Authentication-Results: other.example; spf=pass"), "another server's header stays");
            assert!(r.stderr.contains("removed 1 forged Authentication-Results"), "{}", r.stderr);
        }
    }
}

#[test]
fn everything_we_sign_verifies_as_pass() {
    let senders = [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.net",
        "info@example.org",
    ];
    for signing in [
        "",
        "format = \"opaque\"",
        "digest = \"sha512\"",
        "include_chain = true",
    ] {
        let d = tempdir();
        let cfg = write_config(
            d.path(),
            &format!("authserv_id = \"{AUTHSERV}\""),
            &format!(
                "[signing]\n{signing}\n[verify]\ntrust_anchors = \"{}\"\n{}",
                pki().path("root.crt").display(),
                pki().key_table()
            ),
        );
        for from in senders {
            for name in [
                "plain.eml",
                "utf8-8bit.eml",
                "multipart-binary.eml",
                "long-lines.eml",
            ] {
                let raw = std::fs::read(project_dir().join("tests/data").join(name)).unwrap();
                // The data files carry fixed Dates; the Date/signingTime check is
                // not what this test is about.
                let raw: String = String::from_utf8_lossy(&raw)
                    .replacen("Alice <alice@example.com>", from, 1)
                    .replacen("From: alice@example.com", &format!("From: {from}"), 1)
                    .split_inclusive('\n')
                    .filter(|l| !l.starts_with("Date: "))
                    .collect();
                let signed = test_mode(&cfg, &["--outbound"], raw.as_bytes());
                assert!(
                    signed.stderr.contains("action=signed"),
                    "{signing} {from} {name}: {}",
                    signed.stderr
                );
                let r = test_mode(&cfg, &["--inbound"], &signed.stdout);
                let ours = our_results(&r.stdout);
                assert_eq!(ours.len(), 1, "{signing} {from} {name}: {}", r.stderr);
                assert!(
                    ours[0].contains("smime=pass"),
                    "{signing} {from} {name}: {}",
                    ours[0]
                );
                assert!(
                    ours[0].contains(&format!("body.smime-identifier={from}")),
                    "{}",
                    ours[0]
                );
            }
        }
    }
}

#[test]
fn bad_signature_action_is_configurable() {
    let d = tempdir();
    let corpus = tempdir();
    let signed = {
        let cfg = verify_config(d.path(), &pki().path("root.crt"), "");
        test_mode(
            &cfg,
            &["--outbound"],
            b"From: alice@example.com\nSubject: x\n\nsigned text\n",
        )
        .stdout
    };
    let tampered = String::from_utf8_lossy(&signed).replace("signed text", "signed TEXT");
    std::fs::write(corpus.path().join("t.eml"), &tampered).unwrap();
    for (action, code) in [("accept", 0), ("tempfail", 75), ("reject", 69)] {
        let cfg = verify_config(
            d.path(),
            &pki().path("root.crt"),
            &format!("[actions]\nbad_signature = \"{action}\"\n"),
        );
        // [actions] must follow the top-level keys, before [verify].
        let r = test_mode(&cfg, &["--inbound"], tampered.as_bytes());
        assert_eq!(r.code, code, "{action}: {}", r.stderr);
        assert!(r.stderr.contains("smime=fail"), "{}", r.stderr);
    }
}

#[test]
fn thunderbird_samples_get_the_expected_results() {
    let Some(dir) = interop_corpus() else {
        return;
    };
    let d = tempdir();
    let cfg = verify_config(d.path(), &dir.join("smime/TestCA.pem"), "");
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (file, expected, encrypted) = (f[0], f[1], f[2]);
        // Encrypted samples are decided by what is inside: they need
        // decryption at the gateway, which is not configured here.
        if encrypted != "no" {
            continue;
        }
        let input = std::fs::read(dir.join(file)).unwrap();
        let r = test_mode(&cfg, &["--inbound"], &input);
        assert_eq!(r.code, 0, "{file}: {}", r.stderr);
        let ours = our_results(&r.stdout);
        let got = ours
            .first()
            .map(|v| result_of(v))
            .unwrap_or_else(|| "none".into());
        if got != expected {
            failures.push(format!("{file}: expected {expected}, got {got} ({ours:?})"));
        }
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} samples checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A message openssl signed for `signer` (From: the signer's address).
fn openssl_signed(signer: &str, from: &str) -> Vec<u8> {
    let signed = openssl_sign(
        signer,
        "sha256",
        b"Content-Type: text/plain\n\nrevocation check\n",
    );
    let mut m = format!("From: {from}\nSubject: crl\n").into_bytes();
    m.extend_from_slice(&signed);
    m
}

/// Our Authentication-Results value for a message openssl signed as
/// `signer`, From: the signer's own address.
fn result_for(cfg: &Path, signer: &str) -> String {
    let msg = openssl_signed(signer, &format!("{signer}@example.com"));
    let r = test_mode(cfg, &["--inbound"], &msg);
    our_results(&r.stdout)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no Authentication-Results: {}", r.stderr))
}

#[test]
fn crls_are_checked_when_configured() {
    let d = tempdir();
    let with_crls = |dir: &Path| {
        write_config(
            d.path(),
            &format!("authserv_id = \"{AUTHSERV}\""),
            &format!(
                "[verify]\ntrust_anchors = \"{}\"\ncrl_dir = \"{}\"\n",
                pki().path("root.crt").display(),
                dir.display()
            ),
        )
    };
    let cfg = with_crls(&pki().path("crl"));
    let r = result_for(&cfg, "revoked");
    assert!(r.contains("smime=fail (certificate revoked)"), "{r}");
    let r = result_for(&cfg, "alice");
    assert!(r.contains("smime=pass"), "{r}");

    // Without the intermediate's CRL nothing can be said yet.
    let partial = tempdir();
    std::fs::copy(
        pki().path("crl/root.crl.pem"),
        partial.path().join("root.crl.pem"),
    )
    .unwrap();
    let cfg = with_crls(partial.path());
    let r = result_for(&cfg, "alice");
    assert!(r.contains("smime=temperror (no CRL for issuer)"), "{r}");

    // Without CRL checking the revoked certificate is not known to be revoked.
    let cfg = write_config(
        d.path(),
        &format!("authserv_id = \"{AUTHSERV}\""),
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n",
            pki().path("root.crt").display()
        ),
    );
    let r = result_for(&cfg, "revoked");
    assert!(r.contains("smime=pass"), "{r}");
}

#[test]
fn trust_anchors_from_a_directory() {
    let d = tempdir();
    let anchors = tempdir();
    std::fs::copy(pki().path("root.crt"), anchors.path().join("root.pem")).unwrap();
    std::fs::copy(
        pki().path("rogue-root.crt"),
        anchors.path().join("other.pem"),
    )
    .unwrap();
    let cfg = write_config(
        d.path(),
        &format!("authserv_id = \"{AUTHSERV}\""),
        &format!("[verify]\ntrust_dir = \"{}\"\n", anchors.path().display()),
    );
    let r = result_for(&cfg, "alice");
    assert!(r.contains("smime=pass"), "{r}");
    let r = result_for(&cfg, "eve");
    assert!(
        r.contains("smime=pass"),
        "eve's CA is trusted here too: {r}"
    );
}
