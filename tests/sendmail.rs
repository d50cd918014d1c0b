//! End to end through Sendmail: its Debian build, unpacked by
//! contrib/dev-setup.sh (it cannot be installed beside Postfix), configured
//! from an .mc with INPUT_MAIL_FILTER pointing at smime-milter, relaying to
//! smtp-sink; what arrives must be signed and verify.

mod common;
use common::slapd;
use common::*;
use slapd::{test_ldif, Slapd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = "/var/cache/smime-milter-tests/sendmail/root";

struct Sendmail {
    dir: tempfile::TempDir,
    port: u16,
    sink: std::process::Child,
    capture: PathBuf,
}

impl Sendmail {
    fn start(milter_socket: &Path) -> Sendmail {
        Self::start_with(milter_socket, ", T=C:30s;S:5m;R:5m;E:10m")
    }

    /// `timeouts`: appended to the filter's equates; empty for Sendmail's
    /// defaults (S and R 10 s).
    fn start_with(milter_socket: &Path, timeouts: &str) -> Sendmail {
        let dir = tempdir();
        let d = dir.path();
        let queue = d.join("mqueue");
        std::fs::create_dir(&queue).unwrap();
        set_mode(&queue, 0o700);
        let capture = d.join("capture");
        std::fs::create_dir(&capture).unwrap();
        run(Command::new("chown").arg("postfix").arg(&capture));
        std::fs::write(d.join("aliases"), "postmaster: root\n").unwrap();
        std::fs::write(d.join("local-host-names"), "").unwrap();
        std::fs::write(d.join("service.switch"), "hosts files\n").unwrap();

        let sink_port = free_port();
        let sink = spawn_sink(&capture, sink_port, 16);
        let port = free_port();
        let cf = format!("{ROOT}/usr/share/sendmail/cf");
        let mc = format!(
            "divert(-1)\ndivert(0)dnl
include(`{cf}/m4/cf.m4')dnl
VERSIONID(`smime-milter test')dnl
OSTYPE(`linux')dnl
define(`confDONT_BLAME_SENDMAIL', `GroupWritableDirPathSafe,TrustStickyBit,GroupReadableKeyFile')dnl
define(`QUEUE_DIR', `{d}/mqueue')dnl
define(`confPID_FILE', `{d}/sendmail.pid')dnl
define(`STATUS_FILE', `{d}/sendmail.st')dnl
define(`ALIAS_FILE', `{d}/aliases')dnl
define(`confCW_FILE', `-o {d}/local-host-names')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/service.switch')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confHOST_STATUS_DIRECTORY', `')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
FEATURE(`promiscuous_relay')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`nocanonify')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Port={port}, Addr=127.0.0.1, Name=MTA')dnl
INPUT_MAIL_FILTER(`smime-milter', `S=local:{sock}, F=T{timeouts}')dnl
MAILER(`smtp')dnl
LOCAL_NET_CONFIG
R$* < @ $* > $*\t\t$#esmtp $@ [127.0.0.1] $: $1 < @ $2 > $3
",
            d = d.display(),
            sock = milter_socket.display()
        );
        let cf_path = d.join("sendmail.cf");
        let out = run(Command::new("m4").arg("-").stdin(stdin_of(mc.as_bytes())));
        assert!(
            out.status.success(),
            "m4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&cf_path, &out.stdout).unwrap();
        // Sendmail sleeps a minute when it cannot qualify the host name: run
        // it in its own mount and UTS namespaces, named mta.example.test,
        // with a hosts file that knows that name.
        std::fs::write(
            d.join("hosts"),
            "127.0.0.1 mta.example.test mta localhost\n",
        )
        .unwrap();
        let script = format!(
            "mount --bind {hosts} /etc/hosts && hostname mta.example.test && exec {ROOT}/usr/libexec/sendmail/sendmail -C {cf} -bd -q30m",
            hosts = d.join("hosts").display(),
            cf = cf_path.display()
        );
        let out = run(Command::new("unshare").args(["--mount", "--uts", "sh", "-c", &script]));
        assert!(
            out.status.success(),
            "sendmail -bd: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let s = Sendmail {
            dir,
            port,
            sink,
            capture,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sendmail did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn delivered(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let files = capture_files(&self.capture);
            if files.len() >= n {
                std::thread::sleep(Duration::from_millis(200));
                return files.iter().map(|f| std::fs::read(f).unwrap()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages delivered by sendmail",
                files.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn stdin_of(data: &[u8]) -> Stdio {
    let f = tempfile::tempfile().unwrap();
    use std::io::{Seek, Write};
    let mut f = f;
    f.write_all(data).unwrap();
    f.rewind().unwrap();
    Stdio::from(f)
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        // The daemon forked: its pid is in the first line of the pid file.
        if let Ok(text) = std::fs::read_to_string(self.dir.path().join("sendmail.pid")) {
            if let Some(pid) = text
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            {
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let _ = self.sink.kill();
        let _ = self.sink.wait();
    }
}

/// Whether Sendmail can run here (under CI it must).
fn sendmail_runs() -> bool {
    let unpacked = Path::new(ROOT)
        .join("usr/libexec/sendmail/sendmail")
        .exists();
    can_run_as_root()
        && can_run(
            (!unpacked).then(|| {
                format!("Sendmail not unpacked at {ROOT} (run contrib/dev-setup.sh as root)")
            }),
        )
}

#[test]
fn outbound_mail_through_sendmail_arrives_signed() {
    if !sendmail_runs() {
        return;
    }
    let milter = Milter::start("", &pki().key_table());
    let sendmail = Sendmail::start(&milter.socket_path);
    let names = ["plain.eml", "utf8-8bit.eml"];
    for name in names {
        let msg = std::fs::read(project_dir().join("tests/data").join(name)).unwrap();
        let reply = smtp_send(
            sendmail.port,
            "alice@example.com",
            &["bob@example.net"],
            &msg,
        );
        assert!(
            reply.starts_with("250"),
            "{name}: {reply}\n{}",
            milter.log()
        );
    }
    let delivered = sendmail.delivered(names.len());
    for (i, name) in names.iter().enumerate() {
        let original = std::fs::read(project_dir().join("tests/data").join(name)).unwrap();
        let msg = delivered.iter().find(|m| {
            let s = String::from_utf8_lossy(m);
            let subject = |t: &str| {
                t.lines()
                    .find(|l| l.starts_with("Subject:"))
                    .map(str::to_string)
            };
            subject(&s) == subject(&String::from_utf8_lossy(&original))
        });
        let msg = msg.unwrap_or_else(|| panic!("{name} ({i}) not delivered"));
        assert!(
            String::from_utf8_lossy(msg).contains("multipart/signed"),
            "{name}"
        );
        let content = openssl_verify(msg).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(mime_leaves(&content), mime_leaves(&original), "{name}");
    }
    // Sendmail's queue ids on the milter's summary lines.
    let log = milter.wait_log("action=signed");
    assert!(
        log.lines()
            .filter(|l| l.contains("outbound action=signed"))
            .count()
            >= 2,
        "{log}"
    );
}

/// Sendmail with its default milter timeouts (10 s for a reply) and a
/// directory server that accepts connections and never answers (slapd
/// stopped): behind it a working one, the message arrives encrypted; alone,
/// it is deferred by our own answer within the budget, never by a timeout.
#[test]
fn a_silent_directory_meets_no_sendmail_milter_timeout() {
    if !sendmail_runs() {
        return;
    }
    let silent = Slapd::start(&test_ldif());
    let ldap = Slapd::start(&test_ldif());
    silent.pause();
    let tables =
        |servers: &[&Slapd]| slapd::required_encryption_tables(servers, "search_timeout = \"4s\"");
    let msg = b"From: Zed <zed@unsigned.example>\r\nTo: carol@example.com\r\n\
        Subject: silent directory\r\n\r\nsecret words\r\n";

    let milter = Milter::start("", &tables(&[&silent, &ldap]));
    let sendmail = Sendmail::start_with(&milter.socket_path, "");
    let reply = smtp_send(
        sendmail.port,
        "zed@unsigned.example",
        &["carol@example.com", "alice@example.com"],
        msg,
    );
    assert!(reply.starts_with("250"), "{reply}\n{}", milter.log());
    let delivered = sendmail.delivered(1);
    let text = String::from_utf8_lossy(&delivered[0]);
    assert!(text.contains("smime-type=enveloped-data"), "{text}");
    assert!(!text.contains("secret words"));
    drop(sendmail);

    let milter = Milter::start("", &tables(&[&silent]));
    let sendmail = Sendmail::start_with(&milter.socket_path, "");
    let started = Instant::now();
    let reply = smtp_send(
        sendmail.port,
        "zed@unsigned.example",
        &["bob@example.com"],
        msg,
    );
    assert!(
        reply.contains("4.7.0 S/MIME processing failed"),
        "deferred by the milter's answer, not a timeout: {reply}\n{}",
        milter.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    silent.unpause();
}
