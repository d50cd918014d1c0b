//! A throwaway Postfix on 127.0.0.1 relaying to smtp-sink, and an SMTP
//! client to send through it.
#![allow(dead_code)]

use super::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// smtp-sink on 127.0.0.1:`port`, keeping each message as a file in
/// `capture` (owned by postfix), with up to `connections` at once.
pub fn spawn_sink(capture: &Path, port: u16, connections: u32) -> Child {
    Command::new("smtp-sink")
        .args(["-c", "-u", "postfix", "-d"])
        .arg(format!("{}/%Y%m%d%H%M%S.", capture.display()))
        .arg(format!("127.0.0.1:{port}"))
        .arg(connections.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink")
}

/// The messages a sink has written to `dir` so far, oldest first (their
/// names start with the time).
pub fn capture_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

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

    /// `start`, with more main.cf lines (e.g. shorter milter timeouts).
    pub fn start_extra(milter: &str, extra_cf: &str) -> Postfix {
        let milter_cf = format!(
            "smtpd_milters = {milter}\nnon_smtpd_milters =\nmilter_default_action = tempfail\nmilter_protocol = 6\n{extra_cf}\n"
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
        let sink = spawn_sink(&capture, sink_port, 64);
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
    /// Waits as long as deliveries go on: a large backlog after a load test
    /// takes a while, and only a minute without one more delivery fails.
    pub fn delivered(&self, n: usize) -> Vec<Vec<u8>> {
        let mut deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        loop {
            let files = capture_files(&self.capture);
            if files.len() > seen {
                seen = files.len();
                deadline = Instant::now() + Duration::from_secs(60);
            }
            if files.len() >= n {
                // smtp-sink writes the file while the message arrives.
                std::thread::sleep(Duration::from_millis(200));
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
            // Listing a directory of many thousand files costs: less often.
            std::thread::sleep(Duration::from_millis(if n > 1000 { 1000 } else { 50 }));
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
