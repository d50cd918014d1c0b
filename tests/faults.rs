//! Faults and load with real components: the milter killed (SIGKILL) and
//! restarted under a Postfix load, the directory killed and restarted, a
//! SoftHSM2 token removed and put back, 50 concurrent SMTP sessions of
//! mixed traffic. Every message is counted: delivered as policy requires,
//! or refused with a 4xx the sender keeps it for (retried here, as an MTA
//! would); none lost, none delivered in plaintext where encryption is
//! required.

mod common;
use common::milter_client;
use common::slapd;
use common::softhsm;

use common::*;
use milter_client::{send_one, split_message, MessageResult, MilterClient, Modification, Reply};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn skip_unless_root() -> bool {
    !can_run_as_root()
}

/// Certificates for encryption: dave's, filed under his address.
fn certs_dir() -> tempfile::TempDir {
    let d = tempdir();
    std::fs::copy(pki().path("dave.crt"), d.path().join("dave.pem")).unwrap();
    d
}

/// alice signs; mail to dave@example.net must be encrypted. The Subject
/// stays visible outside (header protection without confidentiality): the
/// load tests find each delivered message by it without decrypting
/// thousands (tests/header_protection.rs covers the policies).
fn policy_tables(certs: &Path) -> String {
    format!(
        "[header_protection]\npolicy = \"hcp_no_confidentiality\"\n[encrypt]\ncerts_dir = \"{}\"\n[[encrypt.policy]]\nrecipient = \"dave@example.net\"\nmode = \"required\"\n{}",
        certs.display(),
        pki().key_table()
    )
}

/// The Subject its recipient reads (protected, when hidden outside).
fn subject_of(msg: &[u8]) -> String {
    shown_subject(msg, &["dave"])
}

fn top_content_type(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    let head = text.split("\n\n").next().unwrap_or("").to_string();
    head.split('\n')
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string()
}

/// Sends until every message is accepted; a 4xx keeps it with the sender
/// for another try (what a sending MTA does). Returns the count of 4xx.
fn send_retrying(port: u16, from: &str, to: &str, msg: &[u8], deadline: Instant) -> usize {
    let mut deferred = 0;
    loop {
        let r = smtp_send(port, from, &[to], msg);
        if r.starts_with("250") {
            return deferred;
        }
        assert!(r.starts_with('4'), "refused for good: {r}");
        assert!(
            Instant::now() < deadline,
            "still deferred at the deadline: {r}"
        );
        deferred += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn milter_killed_and_restarted_under_postfix_load_loses_nothing() {
    if skip_unless_root() {
        return;
    }
    let certs = certs_dir();
    let mut milter = Milter::start("", &policy_tables(certs.path()));
    let postfix = Postfix::start(&milter.spec());
    let port = postfix.smtpd_port;
    const THREADS: usize = 8;
    const EACH: usize = 40;
    let sent = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(240);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut deferred = 0;
                for i in 0..EACH {
                    // Every other message goes to dave: encryption required.
                    let to = if i % 2 == 0 {
                        "dave@example.net"
                    } else {
                        "x@example.org"
                    };
                    let msg = format!(
                        "From: alice@example.com\nTo: {to}\nSubject: kill {t}-{i}\n\nmessage {t}-{i}\n"
                    );
                    deferred +=
                        send_retrying(port, "alice@example.com", to, msg.as_bytes(), deadline);
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                deferred
            })
        })
        .collect();
    // Kill it twice mid-load; a service manager restarts it a moment later.
    for at in [THREADS * EACH / 4, THREADS * EACH / 2] {
        while sent.load(Ordering::SeqCst) < at {
            std::thread::sleep(Duration::from_millis(5));
        }
        milter.kill();
        std::thread::sleep(Duration::from_millis(700));
        milter.restart();
    }
    let deferred: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(deferred > 0, "the kills happened under load");

    let total = THREADS * EACH;
    let delivered = postfix.delivered(total);
    assert_eq!(delivered.len(), total, "every message delivered once");
    let mut seen = BTreeMap::new();
    for m in &delivered {
        let subject = subject_of(m);
        *seen.entry(subject.clone()).or_insert(0) += 1;
        let ct = top_content_type(m);
        let i: usize = subject.rsplit('-').next().unwrap().parse().unwrap();
        if i.is_multiple_of(2) {
            assert!(
                ct.contains("enveloped-data"),
                "{subject}: required encryption, delivered as {ct}"
            );
            assert!(
                !String::from_utf8_lossy(m).contains("message "),
                "{subject}: plaintext"
            );
        } else {
            assert!(ct.starts_with("multipart/signed"), "{subject}: {ct}");
        }
    }
    assert_eq!(seen.len(), total, "no duplicates, none missing");
    assert_eq!(postfix.queued(), 0, "nothing left in the queue");
    eprintln!("{total} messages, {deferred} deferred attempts during 2 kills");
}

fn ldap_tables(uri: &str, certs: &Path) -> String {
    format!(
        "[encrypt]\ncerts_dir = \"{}\"\nlookup_order = [\"ldap\"]\ndefault_policy = \"required\"\n\
         [ldap]\nuris = [\"{uri}\"]\nbase_dn = \"{}\"\nconnect_timeout = \"1s\"\nsearch_timeout = \"1s\"\nretry_after = \"2s\"\n\
         [cache]\nttl = \"1s\"\nnegative_ttl = \"1s\"\n{}",
        certs.display(),
        slapd::BASE_DN,
        pki().key_table()
    )
}

/// Four clients send messages in a loop while `fault` runs: each message
/// must be `ok` (what policy requires) or deferred (4xx), nothing else.
/// Returns when each was answered and whether it was `ok`.
fn under_load(
    path: &Path,
    tag: &'static str,
    to: &'static str,
    ok: fn(&MessageResult, &[u8]) -> bool,
    fault: impl FnOnce(),
) -> Vec<(Instant, bool)> {
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (path, stop) = (path.to_path_buf(), stop.clone());
            std::thread::spawn(move || {
                let mut log = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let msg = format!(
                        "From: alice@example.com\nTo: {to}\nSubject: {tag} {t}-{i}\n\nsecret {t}-{i}\n"
                    );
                    let qid = format!("{tag}{t}x{i}");
                    let (r, out) =
                        send_one(&path, "127.0.0.1", &qid, "alice@example.com", &[to], msg.as_bytes());
                    let good = ok(&r, &out);
                    assert!(good || tempfailed(&r), "{qid}: neither done nor deferred: {:?}", r.reply);
                    log.push((Instant::now(), good));
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                log
            })
        })
        .collect();
    fault();
    stop.store(true, Ordering::SeqCst);
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

/// Encrypted, and the plaintext nowhere in what would be delivered.
fn encrypted_ok(r: &MessageResult, out: &[u8]) -> bool {
    accepted(r) && {
        assert!(
            top_content_type(out).contains("enveloped-data"),
            "plaintext delivered"
        );
        assert!(
            !String::from_utf8_lossy(out).contains("secret "),
            "plaintext delivered"
        );
        true
    }
}

fn accepted(r: &MessageResult) -> bool {
    matches!(r.reply, Reply::Continue | Reply::Accept)
}

fn tempfailed(r: &MessageResult) -> bool {
    matches!(&r.reply, Reply::Tempfail) || matches!(&r.reply, Reply::Code(c) if c.starts_with('4'))
}

#[test]
fn directory_killed_and_restarted_under_load() {
    let mut ldap = slapd::Slapd::start(&slapd::test_ldif());
    let certs = tempdir();
    let m = Milter::start("", &ldap_tables(&ldap.uri(), certs.path()));
    let (mut killed, mut resumed) = (Instant::now(), Instant::now());
    let log = under_load(
        &m.socket_path,
        "D",
        "carol@example.com",
        encrypted_ok,
        || {
            std::thread::sleep(Duration::from_secs(2));
            killed = Instant::now();
            ldap.stop();
            std::thread::sleep(Duration::from_secs(3));
            ldap.resume();
            resumed = Instant::now();
            std::thread::sleep(Duration::from_secs(5));
        },
    );

    let ok_before = log.iter().filter(|(t, ok)| *ok && *t < killed).count();
    // Once the cache entry expired (1 s), the directory's absence shows.
    let failed_while_down = log
        .iter()
        .filter(|(t, ok)| !ok && *t > killed + Duration::from_millis(1500) && *t < resumed)
        .count();
    let ok_after = log
        .iter()
        .filter(|(t, ok)| *ok && *t > resumed + Duration::from_secs(3))
        .count();
    eprintln!(
        "{} messages: {ok_before} encrypted before, {failed_while_down} deferred while down, {ok_after} encrypted after",
        log.len()
    );
    assert!(
        ok_before > 0 && failed_while_down > 0 && ok_after > 0,
        "{}",
        m.log()
    );
    assert!(Path::new(&format!("/proc/{}", m.pid())).exists());
}

fn signed_ok(r: &MessageResult, out: &[u8]) -> bool {
    accepted(r)
        && r.modifications
            .iter()
            .any(|m| matches!(m, Modification::ReplaceBody(_)))
        && openssl_verify(out).is_ok()
}

#[test]
fn token_removed_and_restored_under_load() {
    let hsm = softhsm::SoftHsm::new();
    let d = tempdir();
    let pin = d.path().join("pin");
    std::fs::write(&pin, softhsm::PIN).unwrap();
    set_mode(&pin, 0o600);
    if is_root() {
        let _ = std::process::Command::new("chown")
            .args(["nobody"])
            .arg(&pin)
            .output();
    }
    let m = Milter::start_env("", &hsm.tables(&pin, ""), &[("SOFTHSM2_CONF", &hsm.conf())]);
    let (mut removed, mut restored) = (Instant::now(), Instant::now());
    let log = under_load(&m.socket_path, "K", "x@example.net", signed_ok, || {
        std::thread::sleep(Duration::from_secs(2));
        let away = hsm.dir.path().join("tokens.away");
        std::fs::rename(hsm.tokens(), &away).unwrap();
        removed = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        std::fs::rename(&away, hsm.tokens()).unwrap();
        restored = Instant::now();
        std::thread::sleep(Duration::from_secs(6));
    });
    let ok_before = log.iter().filter(|(t, ok)| *ok && *t < removed).count();
    let failed_while_out = log
        .iter()
        .filter(|(t, ok)| !ok && *t > removed && *t < restored)
        .count();
    let ok_after = log
        .iter()
        .filter(|(t, ok)| *ok && *t > restored + Duration::from_secs(3))
        .count();
    eprintln!(
        "{} messages: {ok_before} signed before, {failed_while_out} deferred while out, {ok_after} signed after",
        log.len()
    );
    assert!(ok_before > 0 && failed_while_out > 0, "{}", m.log());
    assert!(
        ok_after > 0,
        "the token came back but was not used again:\n{}",
        m.log()
    );
    // After recovery every message is signed again.
    let last: Vec<_> = log
        .iter()
        .filter(|(t, _)| *t > restored + Duration::from_secs(3))
        .collect();
    assert!(
        last.iter().all(|(_, ok)| *ok),
        "failures after recovery:\n{}",
        m.log()
    );
    assert!(!m.log().contains(softhsm::PIN));
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// 50 SMTP sessions at once for a while (SMIME_SOAK_SECS, default 180):
/// outbound signing, outbound encryption, inbound verification. No
/// deadlock (every session finishes), every message counted, and the
/// milter's memory and descriptors do not grow.
#[test]
fn fifty_concurrent_sessions_of_mixed_traffic() {
    if skip_unless_root() {
        return;
    }
    let secs: u64 = std::env::var("SMIME_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let certs = certs_dir();
    // 127.0.0.2 is outside: its mail is verified.
    let milter = Milter::start(
        "internal_hosts = [\"127.0.0.1/32\"]\nauthserv_id = \"mx.soak.test\"",
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n[harvest]\nenabled = false\n{}",
            pki().path("root.crt").display(),
            policy_tables(certs.path())
        ),
    );
    let postfix = Postfix::start(&milter.spec());
    let port = postfix.smtpd_port;
    let signed_inbound = [
        &b"From: alice@example.com\r\nTo: x@example.com\r\nSubject: inbound\r\nMIME-Version: 1.0\r\n"[..],
        &openssl_sign("alice", "sha256", b"Content-Type: text/plain\r\n\r\nsigned elsewhere\r\n"),
    ]
    .concat();

    let warmup = |n: usize| {
        for i in 0..n {
            let msg =
                format!("From: alice@example.com\nTo: x@example.org\nSubject: warm {i}\n\nwarm\n");
            assert!(smtp_send(
                port,
                "alice@example.com",
                &["x@example.org"],
                msg.as_bytes()
            )
            .starts_with("250"));
        }
    };
    warmup(20);
    let pid = milter.pid();
    let (rss0, fds0) = (proc_status_kb(pid, "VmRSS:"), fd_count(pid));

    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..50)
        .map(|t| {
            let signed_inbound = signed_inbound.clone();
            std::thread::spawn(move || {
                let mut sent = Vec::new();
                let mut i = 0;
                while Instant::now() < end {
                    let subject = format!("soak {t}-{i}");
                    let r = match (t + i) % 3 {
                        0 => {
                            let msg = format!("From: alice@example.com\nTo: x@example.org\nSubject: {subject}\n\nsign me\n");
                            smtp_send(port, "alice@example.com", &["x@example.org"], msg.as_bytes())
                        }
                        1 => {
                            let msg = format!("From: alice@example.com\nTo: dave@example.net\nSubject: {subject}\n\nencrypt me\n");
                            smtp_send(port, "alice@example.com", &["dave@example.net"], msg.as_bytes())
                        }
                        _ => {
                            let text = String::from_utf8_lossy(&signed_inbound)
                                .replace("Subject: inbound", &format!("Subject: {subject}"));
                            smtp_send_from(
                                std::net::Ipv4Addr::new(127, 0, 0, 2),
                                port,
                                "alice@example.com",
                                &["x@example.com"],
                                text.as_bytes(),
                            )
                        }
                    };
                    assert!(r.starts_with("250"), "{subject}: {r}");
                    sent.push(subject);
                    i += 1;
                }
                sent
            })
        })
        .collect();
    // Once all 50 sessions run, memory is measured again: from there on
    // it must stay flat.
    std::thread::sleep(Duration::from_secs(secs / 3));
    let rss_mid = proc_status_kb(pid, "VmRSS:");
    let sent: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let delivered = postfix.delivered(20 + sent.len());
    let (rss1, fds1) = (proc_status_kb(pid, "VmRSS:"), fd_count(pid));
    eprintln!(
        "{} messages in {secs} s over 50 sessions; milter RSS {rss0} kB warm, {rss_mid} kB under load, {rss1} kB at the end; fds {fds0} -> {fds1}",
        sent.len()
    );
    assert_eq!(delivered.len(), 20 + sent.len());
    for m in &delivered {
        let s = subject_of(m);
        let ct = top_content_type(m);
        if s.starts_with("warm") {
            continue;
        }
        let (t, i) = s.trim_start_matches("soak ").split_once('-').unwrap();
        match (t.parse::<usize>().unwrap() + i.parse::<usize>().unwrap()) % 3 {
            0 => assert!(ct.starts_with("multipart/signed"), "{s}: {ct}"),
            1 => assert!(ct.contains("enveloped-data"), "{s}: {ct}"),
            _ => assert!(
                String::from_utf8_lossy(m).contains("smime=pass"),
                "{s}: no pass"
            ),
        }
    }
    assert_eq!(postfix.queued(), 0);
    // Bounds: descriptors back to where they were (sessions closed), 50
    // sessions cost at most 32 MB, and no growth while they run.
    assert!(fds1 <= fds0 + 2, "descriptors grew: {fds0} -> {fds1}");
    assert!(
        rss_mid <= rss0 + 32 * 1024,
        "50 sessions cost {rss0} -> {rss_mid} kB"
    );
    assert!(
        rss1 <= rss_mid + 8 * 1024,
        "memory grew under steady load: {rss_mid} -> {rss1} kB"
    );
}

/// An authenticated user cannot make the gateway sign as someone else
/// (signing oracle), through the protocol with Postfix's {auth_authen}.
#[test]
fn authenticated_user_cannot_sign_as_another_sender() {
    let m = Milter::start("", &pki().key_table());
    let raw = b"From: alice@example.com\r\nTo: x@example.net\r\nSubject: forged\r\n\r\nhi\r\n";
    let (h, b) = split_message(raw);
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let r = c
        .message(
            "O1",
            Some("mallory"),
            "alice@example.com",
            &["x@example.net"],
            &h,
            &b,
        )
        .unwrap();
    assert!(accepted(&r));
    assert!(
        !r.modifications
            .iter()
            .any(|x| matches!(x, Modification::ReplaceBody(_))),
        "signed for mallory as alice"
    );
    let r = c
        .message(
            "O2",
            Some("alice@example.com"),
            "alice@example.com",
            &["x@example.net"],
            &h,
            &b,
        )
        .unwrap();
    c.quit();
    assert!(
        r.modifications
            .iter()
            .any(|x| matches!(x, Modification::ReplaceBody(_))),
        "alice herself is signed for"
    );
    let log = m.wait_log("O1:");
    assert!(log.contains("O1:") && log.contains("mallory"), "{log}");
}
