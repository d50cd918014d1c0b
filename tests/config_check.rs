//! `--check-config` and start-up refusals: exit 78 with file, line and key.

mod common;
use common::*;
use std::process::Command;

fn check(cfg: &std::path::Path) -> (i32, String, String) {
    let out = run(Command::new(bin()).arg("--check-config").arg("-c").arg(cfg));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sample_config_is_valid() {
    let (code, out, err) = check(&project_dir().join("contrib/smime-milter.toml"));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn full_key_table_is_valid() {
    let d = tempdir();
    let cfg = write_config(
        d.path(),
        "socket = \"inet:8891@127.0.0.1\"",
        &pki().key_table(),
    );
    let (code, out, err) = check(&cfg);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("(5 signing keys)"), "{out}");
}

#[test]
fn unknown_key_is_reported_with_file_line_and_key() {
    let d = tempdir();
    let cfg = write_config(
        d.path(),
        "socket = \"unix:/tmp/x.sock\"\nlog_level = \"info\"\nsockte = \"oops\"",
        "",
    );
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 78);
    assert!(err.contains(&format!("{}:3:", cfg.display())), "{err}");
    assert!(err.contains("sockte"), "{err}");
}

#[test]
fn missing_file_is_reported_with_line_and_key() {
    let d = tempdir();
    let tables = "[[signing.key]]\nsender = \"a@example.com\"\ncertificate = \"/nonexistent/a.pem\"\nprivate_key = \"/nonexistent/a.key\"\n";
    let cfg = write_config(d.path(), "", tables);
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 78);
    assert!(
        err.contains(&format!("{}:4: key 'certificate'", cfg.display())),
        "{err}"
    );
    assert!(err.contains("/nonexistent/a.pem"), "{err}");
}

#[test]
fn missing_config_file_is_a_config_error() {
    let (code, _, err) = check(std::path::Path::new("/nonexistent/smime-milter.toml"));
    assert_eq!(code, 78);
    assert!(err.contains("/nonexistent/smime-milter.toml"), "{err}");
}

fn key_entry(cert: &str, key: &str, extra: &str) -> String {
    format!("[[signing.key]]\nsender = \"x@example.com\"\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n{extra}")
}

#[test]
fn private_key_readable_by_others_is_refused() {
    let d = tempdir();
    let key = d.path().join("alice.key");
    std::fs::copy(pki().path("alice.key"), &key).unwrap();
    set_mode(&key, 0o644);
    let cert = pki().path("alice.chain.pem");
    let cfg = write_config(
        d.path(),
        "",
        &key_entry(&cert.display().to_string(), &key.display().to_string(), ""),
    );
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 78);
    assert!(
        err.contains("private_key") && err.contains("mode 0644") && err.contains("chmod 600"),
        "{err}"
    );
    // Explicitly allowed:
    let cfg = write_config(
        d.path(),
        "allow_insecure_key_files = true",
        &key_entry(&cert.display().to_string(), &key.display().to_string(), ""),
    );
    assert_eq!(check(&cfg).0, 0);
}

#[test]
fn weak_and_mismatched_keys_are_refused() {
    let d = tempdir();
    let p = |n: &str| pki().path(n).display().to_string();
    let cfg = write_config(d.path(), "", &key_entry(&p("weak.crt"), &p("weak.key"), ""));
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 78);
    assert!(err.contains("1024 bits is too weak"), "{err}");

    let cfg = write_config(
        d.path(),
        "",
        &key_entry(&p("alice.chain.pem"), &p("dave.key"), ""),
    );
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 78);
    assert!(err.contains("does not match its private key"), "{err}");
}

#[test]
fn wrong_passphrase_is_reported_without_the_passphrase() {
    let d = tempdir();
    let pass = d.path().join("wrong.pass");
    std::fs::write(&pass, "not-the-passphrase\n").unwrap();
    set_mode(&pass, 0o600);
    let p = |n: &str| pki().path(n).display().to_string();
    let extra = format!("passphrase_file = \"{}\"\n", pass.display());
    let cfg = write_config(
        d.path(),
        "",
        &key_entry(&p("bob.chain.pem"), &p("bob.enc.key"), &extra),
    );
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 78);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(
        !err.contains("not-the-passphrase"),
        "the passphrase must never be printed: {err}"
    );

    let tables = format!(
        "[[signing.key]]\nsender = \"c@example.com\"\npkcs12 = \"{}\"\n{extra}",
        p("carol.p12")
    );
    let cfg = write_config(d.path(), "", &tables);
    let (code, _, err) = check(&cfg);
    assert_eq!(code, 78);
    assert!(
        err.contains("PKCS#12") && !err.contains("not-the-passphrase"),
        "{err}"
    );
}

#[test]
fn running_without_a_socket_is_a_config_error() {
    let d = tempdir();
    let cfg = write_config(d.path(), "", "");
    let out = run(Command::new(bin()).arg("-f").arg("-c").arg(&cfg));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no socket configured"));
}

#[test]
fn root_without_user_is_refused() {
    if !can_run_as_root() {
        return;
    }
    let d = tempdir();
    let sock = d.path().join("s.sock");
    let cfg = write_config(
        d.path(),
        &format!("socket = \"unix:{}\"", sock.display()),
        "",
    );
    let out = run(Command::new(bin()).arg("-f").arg("-c").arg(&cfg));
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to run as root"));
    assert!(!sock.exists(), "nothing was opened");
}

#[test]
fn bad_socket_on_the_command_line_is_a_config_error() {
    let d = tempdir();
    let cfg = write_config(d.path(), "", "");
    let out = run(Command::new(bin())
        .args(["-f", "--socket", "tcp:25", "-c"])
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn every_command_answers_help_on_stdout() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["test", "--help"],
        &["test", "--inbound", "-h"],
        &["certs", "--help"],
        &["certs", "-c", "/nonexistent.toml", "list", "--help"],
    ] {
        let out = run(Command::new(bin()).args(args));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("usage: smime-milter")
                && stdout.contains("smime-milter test")
                && stdout.contains("certs"),
            "{args:?}: {stdout}"
        );
        assert!(out.stderr.is_empty(), "{args:?}: nothing on stderr");
    }
}
