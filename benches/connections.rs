//! Inbound at connection scale: a real Postfix (smtpd process limit raised
//! as a postmaster would) with smime-milter verifying, 2,000 S/MIME-signed
//! 4 KB messages from 20 sessions, first alone, then while 1,000 more SMTP
//! sessions are held open (each an smtpd process with its own milter
//! connection). Prints throughput, the milter's CPU per message, its
//! largest RSS and thread count, and what was lost or deferred. Asserts
//! nothing about speed; needs root (it starts a Postfix master).
//!
//!   sudo cargo bench --bench connections

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES: usize = 2000;
const SESSIONS: usize = 20;
const IDLE: usize = 1000;

/// A 4 KB message as the Postfix harness shapes it, signed by alice
/// through the test mode; LF line ends for smtp-source.
fn signed_message(dir: &std::path::Path) -> std::path::PathBuf {
    let mut plain = String::from(
        "From: Alice <alice@example.com>\r\nTo: rcpt@example.net\r\nSubject: inbound bench\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
    );
    while plain.len() < 4096 {
        plain.push_str(
            "The quick brown fox jumps over the lazy dog; pack my box with five dozen.\r\n",
        );
    }
    let cfg = write_config(dir, "", &pki().key_table());
    let r = test_mode(&cfg, &["--outbound"], plain.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let path = dir.join("signed.eml");
    let lf = String::from_utf8(r.stdout).unwrap().replace("\r\n", "\n");
    std::fs::write(&path, lf).unwrap();
    path
}

/// An SMTP session opened and greeted, then left idle.
fn idle_session(port: u16) -> Option<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    if !line.starts_with("220") {
        return None;
    }
    (&s).write_all(b"EHLO idle.example.net\r\n").ok()?;
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        if line.starts_with("250 ") {
            return Some(s);
        }
        if !line.starts_with("250-") {
            return None;
        }
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

struct Round {
    rate: f64,
    cpu_ms: f64,
    max_rss_mb: f64,
    max_threads: usize,
    lost: usize,
    deferred: usize,
}

fn load(postfix: &Postfix, milter_pid: u32, message: &std::path::Path, before: usize) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut rss, mut threads) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                rss = rss.max(proc_status_kb(milter_pid, "VmRSS:"));
                threads = threads.max(proc_status_kb(milter_pid, "Threads:"));
                std::thread::sleep(Duration::from_millis(50));
            }
            (rss, threads)
        })
    };
    let deferred0 = postfix.maillog().matches("status=deferred").count();
    let cpu0 = cpu_ticks(milter_pid);
    let t0 = Instant::now();
    let out = run(Command::new("smtp-source")
        .args([
            "-c",
            "-s",
            &SESSIONS.to_string(),
            "-m",
            &MESSAGES.to_string(),
        ])
        .args(["-M", "bench-client.example.net", "-f", "sender@example.net"])
        .args(["-t", "rcpt@example.net", "-F"])
        .arg(message)
        .arg(format!("127.0.0.1:{}", postfix.smtpd_port)));
    assert!(
        out.status.success(),
        "smtp-source: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = before + MESSAGES;
    let mut last = (files_in(&postfix.capture), Instant::now());
    while last.0 < want && last.1.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
        let n = files_in(&postfix.capture);
        if n > last.0 {
            last = (n, Instant::now());
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(milter_pid) - cpu0) as f64 / 100.0;
    stop.store(true, Ordering::Relaxed);
    let (rss, threads) = sampler.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    Round {
        rate: (last.0 - before) as f64 / elapsed,
        cpu_ms: cpu * 1000.0 / MESSAGES as f64,
        max_rss_mb: rss as f64 / 1024.0,
        max_threads: threads,
        lost: want.saturating_sub(files_in(&postfix.capture)),
        deferred: postfix.maillog().matches("status=deferred").count() - deferred0,
    }
}

fn main() {
    if !is_root() {
        eprintln!("connections bench: needs root (a Postfix master); skipped");
        return;
    }
    // 1,000 sockets here, as many smtpd processes and milter connections.
    let want = 20_000;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max.max(want),
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
    let d = tempdir();
    let message = signed_message(d.path());
    let milter = Milter::start(
        "internal_hosts = [\"192.0.2.1/32\"]\n",
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n",
            pki().path("root.crt").display()
        ),
    );
    // As a postmaster would for 1,000 clients: enough smtpd processes, no
    // per-client cap (all come from 127.0.0.1 here).
    let postfix = Postfix::start_extra(
        &milter.spec(),
        "default_process_limit = 1200\nsmtpd_client_connection_count_limit = 0\n\
         smtpd_client_connection_rate_limit = 0\nmilter_connect_timeout = 30s\n",
    );
    let pid = milter.pid();
    println!(
        "inbound verification through Postfix, {MESSAGES} S/MIME-signed messages of {} bytes from {SESSIONS} sessions ({} cores)",
        std::fs::metadata(&message).unwrap().len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "milter at rest: RSS {:.1} MB, {} threads",
        proc_status_kb(pid, "VmRSS:") as f64 / 1024.0,
        proc_status_kb(pid, "Threads:")
    );
    // A warm-up round, then the two measured ones.
    let _ = load(&postfix, pid, &message, 0);
    let mut delivered = files_in(&postfix.capture);
    let alone = load(&postfix, pid, &message, delivered);
    delivered = files_in(&postfix.capture);

    let t0 = Instant::now();
    let idle: Vec<TcpStream> = (0..IDLE)
        .filter_map(|_| idle_session(postfix.smtpd_port))
        .collect();
    // Every smtpd has opened its milter connection at connect time.
    let deadline = Instant::now() + Duration::from_secs(60);
    while proc_status_kb(pid, "Threads:") < IDLE && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{} idle sessions open in {:.1} s: milter RSS {:.1} MB, {} threads",
        idle.len(),
        t0.elapsed().as_secs_f64(),
        proc_status_kb(pid, "VmRSS:") as f64 / 1024.0,
        proc_status_kb(pid, "Threads:")
    );
    let busy = load(&postfix, pid, &message, delivered);
    for s in &idle {
        let _ = (&*s).write_all(b"QUIT\r\n");
    }
    drop(idle);

    println!();
    println!("| | messages/s | milter CPU per message | milter RSS (max) | milter threads (max) | lost | deferred |");
    println!("|---|---|---|---|---|---|---|");
    for (label, r) in [("alone", &alone), ("beside 1,000 idle sessions", &busy)] {
        println!(
            "| {label} | {:.0} | {:.3} ms | {:.1} MB | {} | {} | {} |",
            r.rate, r.cpu_ms, r.max_rss_mb, r.max_threads, r.lost, r.deferred
        );
    }
}
