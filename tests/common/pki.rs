//! The test PKI, generated once per test binary by tests/pki/make-pki.sh,
//! and configuration files that use it.
#![allow(dead_code)]

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub struct Pki {
    pub dir: PathBuf,
}

static PKI: OnceLock<Pki> = OnceLock::new();

pub fn pki() -> &'static Pki {
    PKI.get_or_init(|| {
        let dir = tempdir().keep();
        let out = run(Command::new("bash")
            .arg(project_dir().join("tests/pki/make-pki.sh"))
            .arg(&dir));
        assert!(
            out.status.success(),
            "make-pki.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    })
}

impl Pki {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The key table most tests use: alice (RSA PEM), bob (EC, encrypted PEM),
    /// carol (PKCS#12), and example.org by domain.
    pub fn key_table(&self) -> String {
        let p = |n: &str| self.path(n).display().to_string();
        format!(
            r#"
[[signing.key]]
sender = "alice@example.com"
certificate = "{}"
private_key = "{}"

[[signing.key]]
sender = "bob@example.com"
certificate = "{}"
private_key = "{}"
passphrase_file = "{}"

[[signing.key]]
sender = "carol@example.com"
pkcs12 = "{}"
passphrase_file = "{}"

[[signing.key]]
sender = "dave@example.net"
certificate = "{}"
private_key = "{}"

[[signing.key]]
sender = "@example.org"
certificate = "{}"
private_key = "{}"
"#,
            p("alice.chain.pem"),
            p("alice.key"),
            p("bob.chain.pem"),
            p("bob.enc.key"),
            p("bob.pass"),
            p("carol.p12"),
            p("carol.pass"),
            p("dave.chain.pem"),
            p("dave.key"),
            p("org.chain.pem"),
            p("org.key"),
        )
    }
}

/// Writes a configuration file (top-level keys first, then tables).
pub fn write_config(dir: &Path, top: &str, tables: &str) -> PathBuf {
    let path = dir.join("smime-milter.toml");
    std::fs::write(&path, format!("{top}\n{tables}\n")).expect("write config");
    path
}

/// A directory with the certificates of these test PKI names, one
/// `NAME.pem` each: a local recipient certificate store.
pub fn cert_dir(names: &[&str]) -> tempfile::TempDir {
    let d = tempdir();
    for n in names {
        std::fs::copy(
            pki().path(&format!("{n}.crt")),
            d.path().join(format!("{n}.pem")),
        )
        .unwrap();
    }
    d
}
