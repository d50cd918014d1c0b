//! The packages: the .deb built from packaging/debian installs, its default
//! configuration checks, the installed binary runs as the packaged user and
//! signs a message, and a purge removes everything; the RPM spec parses.
//!
//! Installing a package is done only as root and where asked for (CI=true,
//! or SMIME_MILTER_PACKAGE_TEST=1): it changes the machine.

mod common;
#[path = "common/milter_client.rs"]
mod milter_client;

use common::*;
use milter_client::{split_message, MilterClient};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wanted() -> bool {
    let asked = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("SMIME_MILTER_PACKAGE_TEST").is_ok_and(|v| v == "1");
    if !is_root() || !asked {
        eprintln!(
            "package test: runs as root with CI=true or SMIME_MILTER_PACKAGE_TEST=1; skipping"
        );
        return false;
    }
    true
}

#[test]
fn rpm_spec_parses() {
    let out = run(Command::new("rpmspec")
        .arg("-P")
        .arg(project_dir().join("packaging/rpm/smime-milter.spec")));
    assert!(
        out.status.success(),
        "rpmspec -P: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec = String::from_utf8_lossy(&out.stdout);
    assert!(
        spec.contains("%{_sbindir}/smime-milter") || spec.contains("/usr/sbin/smime-milter"),
        "{spec}"
    );
}

fn dpkg(args: &[&str]) -> String {
    let out = run(Command::new("dpkg")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(args));
    assert!(
        out.status.success(),
        "dpkg {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debian_package_installs_runs_signs_and_purges() {
    if !wanted() {
        return;
    }
    let debs = tempdir();
    let out = run(Command::new("bash")
        .arg(project_dir().join("packaging/build-deb.sh"))
        .arg(debs.path()));
    assert!(
        out.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(debs.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("smime-milter_")
        })
        .expect("a .deb");
    dpkg(&["-i", deb.to_str().unwrap()]);
    let installed = Purge;

    // What the package installed.
    let files = dpkg(&["-L", "smime-milter"]);
    for f in [
        "/usr/sbin/smime-milter",
        "/etc/smime-milter/smime-milter.toml",
        "/lib/systemd/system/smime-milter.service",
        "/usr/share/man/man8/smime-milter.8.gz",
        "/usr/share/man/man5/smime-milter.toml.5.gz",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not installed:\n{files}");
    }
    let conffiles =
        std::fs::read_to_string("/var/lib/dpkg/info/smime-milter.conffiles").unwrap_or_default();
    assert!(
        conffiles.contains("/etc/smime-milter/smime-milter.toml"),
        "the configuration is a conffile"
    );
    assert!(
        run(Command::new("getent").args(["passwd", "smime-milter"]))
            .status
            .success(),
        "system user created"
    );

    // The packaged default configuration is valid.
    let out = run(Command::new("/usr/sbin/smime-milter").args([
        "--check-config",
        "-c",
        "/etc/smime-milter/smime-milter.toml",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The installed binary, started as root, runs as the packaged user and
    // signs: the packaged configuration plus a key the user owns.
    let keys = Path::new("/etc/smime-milter/test-keys");
    std::fs::create_dir_all(keys).unwrap();
    std::fs::copy(pki().path("alice.chain.pem"), keys.join("alice.pem")).unwrap();
    std::fs::copy(pki().path("alice.key"), keys.join("alice.key")).unwrap();
    run(Command::new("chown")
        .args(["-R", "smime-milter:smime-milter"])
        .arg(keys));
    set_mode(&keys.join("alice.key"), 0o600);
    std::fs::create_dir_all("/run/smime-milter").unwrap();
    run(Command::new("chown").args(["smime-milter:smime-milter", "/run/smime-milter"]));
    let base = std::fs::read_to_string("/etc/smime-milter/smime-milter.toml").unwrap();
    let cfg = base.replacen(
        "[signing]",
        &format!(
            "[signing]\n[[signing.key]]\nsender = \"alice@example.com\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            keys.join("alice.pem").display(),
            keys.join("alice.key").display()
        ),
        1,
    );
    let cfg_path = keys.join("test.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = keys.join("milter.log");
    let mut child = Command::new("/usr/sbin/smime-milter")
        .args(["-f", "-c"])
        .arg(&cfg_path)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" listening on ")
    {
        assert!(
            Instant::now() < deadline,
            "installed milter did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let pw = String::from_utf8_lossy(&run(Command::new("id").args(["-u", "smime-milter"])).stdout)
        .trim()
        .to_string();
    assert!(
        uid_line.split_whitespace().nth(1) == Some(pw.as_str()),
        "runs as smime-milter: {uid_line}"
    );
    assert!(
        Path::new("/run/smime-milter/smime-milter.pid").exists(),
        "PID file"
    );

    let mut c = MilterClient::connect(Path::new("/run/smime-milter/smime-milter.sock")).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) = split_message(
        b"From: alice@example.com\r\nSubject: packaged\r\n\r\nsigned by the installed package\r\n",
    );
    let r = c
        .message(
            "PKG1",
            None,
            "alice@example.com",
            &["x@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    c.quit();
    let content =
        openssl_verify(&r.apply(&headers, &body)).expect("signed by the installed milter");
    assert!(String::from_utf8_lossy(&content).contains("signed by the installed package"));
    stop_child(&mut child);
    std::fs::remove_dir_all(keys).unwrap();

    drop(installed);
    assert!(
        !Path::new("/usr/sbin/smime-milter").exists(),
        "binary removed"
    );
    assert!(
        !Path::new("/etc/smime-milter").exists(),
        "configuration purged"
    );
    assert!(!Path::new("/var/lib/smime-milter").exists(), "state purged");
    assert!(
        !run(Command::new("getent").args(["passwd", "smime-milter"]))
            .status
            .success(),
        "user removed"
    );
}

/// Purges the package when the test ends, passed or not.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", "smime-milter"])
            .output();
    }
}
