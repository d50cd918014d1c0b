//! Shared helpers for the integration tests: the test PKI, the milter binary
//! as a process, a throwaway Postfix instance, and independent verifiers
//! (openssl, gpgsm, Python's email package).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smime-milter"))
}

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a test can run here. Where it must run (CI, CI=true) a test
/// that cannot fails instead of passing as if it had run; elsewhere it
/// says why it skips.
pub fn can_run(why_not: Option<String>) -> bool {
    let Some(why) = why_not else {
        return true;
    };
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CI must run this test, but: {why}"
    );
    eprintln!("{why}: skipping");
    false
}

/// `can_run` for a test that needs root (Postfix, Sendmail, the package).
pub fn can_run_as_root() -> bool {
    can_run((!is_root()).then(|| "not root: Postfix, Sendmail and packages need root".into()))
}

/// The interop corpus (../shared/interop/thunderbird), if this test can run.
pub fn interop_corpus() -> Option<PathBuf> {
    let dir = project_dir().join("../shared/interop/thunderbird");
    can_run(
        (!dir.join("MANIFEST.tsv").exists())
            .then(|| format!("interop corpus not found at {}", dir.display())),
    )
    .then_some(dir)
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A directory the MTA's unprivileged processes can traverse.
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("smime-milter-test.")
        .tempdir()
        .expect("tempdir");
    set_mode(d.path(), 0o755);
    d
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A `/proc/PID/status` field in kB, e.g. `VmHWM:` or `VmRSS:`.
pub fn proc_status_kb(pid: u32, key: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} for process {pid}"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

// ---------------------------------------------------------------------------
// Test PKI, generated once per test binary by tests/pki/make-pki.sh.

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

// ---------------------------------------------------------------------------
// The milter as a separate process.

pub struct Milter {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket_path: PathBuf,
    stderr: PathBuf,
    cfg: PathBuf,
    env: Vec<(String, PathBuf)>,
}

impl Milter {
    /// Starts `smime-milter -f` on a unix socket in a fresh directory.
    pub fn start(top: &str, tables: &str) -> Milter {
        Self::start_env(top, tables, &[])
    }

    /// The same, with extra environment variables for the milter (tests run
    /// in parallel threads, so none changes the test process's environment).
    pub fn start_env(top: &str, tables: &str, env: &[(&str, &Path)]) -> Milter {
        let dir = tempdir();
        let socket_path = dir.path().join("milter.sock");
        let user = if is_root() {
            "user = \"nobody\"\nsocket_mode = \"0666\"\n"
        } else {
            ""
        };
        let cfg = write_config(
            dir.path(),
            &format!("socket = \"unix:{}\"\n{user}{top}", socket_path.display()),
            tables,
        );
        let stderr = dir.path().join("milter.log");
        let env: Vec<(String, PathBuf)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect();
        let child = Self::spawn(&cfg, &env, &stderr);
        let mut m = Milter {
            child,
            dir,
            socket_path,
            stderr,
            cfg,
            env,
        };
        m.wait_listening(0);
        m
    }

    fn spawn(cfg: &Path, env: &[(String, PathBuf)], log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        Command::new(bin())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["-f", "-c"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn smime-milter")
    }

    /// Waits for the `nth` (0-based) "listening" line in the log.
    fn wait_listening(&mut self, nth: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // The socket file appears at bind(), before listen(): wait for the
        // line logged once the milter is listening.
        while self.log().matches(" listening on ").count() <= nth {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("smime-milter exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "smime-milter did not start listening: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no clean-up, sessions cut mid-message.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the milter again with the same configuration and socket, as
    /// a service manager would after a crash.
    pub fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "still running"
        );
        let n = self.log().matches(" listening on ").count();
        self.child = Self::spawn(&self.cfg, &self.env, &self.stderr);
        self.wait_listening(n);
    }

    pub fn spec(&self) -> String {
        format!("unix:{}", self.socket_path.display())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (log lines are written after the
    /// MTA has its answer).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, then SIGKILL if it has not exited after a while; always reaped.
pub fn stop_child(child: &mut Child) {
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Running the offline test mode.

pub struct TestRun {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

pub fn test_mode(cfg: &Path, args: &[&str], input: &[u8]) -> TestRun {
    test_mode_env(cfg, args, input, &[])
}

pub fn test_mode_env(cfg: &Path, args: &[&str], input: &[u8], env: &[(&str, &Path)]) -> TestRun {
    let mut cmd = Command::new(bin());
    cmd.envs(env.iter().map(|(k, v)| (*k, *v)))
        .arg("test")
        .arg("-c")
        .arg(cfg)
        .args(args);
    let out = pipe(cmd, input);
    TestRun {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------
// Independent verifiers.

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
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && status.contains("[GNUPG:] GOODSIG")
            && status.contains("TRUST_FULLY")
        {
            Ok(status)
        } else {
            Err(format!(
                "{status}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
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
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && status.contains("[GNUPG:] GOODSIG")
            && status.contains("TRUST_FULLY")
        {
            Ok(std::fs::read(&output).unwrap_or_default())
        } else {
            Err(format!(
                "{status}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
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

/// The leaves of a MIME message as Python's email package decodes them: one
/// line per leaf, `type length sha256`. Line ends are normalised to LF: SMTP
/// turns them into CRLF on the way, and a re-encoded 8-bit part keeps those.
pub fn mime_leaves(message: &[u8]) -> String {
    let script = r#"
import sys, email, email.policy, hashlib
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.compat32)
for part in msg.walk():
    if part.is_multipart() or part.get_content_type() == 'application/pkcs7-signature':
        continue
    data = part.get_payload(decode=True) or b''
    data = data.replace(b'\r\n', b'\n')
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

// ---------------------------------------------------------------------------
// A throwaway Postfix on 127.0.0.1 relaying to smtp-sink.

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_port(port: u16, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub struct Postfix {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub spool: PathBuf,
    pub capture: PathBuf,
    pub smtpd_port: u16,
    sink: Child,
    master_pid: Option<i32>,
}

impl Postfix {
    /// Starts Postfix with `smtpd_milters = milter` and
    /// `milter_default_action = tempfail`, relaying everything to a local
    /// smtp-sink that keeps each message in `capture`.
    pub fn start(milter: &str) -> Postfix {
        let milter_cf = format!(
            "smtpd_milters = {milter}\nnon_smtpd_milters =\nmilter_default_action = tempfail\nmilter_protocol = 6\n"
        );
        Self::start_with(&milter_cf, None)
    }

    /// Postfix as Debian ships it: the stock master.cf (smtpd, cleanup and
    /// the rest chrooted in the spool, prepared by Debian's own
    /// configure-instance.sh), smtpd on a free loopback port instead of 25,
    /// and `milter_cf` (e.g. postfix-sample/main.cf) appended to main.cf.
    pub fn start_debian_chroot(milter_cf: &str) -> Postfix {
        let stock = std::fs::read_to_string("/usr/share/postfix/master.cf.dist")
            .expect("Debian's stock master.cf");
        Self::start_with(milter_cf, Some(&stock))
    }

    /// `master` is a master.cf whose `smtp inet` service is moved to the
    /// chosen loopback port; `None`: the test layout, nothing chrooted.
    fn start_with(milter_cf: &str, master: Option<&str>) -> Postfix {
        assert!(is_root(), "a Postfix master must be started as root");
        let dir = tempdir();
        let conf = dir.path().join("conf");
        let spool = dir.path().join("spool");
        let data = dir.path().join("data");
        let capture = dir.path().join("capture");
        for d in [&conf, &spool, &data, &capture] {
            std::fs::create_dir_all(d).unwrap();
        }
        run(Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .arg(&capture));

        let sink_port = free_port();
        let sink = Command::new("smtp-sink")
            .args(["-c", "-u", "postfix", "-d"])
            .arg(format!("{}/%Y%m%d%H%M%S.", capture.display()))
            .arg(format!("127.0.0.1:{sink_port}"))
            .arg("64")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("smtp-sink");
        assert!(wait_port(sink_port, 10), "smtp-sink did not listen");

        let smtpd_port = free_port();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-smime-test
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = mta.example.com
mydomain = example.com
myorigin = $mydomain
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
relay_domains =
relayhost = [127.0.0.1]:{sink_port}
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
in_flow_delay = 0
{milter_cf}",
            spool = spool.display(),
            data = data.display(),
            dir = dir.path().display(),
        );
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"
        );
        let master_cf = match master {
            Some(stock) => stock
                .lines()
                .map(|l| match l.strip_prefix("smtp      inet") {
                    Some(rest) => format!("127.0.0.1:{smtpd_port} inet{rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect(),
            None => master_cf,
        };
        std::fs::write(conf.join("master.cf"), master_cf).unwrap();
        if master.is_some() {
            // Debian's own preparation of the chroot (etc files, libraries).
            let out = run(Command::new("sh")
                .arg("/usr/lib/postfix/configure-instance.sh")
                .env("MAIL_CONFIG", &conf));
            assert!(
                out.status.success(),
                "configure-instance.sh: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut pf = Postfix {
            dir,
            conf,
            spool,
            capture,
            smtpd_port,
            sink,
            master_pid: None,
        };
        let check = run(Command::new("postfix").arg("-c").arg(&pf.conf).arg("check"));
        assert!(
            check.status.success(),
            "postfix check: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let start = run(Command::new("postfix").arg("-c").arg(&pf.conf).arg("start"));
        assert!(
            start.status.success(),
            "postfix start: {}",
            String::from_utf8_lossy(&start.stderr)
        );
        pf.master_pid = std::fs::read_to_string(pf.spool.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        assert!(wait_port(smtpd_port, 20), "postfix smtpd did not listen");
        pf
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Sends one message over SMTP; returns the server's reply to the end of
    /// DATA (e.g. "250 2.0.0 Ok: queued as ...").
    pub fn send(&self, from: &str, to: &[&str], message: &[u8]) -> String {
        smtp_send(self.smtpd_port, from, to, message)
    }

    /// Sends from another loopback address (127.0.0.2, ...).
    pub fn send_from(
        &self,
        source: std::net::Ipv4Addr,
        from: &str,
        to: &[&str],
        message: &[u8],
    ) -> String {
        smtp_send_from(source, self.smtpd_port, from, to, message)
    }

    /// Waits until `n` messages have reached the sink; returns them without
    /// smtp-sink's own X-* lines.
    pub fn delivered(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&self.capture)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            if files.len() >= n {
                // smtp-sink writes the file while the message arrives.
                std::thread::sleep(Duration::from_millis(200));
                files.sort();
                return files
                    .iter()
                    .map(|f| strip_sink_headers(&std::fs::read(f).unwrap()))
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages delivered; maillog:\n{}",
                files.len(),
                self.maillog()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Messages still in the queue.
    pub fn queued(&self) -> usize {
        ["maildrop", "incoming", "active", "deferred", "hold"]
            .iter()
            .map(|q| count_files(&self.spool.join(q)))
            .sum()
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// smtp-sink -d prepends X-Client-Addr, X-Helo-Args, ... lines.
fn strip_sink_headers(raw: &[u8]) -> Vec<u8> {
    let mut rest = raw;
    loop {
        let line_end = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = &rest[..line_end];
        let is_sink = [&b"X-Client-"[..], b"X-Helo-", b"X-Mail-", b"X-Rcpt-"]
            .iter()
            .any(|p| line.starts_with(p));
        if !is_sink {
            return rest.to_vec();
        }
        rest = &rest[line_end..];
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
        if let Some(pid) = self.master_pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if unsafe { libc::kill(pid, 0) } == 0 {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.sink.kill();
        let _ = self.sink.wait();
    }
}

/// A minimal SMTP client: one message, dot-stuffed, CRLF line ends.
pub fn smtp_send(port: u16, from: &str, to: &[&str], message: &[u8]) -> String {
    smtp_send_via(
        TcpStream::connect(("127.0.0.1", port)).expect("connect smtpd"),
        from,
        to,
        message,
    )
}

/// The same from another loopback source address (Postfix then reports
/// that address to the milter, which decides the direction by it).
pub fn smtp_send_from(
    source: std::net::Ipv4Addr,
    port: u16,
    from: &str,
    to: &[&str],
    message: &[u8],
) -> String {
    use std::os::fd::FromRawFd;
    let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let local = sa(source, 0);
        let remote = sa(std::net::Ipv4Addr::LOCALHOST, port);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0,
            "bind {source}"
        );
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0,
            "connect smtpd"
        );
        TcpStream::from_raw_fd(fd)
    };
    smtp_send_via(stream, from, to, message)
}

fn smtp_send_via(stream: TcpStream, from: &str, to: &[&str], message: &[u8]) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let reply = |r: &mut BufReader<TcpStream>| -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all.trim_end().to_string();
            }
        }
    };
    let greeting = reply(&mut reader);
    assert!(greeting.starts_with("220"), "{greeting}");
    let cmd = |w: &mut TcpStream, r: &mut BufReader<TcpStream>, c: &str| -> String {
        w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        reply(r)
    };
    let ehlo = cmd(&mut w, &mut reader, "EHLO client.example.com");
    assert!(ehlo.starts_with("250"), "{ehlo}");
    let r = cmd(&mut w, &mut reader, &format!("MAIL FROM:<{from}>"));
    if !r.starts_with("250") {
        return r;
    }
    for t in to {
        let r = cmd(&mut w, &mut reader, &format!("RCPT TO:<{t}>"));
        if !r.starts_with("250") {
            return r;
        }
    }
    let r = cmd(&mut w, &mut reader, "DATA");
    if !r.starts_with("354") {
        return r;
    }
    let mut data = Vec::with_capacity(message.len() + 1024);
    let text = message;
    let mut start = 0;
    while start < text.len() {
        let end = text[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| start + i + 1);
        let mut line = &text[start..end];
        if line.ends_with(b"\n") {
            line = &line[..line.len() - 1];
        }
        if line.ends_with(b"\r") {
            line = &line[..line.len() - 1];
        }
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
        start = end;
    }
    data.extend_from_slice(b".\r\n");
    w.write_all(&data).unwrap();
    let r = reply(&mut reader);
    let _ = cmd(&mut w, &mut reader, "QUIT");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    r
}
