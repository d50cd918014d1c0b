//! Independent verifiers and makers of S/MIME: openssl, gpgsm, and a MIME
//! reader of our own so the checks do not reuse the milter's code.
#![allow(dead_code)]

use super::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// `openssl cms -verify` against the test root; returns the signed content.
pub fn openssl_verify(message: &[u8]) -> Result<Vec<u8>, String> {
    let d = tempdir();
    let input = d.path().join("msg.eml");
    let content = d.path().join("content");
    std::fs::write(&input, message).unwrap();
    let out = run(Command::new("openssl")
        .args([
            "cms",
            "-verify",
            "-inform",
            "SMIME",
            "-purpose",
            "smimesign",
            "-in",
        ])
        .arg(&input)
        .arg("-CAfile")
        .arg(pki().path("root.crt"))
        .arg("-out")
        .arg(&content));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(std::fs::read(&content).unwrap())
}

/// A GnuPG home that trusts the test root, without CRL checks (no dirmngr).
pub struct Gpgsm {
    home: tempfile::TempDir,
}

impl Gpgsm {
    pub fn new() -> Gpgsm {
        let home = tempfile::Builder::new().prefix("gpgsm.").tempdir().unwrap();
        set_mode(home.path(), 0o700);
        std::fs::write(
            home.path().join("gpgsm.conf"),
            "disable-crl-checks\ndisable-policy-checks\n",
        )
        .unwrap();
        std::fs::write(home.path().join("gpg-agent.conf"), "allow-mark-trusted\n").unwrap();
        let fpr = run(Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(pki().path("root.crt")));
        let fpr = String::from_utf8_lossy(&fpr.stdout);
        let fpr = fpr.trim().rsplit('=').next().unwrap().to_string();
        std::fs::write(
            home.path().join("trustlist.txt"),
            format!("{fpr} S relax\n"),
        )
        .unwrap();
        let g = Gpgsm { home };
        for cert in ["root.crt", "inter.crt"] {
            let out = g
                .cmd()
                .arg("--import")
                .arg(pki().path(cert))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "gpgsm --import: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        g
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("gpgsm");
        c.env("GNUPGHOME", self.home.path())
            .args(["--batch", "--status-fd", "1"]);
        c
    }

    /// gpgsm reading passphrases from its standard input.
    fn loopback(&self) -> Command {
        let mut c = self.cmd();
        c.args(["--pinentry-mode", "loopback", "--passphrase-fd", "0"]);
        c
    }

    /// Stops this home's GnuPG daemons (`gpg-agent`, or `all`).
    fn kill(&self, which: &str) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", which])
            .output();
    }

    /// A home holding one test PKI key (RSA), to decrypt as that recipient;
    /// checked by a round trip, since GnuPG 2.2 now and then stores an
    /// imported key under a passphrase that went astray.
    pub fn with_key(name: &str) -> Gpgsm {
        for _ in 0..3 {
            let g = Gpgsm::new();
            g.import_key(name);
            if g.decrypt(&g.encrypt_to(name, b"probe\n")).as_deref() == Ok(b"probe\n") {
                return g;
            }
        }
        panic!("gpgsm cannot decrypt with the imported key of {name}");
    }

    /// Imports a test PKI key (3DES PKCS#12: GnuPG 2.2 cannot read OpenSSL
    /// 3's AES-protected files), protected in the agent by "test".
    ///
    /// GnuPG 2.2 derives a wrong 3DES key from about one PKCS#12 salt in 128
    /// (`string_to_key` in sm/minip12.c: `gcry_mpi_print` drops a leading
    /// zero byte of the updated 64-byte block), and then fails on that file
    /// with every passphrase. OpenSSL salts the certificate and key bags at
    /// random, so about 1.5% of its files never import: each try makes a
    /// freshly salted file, and a fresh agent (gpgsm asks twice, the file's
    /// passphrase then the agent's for the key, and the agent caches what it
    /// was given).
    pub fn import_key(&self, name: &str) {
        const TRIES: usize = 20;
        let mut errors: Vec<(String, Vec<usize>)> = Vec::new();
        for n in 1..=TRIES {
            let p12 = self.export_pkcs12(name);
            let mut c = self.loopback();
            c.arg("--import").arg(&p12);
            let out = pipe(c, b"test\ntest\n");
            if out.status.success() {
                return;
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            match errors.iter_mut().find(|(e, _)| *e == err) {
                Some((_, tries)) => tries.push(n),
                None => errors.push((err, vec![n])),
            }
            self.kill("gpg-agent");
            std::thread::sleep(Duration::from_millis(200));
        }
        let errors: Vec<String> = errors
            .iter()
            .map(|(e, tries)| format!("tries {tries:?}:\n{e}"))
            .collect();
        panic!(
            "gpgsm --import {name}: failed with {TRIES} freshly salted PKCS#12 files\n{}",
            errors.join("\n")
        );
    }

    /// Writes a test PKI key and certificate as a newly salted 3DES PKCS#12
    /// file protected by "test", in this home; returns its path.
    fn export_pkcs12(&self, name: &str) -> PathBuf {
        let p12 = self.home.path().join(format!("{name}.p12"));
        let out = run(Command::new("openssl")
            .args([
                "pkcs12",
                "-export",
                "-passout",
                "pass:test",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
                "-inkey",
            ])
            .arg(pki().path(&format!("{name}.key")))
            .arg("-in")
            .arg(pki().path(&format!("{name}.crt")))
            .arg("-out")
            .arg(&p12));
        assert!(
            out.status.success(),
            "pkcs12 export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p12
    }

    /// Encrypts `data` to a test PKI certificate (DER EnvelopedData).
    pub fn encrypt_to(&self, name: &str, data: &[u8]) -> Vec<u8> {
        let out = self
            .cmd()
            .arg("--import")
            .arg(pki().path(&format!("{name}.crt")))
            .output()
            .unwrap();
        assert!(out.status.success(), "gpgsm --import {name}.crt");
        let input = self.home.path().join("plain.in");
        let output = self.home.path().join("enc.out");
        let _ = std::fs::remove_file(&output);
        std::fs::write(&input, data).unwrap();
        let addr = super_address(name);
        let out = self
            .cmd()
            .args(["--encrypt", "-r", &addr, "--output"])
            .arg(&output)
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "gpgsm --encrypt: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&output).unwrap()
    }

    /// Decrypts an EnvelopedData (DER) with an imported key.
    pub fn decrypt(&self, der: &[u8]) -> Result<Vec<u8>, String> {
        let input = self.home.path().join("enc.p7m");
        let output = self.home.path().join("plain");
        let _ = std::fs::remove_file(&output);
        std::fs::write(&input, der).unwrap();
        let mut c = self.loopback();
        c.arg("--output").arg(&output).arg("--decrypt").arg(&input);
        let out = pipe(c, b"test\n");
        // gpgsm exits non-zero when it does not know the other recipients'
        // certificates; the status line says whether this one decrypted.
        let status = String::from_utf8_lossy(&out.stdout);
        if status.contains("[GNUPG:] DECRYPTION_OKAY") && !status.contains("DECRYPTION_FAILED") {
            Ok(std::fs::read(&output).unwrap_or_default())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Verifies a detached signature (DER) over `content`.
    pub fn verify_detached(&self, signature: &[u8], content: &[u8]) -> Result<String, String> {
        let sig = self.home.path().join("sig.p7s");
        let data = self.home.path().join("data");
        std::fs::write(&sig, signature).unwrap();
        std::fs::write(&data, content).unwrap();
        let out = self
            .cmd()
            .arg("--verify")
            .arg(&sig)
            .arg(&data)
            .output()
            .unwrap();
        good_signature(&out)
    }

    /// Verifies an opaque signature (DER with the content inside).
    pub fn verify_opaque(&self, der: &[u8]) -> Result<Vec<u8>, String> {
        let input = self.home.path().join("msg.p7m");
        let output = self.home.path().join("content");
        let _ = std::fs::remove_file(&output);
        std::fs::write(&input, der).unwrap();
        let out = self
            .cmd()
            .arg("--output")
            .arg(&output)
            .arg("--verify")
            .arg(&input)
            .output()
            .unwrap();
        good_signature(&out).map(|_| std::fs::read(&output).unwrap_or_default())
    }
}

/// gpgsm's status lines when it verified a good, fully trusted signature;
/// else what it said.
fn good_signature(out: &Output) -> Result<String, String> {
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && status.contains("[GNUPG:] GOODSIG") && status.contains("TRUST_FULLY")
    {
        Ok(status)
    } else {
        Err(format!(
            "{status}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for Gpgsm {
    fn drop(&mut self) {
        // The agent gpgsm started for this home.
        self.kill("all");
    }
}

/// The address in a test PKI certificate.
pub fn super_address(name: &str) -> String {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-email", "-in"])
        .arg(pki().path(&format!("{name}.crt"))));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Runs a command with `input` on its standard input.
pub fn pipe(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

/// `openssl cms -sign` of `entity` with a test PKI key, the intermediate
/// included; returns openssl's S/MIME output (the signed entity's headers
/// and body, to follow a message's own header fields).
pub fn openssl_sign(signer: &str, md: &str, entity: &[u8]) -> Vec<u8> {
    let d = tempdir();
    let path = d.path().join("entity");
    std::fs::write(&path, entity).unwrap();
    let out = run(Command::new("openssl")
        .args(["cms", "-sign", "-md", md, "-signer"])
        .arg(pki().path(&format!("{signer}.crt")))
        .arg("-inkey")
        .arg(pki().path(&format!("{signer}.key")))
        .arg("-certfile")
        .arg(pki().path("inter.crt"))
        .arg("-in")
        .arg(&path));
    assert!(
        out.status.success(),
        "openssl cms -sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `openssl cms -encrypt` of `data` to a test PKI certificate; returns DER.
pub fn openssl_encrypt(to: &str, data: &[u8], cipher: &str) -> Vec<u8> {
    openssl_encrypt_with(to, data, cipher, &[])
}

pub fn openssl_encrypt_with(to: &str, data: &[u8], cipher: &str, extra: &[&str]) -> Vec<u8> {
    let d = tempdir();
    std::fs::write(d.path().join("in"), data).unwrap();
    let out = run(Command::new("openssl")
        .args(["cms", "-encrypt", "-binary", "-outform", "DER", cipher])
        .args(extra)
        .arg("-in")
        .arg(d.path().join("in"))
        .arg(pki().path(&format!("{to}.crt"))));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A message whose whole body is this EnvelopedData.
/// `openssl cms -decrypt` with a test PKI key; returns the plaintext entity.
pub fn openssl_decrypt(message: &[u8], name: &str) -> Result<Vec<u8>, String> {
    let d = tempdir();
    let input = d.path().join("msg.eml");
    std::fs::write(&input, message).unwrap();
    let out = run(Command::new("openssl")
        .args(["cms", "-decrypt", "-inform", "SMIME", "-in"])
        .arg(&input)
        .arg("-inkey")
        .arg(pki().path(&format!("{name}.key")))
        .arg("-recip")
        .arg(pki().path(&format!("{name}.crt"))));
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The DER inside an application/pkcs7-mime message (base64 body).
pub fn pkcs7_mime_der(message: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(message).replace("\r\n", "\n");
    let body = &s[s.find("\n\n").expect("header end") + 2..];
    decode_base64(&body.split_whitespace().collect::<String>())
}

/// Splits a clear-signed message into (signed content, signature DER), with
/// a parser of its own so the check does not reuse the milter's code.
pub fn split_clear_signed(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let text = message.to_vec();
    let norm = String::from_utf8_lossy(&text).replace("\r\n", "\n");
    let lower = norm.to_ascii_lowercase();
    let at = lower.find("boundary=\"").expect("boundary parameter") + "boundary=\"".len();
    let boundary = &norm[at..at + norm[at..].find('"').unwrap()];
    let delim = format!("\n--{boundary}\n");
    let first = norm.find(&delim).expect("first delimiter") + delim.len();
    let second = first + norm[first..].find(&delim).expect("second delimiter");
    let content = norm[first..second].replace('\n', "\r\n");
    let sig_part = &norm[second + delim.len()..];
    let sig_body = &sig_part[sig_part.find("\n\n").unwrap() + 2..];
    let sig_b64: String = sig_body[..sig_body.find(&format!("\n--{boundary}--")).unwrap()]
        .split_whitespace()
        .collect();
    (content.into_bytes(), decode_base64(&sig_b64))
}

pub fn decode_base64(b64: &str) -> Vec<u8> {
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b64.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "base64 -d failed");
    out.stdout
}

/// The Subject its recipient reads: the outer one, or, when header
/// protection hid it (`[...]`, RFC 9788), the protected one, decrypted with
/// the first of these test keys that opens the message.
pub fn shown_subject(msg: &[u8], keys: &[&str]) -> String {
    let find = |m: &[u8]| {
        String::from_utf8_lossy(m)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let outer = find(msg);
    if outer != "[...]" {
        return outer;
    }
    keys.iter()
        .find_map(|k| openssl_decrypt(msg, k).ok())
        .map(|plain| find(&plain))
        .unwrap_or(outer)
}

/// The leaves of a MIME message as Python's email package decodes them: one
/// line per leaf, `type length sha256`. Line ends are normalised to LF: SMTP
/// turns them into CRLF on the way, and a re-encoded 8-bit part keeps those.
/// A Legacy Display Element (RFC 9788 §4.5, `hp-legacy-display="1"`) is
/// left out, as a reader with header protection hides it.
pub fn mime_leaves(message: &[u8]) -> String {
    let script = r#"
import sys, re, email, email.policy, hashlib
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.compat32)
for part in msg.walk():
    if part.is_multipart() or part.get_content_type() == 'application/pkcs7-signature':
        continue
    data = part.get_payload(decode=True) or b''
    data = data.replace(b'\r\n', b'\n')
    if part.get_param('hp-legacy-display') == '1':
        if part.get_content_type() == 'text/plain':
            data = data.split(b'\n\n', 1)[1]
        else:
            data = re.sub(rb'<div class="header-protection-legacy-display">.*?</div>\n?', b'', data, count=1, flags=re.S)
    print(part.get_content_type(), len(data), hashlib.sha256(data).hexdigest())
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdin = child.stdin.take().unwrap();
    let input = message.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An NSS certificate database for `cmsutil` (NSS is the S/MIME engine
/// inside Thunderbird): the test root trusted, and the named users' keys.
pub struct Nss {
    dir: tempfile::TempDir,
}

impl Nss {
    pub fn with_keys(names: &[&str]) -> Nss {
        let dir = tempdir();
        let db = format!("sql:{}", dir.path().display());
        let ok = |out: Output, what: &str| {
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        };
        ok(
            run(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"])),
            "certutil -N",
        );
        ok(
            run(Command::new("certutil")
                .args(["-A", "-d", &db, "-n", "root", "-t", "C,C,C", "-i"])
                .arg(pki().path("root.crt"))),
            "certutil -A",
        );
        for name in names {
            let p12 = dir.path().join(format!("{name}.p12"));
            ok(
                run(Command::new("openssl")
                    .args(["pkcs12", "-export", "-passout", "pass:x", "-name", name])
                    .arg("-inkey")
                    .arg(pki().path(&format!("{name}.key")))
                    .arg("-in")
                    .arg(pki().path(&format!("{name}.crt")))
                    .arg("-certfile")
                    .arg(pki().path("inter.crt"))
                    .arg("-out")
                    .arg(&p12)),
                "openssl pkcs12",
            );
            ok(
                run(Command::new("pk12util")
                    .args(["-d", &db, "-W", "x", "-i"])
                    .arg(&p12)),
                "pk12util",
            );
        }
        Nss { dir }
    }

    fn cmsutil(&self, der: &[u8], args: &[&str]) -> Output {
        let input = self.dir.path().join("in.der");
        std::fs::write(&input, der).unwrap();
        run(Command::new("cmsutil")
            .args(["-D", "-p", "", "-d"])
            .arg(format!("sql:{}", self.dir.path().display()))
            .arg("-i")
            .arg(&input)
            .args(args))
    }

    /// Verifies a SignedData (with its detached content, if any): Ok when
    /// every signer's status is GoodSignature.
    pub fn verify(&self, der: &[u8], detached: Option<&[u8]>) -> Result<(), String> {
        let content = self.dir.path().join("content");
        let mut args = vec!["-h", "2", "-n"];
        if let Some(c) = detached {
            std::fs::write(&content, c).unwrap();
            args.extend(["-c", content.to_str().unwrap()]);
        }
        let out = self.cmsutil(der, &args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let statuses: Vec<&str> = text
            .split(';')
            .filter_map(|f| f.trim().split_once(".status="))
            .map(|(_, s)| s)
            .collect();
        if out.status.success()
            && !statuses.is_empty()
            && statuses.iter().all(|s| *s == "GoodSignature")
        {
            Ok(())
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Decrypts an EnvelopedData with a key in the database.
    pub fn decrypt(&self, der: &[u8]) -> Result<Vec<u8>, String> {
        let out = self.cmsutil(der, &[]);
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// `openssl cms -cmsout -print` of a DER ContentInfo: every field by name.
pub fn cms_print(der: &[u8]) -> String {
    let d = tempdir();
    let input = d.path().join("in.der");
    std::fs::write(&input, der).unwrap();
    let out = run(Command::new("openssl")
        .args(["cms", "-cmsout", "-print", "-inform", "DER", "-in"])
        .arg(&input));
    assert!(
        out.status.success(),
        "openssl cms -cmsout -print: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
