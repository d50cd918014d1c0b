//! A SoftHSM2 token for tests and benchmarks.
#![allow(dead_code)]

use super::{is_root, pki, run, tempdir};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PIN: &str = "4711-token-pin";
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token "smime" with alice's RSA key (and certificate) and bob's
/// EC key, in a directory of its own.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
}

impl SoftHsm {
    pub fn new() -> SoftHsm {
        let dir = tempdir();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let h = SoftHsm { dir };
        // The milter opens the token as root and then runs as `nobody`;
        // SoftHSM keeps reading its token files, which must be that user's.
        let own = |h: &SoftHsm| {
            if is_root() {
                let _ = run(Command::new("chown")
                    .args(["-R", "nobody"])
                    .arg(h.dir.path()));
            }
        };
        h.util(&[
            "--init-token",
            "--free",
            "--label",
            "smime",
            "--pin",
            PIN,
            "--so-pin",
            "so-pin-1",
        ]);
        for (name, label, id) in [("alice", "alice-rsa", "01"), ("bob", "bob-ec", "02")] {
            let p8 = h.dir.path().join(format!("{name}.p8"));
            let out = run(Command::new("openssl")
                .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
                .arg(pki().path(&format!("{name}.key")))
                .arg("-out")
                .arg(&p8));
            assert!(out.status.success());
            h.util(&[
                "--import",
                p8.to_str().unwrap(),
                "--token",
                "smime",
                "--label",
                label,
                "--id",
                id,
                "--pin",
                PIN,
            ]);
            std::fs::remove_file(&p8).unwrap();
        }
        // alice's certificate in the token too (pkcs11-tool from OpenSC).
        let out = run(Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", h.conf())
            .args([
                "--module",
                MODULE,
                "--token-label",
                "smime",
                "--login",
                "--pin",
                PIN,
                "--write-object",
            ])
            .arg(pki().path("alice.crt"))
            .args(["--type", "cert", "--id", "01", "--label", "alice-rsa"]));
        assert!(
            out.status.success(),
            "pkcs11-tool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        own(&h);
        h
    }

    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    pub fn util(&self, args: &[&str]) {
        let out = run(Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", self.conf())
            .args(args));
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// The configuration tables: [pkcs11] and keys by URI.
    pub fn tables(&self, pin_file: &Path, extra: &str) -> String {
        format!(
            "[signing]\n{extra}\n[pkcs11]\nmodule = \"{MODULE}\"\npin_file = \"{}\"\n\
             [[signing.key]]\nsender = \"alice@example.com\"\ncertificate = \"{}\"\nprivate_key = \"pkcs11:token=smime;object=alice-rsa;type=private\"\n\
             [[signing.key]]\nsender = \"bob@example.com\"\ncertificate = \"{}\"\nprivate_key = \"pkcs11:token=smime;object=bob-ec;type=private\"\n",
            pin_file.display(),
            pki().path("alice.chain.pem").display(),
            pki().path("bob.chain.pem").display(),
        )
    }
}
