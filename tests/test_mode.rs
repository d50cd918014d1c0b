//! The offline test mode (`smime-milter test`) runs the milter's own code
//! path; its output is checked with openssl, gpgsm and Python's MIME parser.

mod common;
use common::*;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(project_dir().join("tests/data").join(name)).unwrap()
}

fn config(top: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempdir();
    let cfg = write_config(dir.path(), top, &pki().key_table());
    (dir, cfg)
}

fn with_from(msg: &[u8], from: &str) -> Vec<u8> {
    let s = String::from_utf8_lossy(msg).into_owned();
    let mut out = String::new();
    for (i, line) in s.split_inclusive('\n').enumerate() {
        if line.starts_with("From:") && i < 10 {
            out.push_str(&format!("From: {from}\n"));
        } else {
            out.push_str(line);
        }
    }
    out.into_bytes()
}

fn header_block(msg: &[u8]) -> String {
    let s = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    s[..s.find("\n\n").unwrap()].to_string()
}

#[test]
fn every_key_kind_signs_and_verifies_with_openssl_and_gpgsm() {
    let (_d, cfg) = config("");
    let gpgsm = Gpgsm::new();
    for from in [
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.net",
        "info@example.org",
    ] {
        let input = with_from(&data("plain.eml"), from);
        let r = test_mode(&cfg, &["--outbound"], &input);
        assert_eq!(r.code, 0, "{from}: {}", r.stderr);
        assert!(r.stderr.contains("action=signed"), "{from}: {}", r.stderr);
        let micalg = if from.starts_with("dave") {
            "micalg=sha-384;"
        } else {
            "micalg=sha-256;"
        };
        assert!(
            header_block(&r.stdout).contains(micalg),
            "{from}: P-384 signs with SHA-384"
        );
        let content = openssl_verify(&r.stdout).unwrap_or_else(|e| panic!("{from}: openssl: {e}"));
        let (signed, sig) = split_clear_signed(&r.stdout);
        assert_eq!(
            content, signed,
            "openssl and our splitter agree on the signed bytes"
        );
        gpgsm
            .verify_detached(&sig, &signed)
            .unwrap_or_else(|e| panic!("{from}: gpgsm: {e}"));
        assert_eq!(mime_leaves(&content), mime_leaves(&input), "{from}");
    }
}

#[test]
fn headers_other_than_content_fields_are_untouched() {
    let (_d, cfg) = config("");
    let input = data("multipart-binary.eml");
    let r = test_mode(&cfg, &["--outbound"], &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = header_block(&input);
    let after = header_block(&r.stdout);
    let keep = |h: &str| -> Vec<String> {
        h.lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("content-"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(keep(&before), keep(&after));
    assert!(after.contains("Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary="), "{after}");
    assert_eq!(after.matches("Content-Type:").count(), 1, "{after}");
}

#[test]
fn eight_bit_long_lines_and_attachments_survive_signing() {
    let (_d, cfg) = config("");
    let gpgsm = Gpgsm::new();
    for name in ["utf8-8bit.eml", "multipart-binary.eml", "long-lines.eml"] {
        let input = data(name);
        let r = test_mode(&cfg, &["--outbound"], &input);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let out = &r.stdout;
        assert!(out.is_ascii(), "{name}: signed output must be 7-bit");
        assert!(
            out.split(|&b| b == b'\n').all(|l| l.len() <= 998),
            "{name}: no line over 998 octets"
        );
        let content = openssl_verify(out).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (signed, sig) = split_clear_signed(out);
        gpgsm
            .verify_detached(&sig, &signed)
            .unwrap_or_else(|e| panic!("{name}: gpgsm: {e}"));
        assert_eq!(
            mime_leaves(&content),
            mime_leaves(&input),
            "{name}: decoded content changed"
        );
    }
}

#[test]
fn opaque_format_verifies_with_openssl_and_gpgsm() {
    let (_d, cfg) = config("[signing]\nformat = \"opaque\"\n");
    // The key table declares [[signing.key]]; [signing] must come first.
    let r = test_mode(&cfg, &["--outbound"], &data("utf8-8bit.eml"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let head = header_block(&r.stdout);
    assert!(
        head.contains("Content-Type: application/pkcs7-mime; smime-type=signed-data"),
        "{head}"
    );
    assert!(head.contains("Content-Transfer-Encoding: base64"), "{head}");
    let content = openssl_verify(&r.stdout).unwrap();
    assert_eq!(mime_leaves(&content), mime_leaves(&data("utf8-8bit.eml")));
    let s = String::from_utf8_lossy(&r.stdout).replace("\r\n", "\n");
    let b64: String = s[s.find("\n\n").unwrap()..].split_whitespace().collect();
    let inner = Gpgsm::new().verify_opaque(&decode_base64(&b64)).unwrap();
    assert_eq!(inner, content);
}

#[test]
fn configured_digest_is_used_and_announced() {
    for (digest, micalg, oid_name) in [
        ("sha384", "sha-384", "sha384"),
        ("sha512", "sha-512", "sha512"),
    ] {
        let (_d, cfg) = config(&format!("[signing]\ndigest = \"{digest}\"\n"));
        let r = test_mode(&cfg, &["--outbound"], &data("plain.eml"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            header_block(&r.stdout).contains(&format!("micalg={micalg};")),
            "{digest}"
        );
        openssl_verify(&r.stdout).unwrap();
        let (_, sig) = split_clear_signed(&r.stdout);
        let d = tempdir();
        std::fs::write(d.path().join("s.der"), &sig).unwrap();
        let out = run(std::process::Command::new("openssl")
            .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
            .arg(d.path().join("s.der")));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains(&format!("algorithm: {oid_name}")),
            "{digest}: {printed}"
        );
        assert!(printed.contains("signingTime"), "signingTime attribute");
        assert!(
            printed.contains("SMIMECapabilities") || printed.contains("S/MIME Capabilities"),
            "{printed}"
        );
    }
}

#[test]
fn chain_without_root_is_included() {
    let (_d, cfg) = config("");
    let r = test_mode(&cfg, &["--outbound"], &data("plain.eml"));
    let (_, sig) = split_clear_signed(&r.stdout);
    let d = tempdir();
    std::fs::write(d.path().join("s.der"), &sig).unwrap();
    let out = run(std::process::Command::new("openssl")
        .args(["pkcs7", "-inform", "DER", "-print_certs", "-noout", "-in"])
        .arg(d.path().join("s.der")));
    let certs = String::from_utf8_lossy(&out.stdout);
    assert!(certs.contains("CN = alice"), "{certs}");
    assert!(certs.contains("CN = Test Intermediate CA"), "{certs}");
    assert!(
        !certs.contains("subject=O = smime-milter tests, CN = Test Root CA"),
        "{certs}"
    );
}

#[test]
fn message_without_mime_headers_is_signed_as_text_plain() {
    let (_d, cfg) = config("");
    let input = b"From: alice@example.com\nTo: x@example.net\nSubject: no mime\n\nJust text.\n";
    let r = test_mode(&cfg, &["--outbound"], input);
    assert_eq!(r.code, 0);
    let content = openssl_verify(&r.stdout).unwrap();
    assert!(
        content.starts_with(b"From: alice@example.com\r\nTo: x@example.net\r\nSubject: no mime\r\nContent-Type: text/plain; charset=us-ascii; hp=\"clear\"; protected-headers=\"v1\"\r\n\r\nJust text.\r\n"),
        "{}",
        String::from_utf8_lossy(&content)
    );
    assert!(header_block(&r.stdout).contains("MIME-Version: 1.0"));
}

#[test]
fn sender_without_key_passes_unchanged() {
    let (_d, cfg) = config("");
    let input = with_from(&data("plain.eml"), "nobody@unknown.example");
    let r = test_mode(&cfg, &["--outbound"], &input);
    assert_eq!(r.code, 0);
    assert_eq!(r.stdout, input, "byte for byte");
    assert!(
        r.stderr.contains("action=unchanged")
            && r.stderr
                .contains("no signing key for <nobody@unknown.example>"),
        "{}",
        r.stderr
    );
}

#[test]
fn key_not_found_action_is_configurable() {
    let input = with_from(&data("plain.eml"), "nobody@unknown.example");
    for (action, code) in [("tempfail", 75), ("reject", 69), ("accept", 0)] {
        let (_d, cfg) = config(&format!("[actions]\nkey_not_found = \"{action}\"\n"));
        let r = test_mode(&cfg, &["--outbound"], &input);
        assert_eq!(r.code, code, "{action}: {}", r.stderr);
    }
}

#[test]
fn authenticated_client_cannot_sign_as_someone_else() {
    let (_d, cfg) = config("[senders]\nalice = [\"alice@example.com\"]\n");
    let input = data("plain.eml"); // From: alice@example.com
    let r = test_mode(&cfg, &["--outbound", "--auth-user", "mallory"], &input);
    assert_eq!(r.code, 0);
    assert_eq!(r.stdout, input, "unsigned, unchanged");
    assert!(
        r.stderr
            .contains("login 'mallory' may not sign as <alice@example.com>"),
        "{}",
        r.stderr
    );
    let r = test_mode(&cfg, &["--outbound", "--auth-user", "alice"], &input);
    assert!(r.stderr.contains("action=signed"), "{}", r.stderr);
    openssl_verify(&r.stdout).unwrap();
}

#[test]
fn inbound_mail_is_not_signed() {
    let (_d, cfg) = config("");
    let input = data("plain.eml");
    let r = test_mode(&cfg, &["--inbound"], &input);
    assert_eq!(r.code, 0);
    assert_eq!(r.stdout, input);
    // Direction from the client address when not forced: 192.0.2.1 is external.
    let r = test_mode(&cfg, &["--outbound", "--client-ip", "192.0.2.1"], &input);
    assert!(
        r.stderr.contains("action=signed"),
        "forced direction wins: {}",
        r.stderr
    );
}

#[test]
fn malformed_mime_gets_the_malformed_action() {
    let input = "From: alice@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed\n\n--x\nContent-Type: text/plain\n\nüber\n--x--\n";
    let (_d, cfg) = config("");
    let r = test_mode(&cfg, &["--outbound"], input.as_bytes());
    assert_eq!(r.code, 0, "default: accept unchanged");
    assert_eq!(r.stdout, input.as_bytes());
    assert!(
        r.stderr.contains("multipart entity without a boundary"),
        "{}",
        r.stderr
    );
    let (_d, cfg) = config("[actions]\nmalformed = \"tempfail\"\n");
    assert_eq!(test_mode(&cfg, &["--outbound"], input.as_bytes()).code, 75);
}

#[test]
fn garbage_input_gets_a_verdict() {
    let (_d, cfg) = config("");
    for input in [
        &b""[..],
        b"\0\0\0\xff\xfe",
        b"no header separator at all",
        b"From: alice@example.com\n\n\xff\xfe\0binary\r\r\n",
    ] {
        let r = test_mode(&cfg, &["--outbound"], input);
        assert!(r.code == 0, "{:?}: {}", input, r.stderr);
        assert!(r.stderr.contains("action="), "{}", r.stderr);
    }
}

#[test]
fn already_signed_mail_is_not_signed_again() {
    let (_d, cfg) = config("");
    let once = test_mode(&cfg, &["--outbound"], &data("plain.eml"));
    let twice = test_mode(&cfg, &["--outbound"], &once.stdout);
    assert_eq!(twice.code, 0);
    assert!(twice.stderr.contains("already S/MIME"), "{}", twice.stderr);
    openssl_verify(&twice.stdout).unwrap();
}

#[test]
fn oversized_message_gets_the_oversized_action() {
    let mut input = data("plain.eml");
    input.extend(std::iter::repeat_n(b'a', 5000));
    let (_d, cfg) = config("max_message_size = \"2K\"\n[actions]\noversized = \"tempfail\"\n");
    let r = test_mode(&cfg, &["--outbound"], &input);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(
        r.stderr.contains("larger than max_message_size"),
        "{}",
        r.stderr
    );
}
