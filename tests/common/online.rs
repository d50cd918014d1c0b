//! A CA on 127.0.0.1 for the online checks (OCSP, CRLs, AIA): made per
//! use by tests/pki/make-online-pki.sh, served by tests/pki/online-server.py,
//! which logs every request so that callers count what was fetched.
#![allow(dead_code)]

use super::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// One CA with its web server, for one test.
pub struct Ca {
    pub dir: tempfile::TempDir,
    pub server: Child,
    /// Takes connections (the kernel's backlog) and never answers.
    _silent: std::net::TcpListener,
    log: PathBuf,
}

impl Ca {
    pub fn start() -> Ca {
        let dir = tempdir();
        let port = free_port();
        let down = free_port();
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let script = project_dir().join("tests/pki/make-online-pki.sh");
        let st = Command::new("sh")
            .arg(script)
            .arg(dir.path())
            .arg(port.to_string())
            .arg(down.to_string())
            .arg(silent.local_addr().unwrap().port().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "make-online-pki.sh failed");
        let log = dir.path().join("server.log");
        let server = Command::new("/usr/bin/python3")
            .arg(project_dir().join("tests/pki/online-server.py"))
            .arg(port.to_string())
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("python3");
        assert!(wait_port(port, 10), "the CA's web server did not start");
        Ca {
            dir,
            server,
            _silent: silent,
            log,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Requests whose path starts with `prefix` ("GET /inter.der").
    pub fn requests(&self, prefix: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    pub fn all_requests(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// OCSP requests for one leaf (its URL path is /ocsp/<leaf>/).
    pub fn ocsp(&self, leaf: &str) -> usize {
        self.requests(&format!("GET /ocsp/{leaf}/")) + self.requests(&format!("POST /ocsp/{leaf}/"))
    }

    /// A message from `leaf`@example.org signed by `openssl cms`, with the
    /// intermediate in the signature or without it.
    pub fn signed(&self, leaf: &str, with_chain: bool) -> Vec<u8> {
        self.signed_text(leaf, with_chain, "Hello from the online test.\r\n")
    }

    /// The same with `text` as its text/plain body.
    pub fn signed_text(&self, leaf: &str, with_chain: bool, text: &str) -> Vec<u8> {
        let mut cmd = Command::new("openssl");
        cmd.args(["cms", "-sign", "-md", "sha256", "-signer"])
            .arg(self.path(&format!("{leaf}.crt")))
            .arg("-inkey")
            .arg(self.path(&format!("{leaf}.key")));
        if with_chain {
            cmd.arg("-certfile").arg(self.path("inter.crt"));
        }
        let entity = format!("Content-Type: text/plain\r\n\r\n{text}");
        let out = pipe(cmd, entity.as_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut m = format!(
            "From: {leaf} <{leaf}@example.org>\nTo: someone@example.net\nSubject: online\n"
        )
        .into_bytes();
        m.extend_from_slice(&out.stdout);
        // As an MTA passes it on: CRLF line ends.
        String::from_utf8(m)
            .unwrap()
            .replace("\r\n", "\n")
            .replace('\n', "\r\n")
            .into_bytes()
    }

    /// `openssl ca -revoke` of a leaf, in the index the responder and the
    /// next CRL read.
    pub fn revoke(&self, leaf: &str) {
        let st = Command::new("openssl")
            .args(["ca", "-config"])
            .arg(self.path("inter/ca.cnf"))
            .arg("-cert")
            .arg(self.path("inter.crt"))
            .arg("-keyfile")
            .arg(self.path("inter.key"))
            .arg("-revoke")
            .arg(self.path(&format!("{leaf}.crt")))
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl ca -revoke {leaf}");
    }

    /// `openssl ca -gencrl` again, due in `secs` (None: a day).
    pub fn new_crl(&self, secs: Option<u64>) {
        let mut cmd = Command::new(self.path("gencrl"));
        if let Some(s) = secs {
            cmd.arg(s.to_string());
        }
        assert!(cmd.status().unwrap().success());
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        stop_child(&mut self.server);
    }
}
