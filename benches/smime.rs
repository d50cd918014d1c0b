//! Signing, encryption and verification benchmark: prints figures, asserts
//! nothing about speed.
//!
//!   cargo bench --bench smime
//!
//! 1. In process: canonicalisation, `outbound::process_message` and
//!    `inbound::verify_message` (the work the milter does at end of message)
//!    for a 4 KB and a 1 MB message.
//! 2. Through the milter protocol: the release binary on a unix socket, a
//!    client playing Postfix (one connection per message, as Postfix does by
//!    default), with the milter's own CPU time per message.
//! 3. Recipient certificates from slapd: 1000 messages, each to another
//!    recipient, all cache misses, then the same with the cache warm:
//!    messages per second and the 99th percentile of a message's time.
//! 4. Online checks: a 4 KB message whose signer names an OCSP responder
//!    (tests/common/online.rs's CA on 127.0.0.1), verified with
//!    `[online] revocation = "off"` and with the OCSP answer cached,
//!    interleaved rounds; and the chain's status from the cache alone.
//! 6. Header protection: in process, 4 KB signed (P-256) and signed and
//!    encrypted with `[header_protection]` on (the default) and off,
//!    interleaved rounds, for a message with a usual header section.
//! 5. Metrics: two release binaries, `[metrics]` off and on, signing 4 KB
//!    messages through the protocol in interleaved rounds: the milter CPU
//!    per message of each, and the ratio.

#[path = "../tests/common/mod.rs"]
mod common;
use common::{milter_client, online, slapd, softhsm};

use milter_client::{split_message, MilterClient};
use smime_milter::inbound;
use smime_milter::mime::{self, Limits};
use smime_milter::outbound::{self, Plan};
use smime_milter::outcome::apply_header_ops;
use smime_milter::runtime::Runtime;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: bench\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog; pack my box with five dozen.\r\n",
        );
    }
    m
}

/// The median of a few rounds (the mean of the middle two when even).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn time_per_op(min_time: Duration, mut f: impl FnMut()) -> (f64, u64) {
    f(); // warm-up
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < min_time {
        f();
        n += 1;
    }
    (start.elapsed().as_secs_f64() / n as f64, n)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(") ").next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn main() {
    // Ten extra recipient certificates for the encryption figures.
    std::env::set_var("RECIPIENTS", "10");
    let pki = common::pki().dir.clone();
    let dir = tempfile::Builder::new()
        .prefix("smime-bench.")
        .tempdir()
        .unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    for i in 1..=10 {
        std::fs::copy(
            pki.join(format!("rcpt{i}.crt")),
            certs.join(format!("rcpt{i}.pem")),
        )
        .unwrap();
    }
    let ldap = slapd::Slapd::start(&(slapd::test_ldif() + &directory_ldif(DIRECTORY_USERS)));
    let sock = dir.path().join("milter.sock");
    let user = if unsafe { libc::geteuid() } == 0 {
        "user = \"nobody\"\n"
    } else {
        ""
    };
    let cfg_text = format!(
        "socket = \"unix:{}\"\n{user}socket_mode = \"0666\"\nlog_level = \"warning\"\nauthserv_id = \"bench.example\"\n\
         [verify]\ntrust_anchors = \"{}\"\n\
         [encrypt]\ncerts_dir = \"{}\"\n[[encrypt.policy]]\nrecipient = \"@example.net\"\nmode = \"required\"\n\
         [[encrypt.policy]]\nrecipient = \"@dir.example\"\nmode = \"required\"\n\
         [ldap]\nuris = [\"{}\"]\nbase_dn = \"{}\"\n\
         [[signing.key]]\nsender = \"alice@example.com\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\
         [[signing.key]]\nsender = \"bob@example.com\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        sock.display(),
        pki.join("root.crt").display(),
        certs.display(),
        ldap.uri(),
        slapd::BASE_DN,
        pki.join("alice.chain.pem").display(),
        pki.join("alice.key").display(),
        pki.join("bob.chain.pem").display(),
        pki.join("bob.key").display(),
    );
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(&cfg_path, &cfg_text).unwrap();
    let cfg = Arc::new(Runtime::load(&cfg_path).unwrap());
    // The same with decryption on: inbound then also looks for encrypted
    // entities it must report (doc/inbound-verdicts.md §7).
    let dec_path = dir.path().join("bench-decrypt.toml");
    std::fs::write(&dec_path, format!("{cfg_text}[decrypt]\nenabled = true\n")).unwrap();
    let cfg_decrypt = Runtime::load(&dec_path).unwrap();
    let none: Vec<String> = Vec::new();
    // SMIME_BENCH_ONLY=header_protection: that section alone.
    if std::env::var("SMIME_BENCH_ONLY").as_deref() == Ok("header_protection") {
        header_protection_cost(dir.path(), &cfg_text);
        return;
    }

    println!(
        "smime-milter benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("in process (the work done at end of message):");
    for size in [4 * 1024, 1024 * 1024] {
        let raw = message(size);
        let (headers, body) = split_message(&raw);
        let canonicalise = |header: &[u8], body: &[u8]| {
            time_per_op(Duration::from_millis(500), || {
                let mut out = Vec::with_capacity(body.len() * 5 / 4 + 128);
                let limits = Limits {
                    max_depth: 32,
                    max_parts: 1000,
                };
                mime::write_canonical(header, body, 0, limits, &mut out).unwrap();
                std::hint::black_box(out);
            })
            .0
        };
        row(
            size,
            "canonicalise",
            canonicalise(b"Content-Type: text/plain\r\n", &body),
        );
        // German text with umlauts and a trailing blank on every line:
        // each line quoted-printable.
        let eight_bit =
            "Grüße aus München, über die Brücke und zurück nach Köln. \r\n".repeat(size / 60 + 1);
        row(
            size,
            "canonicalise 8-bit",
            canonicalise(
                b"Content-Type: text/plain; charset=utf-8\r\n",
                eight_bit.as_bytes(),
            ),
        );
        for from in ["alice@example.com", "bob@example.com"] {
            let work = work_for(&cfg, &with_from(&headers, from), &none);
            let (t, _) = time_per_op(Duration::from_secs(1), || {
                std::hint::black_box(outbound::process_message(&cfg, &work, &headers, &body));
            });
            row(
                size,
                if from.starts_with("alice") {
                    "sign RSA-2048"
                } else {
                    "sign P-256"
                },
                t,
            );
        }
        for n in [1usize, 10] {
            let rcpts: Vec<String> = (1..=n).map(|i| format!("rcpt{i}@example.net")).collect();
            let work = work_for(&cfg, &headers, &rcpts);
            assert_eq!(work.encrypt.as_ref().map(Vec::len), Some(n));
            let (t, _) = time_per_op(Duration::from_secs(1), || {
                std::hint::black_box(outbound::process_message(&cfg, &work, &headers, &body));
            });
            row(size, &format!("sign+encrypt {n:>2} rcpt"), t);
        }
        let signed = signed_message(&cfg, &raw);
        let (sh, sb) = split_message(&signed);
        let pending = match inbound::plan(&cfg, &sh) {
            inbound::Plan::Verify(p) => p,
            inbound::Plan::Done(o) => panic!("not verified: {:?}", o.reason),
        };
        let check = inbound::verify_message(&cfg, &pending, &sh, Some(&sb), &[], None);
        assert_eq!(
            check.detail.as_deref(),
            Some("smime=pass signer=alice@example.com")
        );
        // SMIME_BENCH_LOOP=verify: only this, for 10 s, to run under perf.
        let profiling = std::env::var("SMIME_BENCH_LOOP").as_deref() == Ok("verify");
        let secs = if profiling { 10 } else { 1 };
        let (t, _) = time_per_op(Duration::from_secs(secs), || {
            std::hint::black_box(inbound::verify_message(
                &cfg,
                &pending,
                &sh,
                Some(&sb),
                &[],
                None,
            ));
        });
        if profiling {
            row(size, "verify RSA-2048", t);
            return;
        }
        row(size, "verify RSA-2048", t);
        let (t, _) = time_per_op(Duration::from_secs(1), || {
            std::hint::black_box(inbound::verify_message(
                &cfg_decrypt,
                &pending,
                &sh,
                Some(&sb),
                &[],
                None,
            ));
        });
        row(size, "verify, decryption on", t);
    }

    online_checks(dir.path());
    metrics_cost(dir.path(), &cfg_text, &sock);
    header_protection_cost(dir.path(), &cfg_text);

    // The same signature with alice's key in a SoftHSM2 token.
    let hsm = softhsm::SoftHsm::new();
    std::env::set_var("SOFTHSM2_CONF", hsm.conf());
    let pin = dir.path().join("token.pin");
    std::fs::write(&pin, softhsm::PIN).unwrap();
    common::set_mode(&pin, 0o600);
    let hsm_cfg_path = dir.path().join("hsm.toml");
    std::fs::write(&hsm_cfg_path, hsm.tables(&pin, "")).unwrap();
    let hsm_cfg = Runtime::load(&hsm_cfg_path).unwrap();
    println!();
    println!("signatures per second, RSA-2048 (4 KB message, in process):");
    let raw = message(4096);
    let (headers, body) = split_message(&raw);
    for (label, c) in [("file key", &*cfg), ("SoftHSM2 key", &hsm_cfg)] {
        let work = work_for(c, &headers, &none);
        let (t, _) = time_per_op(Duration::from_secs(1), || {
            let o = outbound::process_message(c, &work, &headers, &body);
            assert_eq!(o.action, "signed");
        });
        println!("  {label:<14} {:>9.3} ms  ({:>8.0}/s)", t * 1e3, 1.0 / t);
    }

    let certs = cfg.certs.as_ref().unwrap();
    let (hit, _) = time_per_op(Duration::from_millis(500), || {
        std::hint::black_box(certs.find(
            "rcpt1@example.net",
            None,
            std::time::Instant::now() + std::time::Duration::from_secs(30),
        ));
    });
    let (miss, n) = time_per_op(Duration::from_secs(1), || {
        certs.flush();
        assert!(matches!(
            certs.find(
                "carol@example.com",
                None,
                std::time::Instant::now() + std::time::Duration::from_secs(30)
            ),
            smime_milter::certstore::Lookup::Found(_)
        ));
    });
    println!();
    println!("certificate lookup: cache hit {:.4} ms; LDAP miss (slapd on 127.0.0.1, kept connection) {:.3} ms over {n} lookups", hit * 1e3, miss * 1e3);

    // Through the protocol, against the release binary.
    let child = Command::new(env!("CARGO_BIN_EXE_smime-milter"))
        .args(["-f", "-c"])
        .arg(&cfg_path)
        .stderr(Stdio::null())
        .spawn()
        .expect("start smime-milter");
    let pid = child.id();
    let mut child = scopeguard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "milter did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!();
    println!("through the milter protocol (unix socket, one connection per message):");
    let ten: Vec<String> = (1..=10).map(|i| format!("rcpt{i}@example.net")).collect();
    let cases: [Case<'_>; 7] = [
        ("sign", "127.0.0.1", &none, 4096, 2000, false),
        ("sign", "127.0.0.1", &none, 4096, 2000, true),
        ("sign", "127.0.0.1", &none, 1 << 20, 100, false),
        ("sign", "127.0.0.1", &none, 1 << 20, 100, true),
        ("sign+encrypt 10", "127.0.0.1", &ten, 4096, 500, false),
        ("verify", "192.0.2.1", &none, 4096, 2000, false),
        ("verify", "192.0.2.1", &none, 1 << 20, 100, false),
    ];
    for (what, ip, rcpts, size, count, parallel) in cases {
        let raw = if what == "verify" {
            signed_message(&cfg, &message(size))
        } else {
            message(size)
        };
        let (headers, body) = split_message(&raw);
        let conc = if parallel { 4 } else { 1 };
        let cpu0 = cpu_seconds(pid);
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..conc {
                s.spawn(|| {
                    for i in 0..count / conc {
                        send_one(&sock, ip, i, rcpts, &headers, &body);
                    }
                });
            }
        });
        let wall = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu0;
        println!(
            "  {what:<16} {:>7} x{count:<5} concurrency {conc}: {:>8.0} msg/s   milter CPU {:>7.3} ms/msg",
            label(size),
            count as f64 / wall,
            cpu * 1e3 / count as f64
        );
    }

    println!();
    println!("recipient certificates from slapd, through the milter protocol (concurrency 4):");
    let (headers, body) = split_message(&message(4096));
    for round in ["all cache misses", "cache warm"] {
        let cpu0 = cpu_seconds(pid);
        let start = Instant::now();
        let mut times: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let (sock, headers, body) = (&sock, &headers, &body);
                    s.spawn(move || {
                        (t..DIRECTORY_USERS)
                            .step_by(4)
                            .map(|i| {
                                let rcpt = vec![format!("u{i}@dir.example")];
                                let t0 = Instant::now();
                                send_one(sock, "127.0.0.1", i, &rcpt, headers, body);
                                t0.elapsed()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let wall = start.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu0;
        times.sort();
        let p99 = times[times.len() * 99 / 100];
        println!(
            "  {DIRECTORY_USERS} recipients, {round:<16}: {:>6.0} msg/s   p99 {:>7.2} ms   milter CPU {:>6.3} ms/msg",
            DIRECTORY_USERS as f64 / wall,
            p99.as_secs_f64() * 1e3,
            cpu * 1e3 / DIRECTORY_USERS as f64
        );
    }
    stop(&mut child.0);
    drop(ldap);
}

/// Directory users for the lookup benchmark.
const DIRECTORY_USERS: usize = 1000;

/// `n` users u0@dir.example... with a certificate each (P-256, self-signed:
/// recipient certificates need no chain unless configured to).
fn directory_ldif(n: usize) -> String {
    use openssl::asn1::Asn1Time;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let mut ldif = String::new();
    for i in 0..n {
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", &format!("u{i}")).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .email(&format!("u{i}@dir.example"))
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        let der = b.build().to_der().unwrap();
        ldif.push_str(&format!(
            "\ndn: uid=u{i},ou=people,{}\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: u{i}\nsn: u{i}\n\
             mail: u{i}@dir.example\nuserCertificate;binary:: {}\n",
            slapd::BASE_DN,
            openssl::base64::encode_block(&der)
        ));
    }
    ldif
}

/// The milter CPU per 4 KB signed message with `[metrics]` off and on:
/// one process each, rounds of 1000 messages taken in turn.
fn metrics_cost(dir: &Path, cfg_text: &str, sock: &Path) {
    let port = common::free_port();
    let start = |name: &str, extra: &str| {
        let s = dir.join(format!("{name}.sock"));
        let path = dir.join(format!("{name}.toml"));
        let text = cfg_text.replacen(
            &format!("unix:{}", sock.display()),
            &format!("unix:{}", s.display()),
            1,
        );
        std::fs::write(&path, format!("{text}{extra}")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_smime-milter"))
            .args(["-f", "-c"])
            .arg(&path)
            .stderr(Stdio::null())
            .spawn()
            .expect("start smime-milter");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&s).is_err() {
            assert!(Instant::now() < deadline, "milter did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        (scopeguard(child), s)
    };
    let off = start("metrics-off", "");
    let on = start(
        "metrics-on",
        &format!("[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let (headers, body) = split_message(&message(4096));
    let none: Vec<String> = Vec::new();
    let round = |m: &(Guard, std::path::PathBuf)| {
        let pid = m.0 .0.id();
        let cpu0 = cpu_seconds(pid);
        for i in 0..1000 {
            send_one(&m.1, "127.0.0.1", i, &none, &headers, &body);
        }
        (cpu_seconds(pid) - cpu0) * 1e3 / 1000.0
    };
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    for r in 0..6 {
        // Each goes first in turn: neither always meets a cold cache.
        if r % 2 == 0 {
            t_off.push(round(&off));
            t_on.push(round(&on));
        } else {
            t_on.push(round(&on));
            t_off.push(round(&off));
        }
    }
    let scraped = scrape_count(port);
    println!();
    println!("metrics ([metrics] off and on, 4 KB signed through the protocol, 6 rounds of 1000):");
    println!("  milter CPU per message, each round: off {t_off:.3?} ms, on {t_on:.3?} ms");
    let (m_off, m_on) = (median(&mut t_off), median(&mut t_on));
    println!(
        "  medians: off {m_off:.3} ms, on {m_on:.3} ms, on / off {:.3}; messages the endpoint counted: {scraped}",
        m_on / m_off
    );
}

/// RFC 9788 header protection on and off, in process: what copying the
/// header into the payload (and, encrypted, the policy, HP-Outer and the
/// Legacy Display Element) adds to a message.
fn header_protection_cost(dir: &Path, cfg_text: &str) {
    let load = |name: &str, extra: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{cfg_text}{extra}")).unwrap();
        Runtime::load(&path).unwrap()
    };
    let on = load(
        "hp-on.toml",
        &std::env::var("SMIME_BENCH_HP")
            .unwrap_or_default()
            .replace("\\n", "\n"),
    );
    let off = load("hp-off.toml", "[header_protection]\nenabled = false\n");
    let mut raw = b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench-1@example.com>\r\nFrom: Bob <bob@example.com>\r\nTo: Rcpt One <rcpt1@example.net>\r\nCc: Someone <someone@example.org>\r\nSubject: The quarterly figures, as discussed\r\nUser-Agent: Bench Mail 1.0\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n".to_vec();
    while raw.len() < 4096 {
        raw.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog; pack my box with five dozen.\r\n",
        );
    }
    let (headers, body) = split_message(&raw);
    println!();
    println!("header protection ([header_protection] on and off, 4 KB, 10 header fields, in process, 6 interleaved rounds of 0.5 s):");
    for (what, rcpts) in [
        ("sign P-256", Vec::new()),
        ("sign+encrypt 1 rcpt", vec!["rcpt1@example.net".to_string()]),
    ] {
        let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
        let work_on = work_for(&on, &headers, &rcpts);
        let work_off = work_for(&off, &headers, &rcpts);
        let time = |rt: &Runtime, w: &outbound::Work| {
            time_per_op(Duration::from_millis(500), || {
                std::hint::black_box(outbound::process_message(rt, w, &headers, &body));
            })
            .0
        };
        for r in 0..6 {
            if r % 2 == 0 {
                t_off.push(time(&off, &work_off));
                t_on.push(time(&on, &work_on));
            } else {
                t_on.push(time(&on, &work_on));
                t_off.push(time(&off, &work_off));
            }
        }
        let (m_off, m_on) = (median(&mut t_off), median(&mut t_on));
        println!(
            "  {what:<20} off {:.4} ms, on {:.4} ms, on / off {:.3}",
            m_off * 1e3,
            m_on * 1e3,
            m_on / m_off
        );
    }
}

/// `smime_milter_messages_total` summed over its labels, read from the
/// endpoint (shows the metrics were recorded).
fn scrape_count(port: u16) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("smime_milter_messages_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// 4 KB verification of an EC P-256 signer with an OCSP URL: online
/// checks off against a warm OCSP cache, six interleaved rounds of 1 s.
fn online_checks(dir: &Path) {
    let ca = online::Ca::start();
    let runtime = |name: &str, online: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "log_level = \"warning\"\n[verify]\ntrust_anchors = \"{}\"\n[online]\n{online}\n",
                ca.path("root.crt").display()
            ),
        )
        .unwrap();
        Runtime::load(&path).unwrap()
    };
    let off = runtime(
        "online-off.toml",
        "revocation = \"off\"\naia_issuers = false",
    );
    let warm = runtime("online-on.toml", "allow_networks = [\"127.0.0.1/32\"]");
    let text =
        "The quick brown fox jumps over the lazy dog; pack my box with five dozen.\r\n".repeat(52);
    let raw = ca.signed_text("good", true, &text);
    let (sh, sb) = split_message(&raw);
    let verify = |cfg: &Runtime| {
        let pending = match inbound::plan(cfg, &sh) {
            inbound::Plan::Verify(p) => p,
            inbound::Plan::Done(o) => panic!("not verified: {:?}", o.reason),
        };
        inbound::verify_message(cfg, &pending, &sh, Some(&sb), &[], None)
    };
    for cfg in [&off, &warm] {
        assert_eq!(
            verify(cfg).detail.as_deref(),
            Some("smime=pass signer=good@example.org")
        );
    }
    assert_eq!(ca.ocsp("good"), 1, "the warm-up fetched the answer once");
    let (mut t_off, mut t_warm) = (Vec::new(), Vec::new());
    let round = |cfg: &Runtime| {
        time_per_op(Duration::from_secs(1), || {
            std::hint::black_box(verify(cfg));
        })
        .0
    };
    // Alternating which goes first, so that neither gains from its place.
    for i in 0..6 {
        if i % 2 == 0 {
            t_off.push(round(&off));
            t_warm.push(round(&warm));
        } else {
            t_warm.push(round(&warm));
            t_off.push(round(&off));
        }
    }
    // The part the warm cache adds, alone: the chain's status.
    let online = warm.online.as_deref().unwrap();
    let trust = &warm.verify.as_ref().unwrap().trust.store;
    let leaf = openssl::x509::X509::from_pem(&std::fs::read(ca.path("good.crt")).unwrap()).unwrap();
    let inter =
        openssl::x509::X509::from_pem(&std::fs::read(ca.path("inter.crt")).unwrap()).unwrap();
    let root = openssl::x509::X509::from_pem(&std::fs::read(ca.path("root.crt")).unwrap()).unwrap();
    let chain = [leaf, inter, root];
    let far = Instant::now() + Duration::from_secs(60);
    let (status, _) = time_per_op(Duration::from_secs(1), || {
        let s = online.chain_status(&chain, trust, far);
        assert_eq!(s, smime_milter::online::Status::Good);
    });
    assert_eq!(ca.ocsp("good"), 1, "all answered from the cache");
    let (a, b) = (median(&mut t_off), median(&mut t_warm));
    println!();
    println!(
        "online checks, 4 KB, EC P-256 signer with an OCSP URL (median of 5 interleaved rounds):"
    );
    row(raw.len(), "verify, online off", a);
    row(raw.len(), "verify, OCSP cache warm", b);
    println!("  warm cache / off: {:.3}", b / a);
    println!(
        "  the chain's status from the warm cache alone: {:.2} µs",
        status * 1e6
    );
}

/// What, client address, recipients, size, count, four connections at once.
type Case<'a> = (&'a str, &'a str, &'a [String], usize, usize, bool);

fn row(size: usize, what: &str, t: f64) {
    println!(
        "  {:>7} {what:<22} {:>9.3} ms  ({:>8.0}/s)",
        label(size),
        t * 1e3,
        1.0 / t
    );
}

fn work_for(cfg: &Runtime, headers: &[(String, String)], rcpts: &[String]) -> outbound::Work {
    match outbound::plan(
        cfg,
        None,
        "alice@example.com",
        rcpts,
        headers,
        std::time::Instant::now() + std::time::Duration::from_secs(30),
    ) {
        Plan::Process(w) => w,
        Plan::Done(o) => panic!("nothing to do: {:?}", o.reason),
    }
}

/// The message as delivered after alice's signature.
fn signed_message(cfg: &Runtime, raw: &[u8]) -> Vec<u8> {
    let (headers, body) = split_message(raw);
    let o = outbound::process_message(cfg, &work_for(cfg, &headers, &[]), &headers, &body);
    let mut fields = headers.clone();
    apply_header_ops(&mut fields, &o.changes.headers);
    let mut out = Vec::new();
    for (n, v) in &fields {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(o.changes.body.as_deref().unwrap());
    out
}

fn send_one(
    sock: &Path,
    ip: &str,
    i: usize,
    rcpts: &[String],
    headers: &[(String, String)],
    body: &[u8],
) {
    let mut c = MilterClient::connect(sock).unwrap();
    c.connect_info(ip).unwrap();
    let r = c
        .message(
            &format!("B{i}"),
            None,
            "alice@example.com",
            &if rcpts.is_empty() {
                vec!["bob@example.org"]
            } else {
                rcpts.iter().map(String::as_str).collect()
            },
            headers,
            body,
        )
        .unwrap();
    assert!(
        !r.modifications.is_empty(),
        "neither signed nor verified: {:?}",
        r.reply
    );
    c.quit();
}

fn with_from(headers: &[(String, String)], from: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            if n == "From" {
                (n.clone(), from.to_string())
            } else {
                (n.clone(), v.clone())
            }
        })
        .collect()
}

fn label(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MB", size >> 20)
    } else {
        format!("{} KB", size >> 10)
    }
}

struct Guard(std::process::Child);
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}
impl Drop for Guard {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

fn stop(c: &mut std::process::Child) {
    if let Ok(None) = c.try_wait() {
        unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        let _ = c.wait();
    }
}
