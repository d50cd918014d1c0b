//! Recipient certificates from a real OpenLDAP server (slapd), behind the
//! LRU cache: lookups, escaping, failover, bind, errors, and the cache's
//! behaviour counted on the server side.

mod common;
use common::milter_client;
use common::slapd;

use common::*;
use milter_client::{split_message, MilterClient, Reply};
use slapd::{test_ldif, Slapd, BASE_DN, ROOT_DN, ROOT_PW};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(project_dir().join("tests/data").join(name)).unwrap()
}

fn ldap_section(uris: &[String], extra: &str) -> String {
    let list: Vec<String> = uris.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[ldap]\nuris = [{}]\nbase_dn = \"{BASE_DN}\"\nsearch_timeout = \"3s\"\nconnect_timeout = \"2s\"\n{extra}\n", list.join(", "))
}

fn config(dir: &std::path::Path, ldap: &str, encrypt: &str) -> PathBuf {
    write_config(
        dir,
        "",
        &format!("[signing]\nenabled = false\n[encrypt]\n{encrypt}\n{ldap}"),
    )
}

#[test]
fn certificates_come_from_user_certificate_and_user_smime_certificate() {
    let ldap = Slapd::start(&test_ldif());
    let d = tempdir();
    let cfg = config(
        d.path(),
        &ldap_section(&[ldap.uri()], ""),
        "default_policy = \"required\"",
    );
    // carol: userCertificate;binary. bob: userSMIMECertificate (PKCS#7 with
    // the chain), found through proxyAddresses with the default filter.
    let r = test_mode(
        &cfg,
        &[
            "--outbound",
            "--rcpt",
            "carol@example.com",
            "--rcpt",
            "bob@example.com",
        ],
        &data("plain.eml"),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("action=encrypted") && r.stderr.contains("recipients=2"),
        "{}",
        r.stderr
    );
    for who in ["carol", "bob"] {
        let plain = openssl_decrypt(&r.stdout, who).unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(mime_leaves(&plain), mime_leaves(&data("plain.eml")));
    }
    // An entry without a certificate: required -> tempfail, nothing printed.
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "nocert@example.com"],
        &data("plain.eml"),
    );
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn filter_injection_finds_nothing() {
    let ldap = Slapd::start(&test_ldif());
    let d = tempdir();
    let cfg = config(
        d.path(),
        &ldap_section(&[ldap.uri()], "filter = \"(mail=%s)\""),
        "default_policy = \"opportunistic\"",
    );
    for evil in ["*)(mail=*", "*", "carol@example.com)(|(mail=*"] {
        let r = test_mode(&cfg, &["--outbound", "--rcpt", evil], &data("plain.eml"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr.contains("not encrypted: no usable certificate"),
            "{evil}: {}",
            r.stderr
        );
    }
    let log = ldap.log_text();
    assert!(
        log.contains("filter=\"(mail=\\2A)\\28mail=\\2A\")")
            || log.contains("(mail=\\2A\\29\\28mail=\\2A)"),
        "escaped on the wire:\n{log}"
    );
    assert!(
        !log.contains("nentries=3") && !log.contains("nentries=2") && !log.contains("nentries=1"),
        "no entry matched:\n{log}"
    );
}

#[test]
fn failover_and_authenticated_bind() {
    let ldap = Slapd::start(&test_ldif());
    let dead = format!("ldap://127.0.0.1:{}", free_port());
    let d = tempdir();
    let pw = d.path().join("ldap.pass");
    std::fs::write(&pw, format!("{ROOT_PW}\n")).unwrap();
    set_mode(&pw, 0o600);
    let extra = format!(
        "bind_dn = \"{ROOT_DN}\"\nbind_password_file = \"{}\"",
        pw.display()
    );
    let cfg = config(
        d.path(),
        &ldap_section(&[dead.clone(), ldap.uri()], &extra),
        "default_policy = \"required\"",
    );
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &data("plain.eml"),
    );
    assert_eq!(r.code, 0, "second server answers: {}", r.stderr);
    assert!(
        ldap.log_text()
            .contains(&format!("BIND dn=\"{ROOT_DN}\" method=128")),
        "bound as the configured DN"
    );

    // A wrong password is a lookup error: tempfail, and the password is not printed.
    std::fs::write(&pw, "wrong\n").unwrap();
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &data("plain.eml"),
    );
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(
        r.stderr.contains("certificate lookup failed"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains(ROOT_PW) && !r.stderr.contains("wrong\n"),
        "{}",
        r.stderr
    );

    // A password file others can read is refused at start.
    set_mode(&pw, 0o644);
    let out = run(std::process::Command::new(bin())
        .arg("--check-config")
        .arg("-c")
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn directory_down_means_tempfail_and_no_plaintext() {
    let mut ldap = Slapd::start(&test_ldif());
    let d = tempdir();
    for policy in ["required", "opportunistic"] {
        let cfg = config(
            d.path(),
            &ldap_section(&[ldap.uri()], ""),
            &format!("default_policy = \"{policy}\""),
        );
        ldap.stop();
        let r = test_mode(
            &cfg,
            &["--outbound", "--rcpt", "carol@example.com"],
            &data("plain.eml"),
        );
        assert_eq!(r.code, 75, "{policy}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "nothing delivered");
        assert!(
            r.stderr
                .contains("certificate lookup failed for <carol@example.com>"),
            "{}",
            r.stderr
        );
        ldap.resume();
    }
}

/// One message through the running milter; true when it was encrypted.
fn send(m: &Milter, qid: &str, rcpt: &str) -> (Reply, bool) {
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) =
        split_message(b"From: alice@example.com\r\nSubject: cache\r\n\r\nhello\r\n");
    let r = c
        .message(qid, None, "alice@example.com", &[rcpt], &headers, &body)
        .unwrap();
    c.quit();
    let encrypted = r.new_body().is_some();
    (r.reply, encrypted)
}

#[test]
fn the_cache_answers_repeated_lookups_and_expires() {
    let mut ldap = Slapd::start(&test_ldif());
    let tables = format!(
        "[signing]\nenabled = false\n[encrypt]\ndefault_policy = \"opportunistic\"\n{}[cache]\nttl = \"3s\"\nnegative_ttl = \"3s\"\n",
        ldap_section(&[ldap.uri()], "retry_after = \"5s\"")
    );
    let m = Milter::start("stats_interval = \"1s\"\n", &tables);

    // A hit does not reach the server.
    assert!(send(&m, "C1", "carol@example.com").1);
    let after_first = ldap.searches();
    assert_eq!(after_first, 1, "{}", ldap.log_text());
    assert!(send(&m, "C2", "carol@example.com").1);
    assert_eq!(ldap.searches(), 1, "second lookup served from the cache");

    // Negative entries are cached too.
    assert!(!send(&m, "N1", "nocert@example.com").1);
    assert!(!send(&m, "N2", "nocert@example.com").1);
    assert_eq!(ldap.searches(), 2);

    // After the TTL, the server is asked again.
    std::thread::sleep(Duration::from_millis(3300));
    assert!(send(&m, "C3", "carol@example.com").1);
    assert_eq!(ldap.searches(), 3);

    // Errors are not cached: with the server down the message is deferred,
    // and once it is back (and its retry_after has passed) the next lookup
    // reaches it.
    ldap.stop();
    let failed_at = std::time::Instant::now();
    let (reply, encrypted) = send(&m, "E1", "bob@example.com");
    assert!(
        matches!(&reply, Reply::Code(t) if t.starts_with("451")),
        "{reply:?}"
    );
    assert!(!encrypted);
    ldap.resume();
    let (reply, _) = send(&m, "E1b", "bob@example.com");
    assert!(
        matches!(&reply, Reply::Code(t) if t.starts_with("451")),
        "{reply:?}"
    );
    let log = m.wait_log("E1b: outbound");
    assert!(
        log.lines()
            .any(|l| l.contains("E1b: outbound") && l.contains("skipped after a failure")),
        "within retry_after the server is not asked: {log}"
    );
    std::thread::sleep(
        (failed_at + Duration::from_millis(5300)).saturating_duration_since(Instant::now()),
    );
    let before = ldap.searches();
    assert!(send(&m, "E2", "bob@example.com").1, "{}", m.log());
    assert_eq!(ldap.searches(), before + 1);

    // SIGUSR1 reloads and empties the cache.
    assert!(send(&m, "R1", "carol@example.com").1);
    let before = ldap.searches();
    assert!(send(&m, "R2", "carol@example.com").1);
    assert_eq!(ldap.searches(), before, "cached");
    unsafe { libc::kill(m.pid() as i32, libc::SIGUSR1) };
    let log = m.wait_log("configuration reloaded");
    assert!(log.contains("certificate cache emptied"), "{log}");
    assert!(send(&m, "R3", "carol@example.com").1);
    assert_eq!(ldap.searches(), before + 1, "asked again after the reload");

    let log = m.wait_log("stats: certificate cache");
    assert!(log.contains("stats: certificate cache hits="), "{log}");
    // Once every message has ended, nothing is counted as in flight.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let log = m.log();
    let last = log.lines().rfind(|l| l.contains("stats:")).unwrap();
    assert!(
        last.ends_with("messages in flight=0 memory counted=0 bytes"),
        "{last}"
    );
    assert!(log.contains("E1: outbound action=tempfail"), "{log}");
}

#[test]
fn ldaps_and_starttls_check_the_server_certificate() {
    let ldap = Slapd::start_tls(&test_ldif());
    let d = tempdir();
    let ca = format!("ca_file = \"{}\"", pki().path("root.crt").display());
    for (uris, extra) in [
        (vec![ldap.ldaps_uri()], ca.clone()),
        (vec![ldap.uri()], format!("{ca}\nstarttls = true")),
    ] {
        let cfg = config(
            d.path(),
            &ldap_section(&uris, &extra),
            "default_policy = \"required\"",
        );
        let r = test_mode(
            &cfg,
            &["--outbound", "--rcpt", "carol@example.com"],
            &data("plain.eml"),
        );
        assert_eq!(r.code, 0, "{uris:?} {extra}: {}", r.stderr);
        openssl_decrypt(&r.stdout, "carol").unwrap();
    }
    // A CA that did not issue the server certificate: no connection, tempfail.
    let wrong = format!("ca_file = \"{}\"", pki().path("rogue-root.crt").display());
    let cfg = config(
        d.path(),
        &ldap_section(&[ldap.ldaps_uri()], &wrong),
        "default_policy = \"required\"",
    );
    let r = test_mode(
        &cfg,
        &["--outbound", "--rcpt", "carol@example.com"],
        &data("plain.eml"),
    );
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(r.stdout.is_empty());
}

#[test]
fn refuse_at_rcpt_through_the_milter_protocol() {
    let ldap = Slapd::start(&test_ldif());
    let tables = format!(
        "[signing]\nenabled = false\n[encrypt]\ndefault_policy = \"required\"\nrefuse_at_rcpt = true\n{}",
        ldap_section(&[ldap.uri()], "")
    );
    let m = Milter::start("", &tables);
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) = split_message(b"From: alice@example.com\r\nSubject: r\r\n\r\nhello\r\n");
    let r = c
        .message(
            "RR1",
            None,
            "alice@example.com",
            &["nocert@example.com"],
            &headers,
            &body,
        )
        .unwrap();
    assert!(
        matches!(&r.reply, Reply::Code(t) if t.starts_with("550 5.7.1")),
        "{:?}",
        r.reply
    );
    c.quit();
    let log = m.wait_log("recipient refused");
    assert!(
        log.contains("recipient refused: <nocert@example.com> has no S/MIME certificate"),
        "{log}"
    );
}

/// One message to `rcpts`: the reply, whether it was encrypted, and how
/// long the milter took.
fn send_to(m: &Milter, qid: &str, rcpts: &[&str]) -> (Reply, bool, Duration) {
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) =
        split_message(b"From: alice@example.com\r\nSubject: budget\r\n\r\nhello\r\n");
    let t = Instant::now();
    let r = c
        .message(qid, None, "alice@example.com", rcpts, &headers, &body)
        .unwrap();
    let took = t.elapsed();
    c.quit();
    let encrypted = r.new_body().is_some();
    (r.reply, encrypted, took)
}

/// Search timeout 3 s; a paused server accepts connections and never answers.
fn silent_tables(uris: &[String]) -> String {
    format!(
        "[signing]\nenabled = false\n[encrypt]\ndefault_policy = \"required\"\n{}",
        ldap_section(uris, "retry_after = \"60s\"")
    )
}

#[test]
fn a_silent_directory_costs_one_timeout_and_the_next_uri_answers() {
    let silent = Slapd::start(&test_ldif());
    let ldap = Slapd::start(&test_ldif());
    silent.pause();
    let m = Milter::start(
        "lookup_budget = \"8s\"\n",
        &silent_tables(&[silent.uri(), ldap.uri()]),
    );
    // Three recipients side by side: one search timeout (3 s), not three.
    let rcpts = ["carol@example.com", "bob@example.com", "alice@example.com"];
    let (reply, encrypted, took) = send_to(&m, "S1", &rcpts);
    assert!(encrypted, "{reply:?} {}", m.log());
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(6),
        "one timeout, then the second server: {took:?}"
    );
    // The silent server is skipped now: the next message does not wait.
    let (_, encrypted, took) = send_to(&m, "S2", &["nocert@example.com", "carol@example.com"]);
    assert!(!encrypted);
    assert!(took < Duration::from_secs(2), "skipped server: {took:?}");
    let log = m.log();
    assert_eq!(
        log.matches("skipped for 60 s").count(),
        1,
        "said once: {log}"
    );
    assert_eq!(ldap.searches(), 4, "{}", ldap.log_text());
    silent.unpause();
}

#[test]
fn a_silent_directory_alone_defers_every_message_within_the_budget() {
    let silent = Slapd::start(&test_ldif());
    silent.pause();
    let m = Milter::start("lookup_budget = \"2s\"\n", &silent_tables(&[silent.uri()]));
    // Four messages at once, to distinct recipients: each waits for the
    // budget (2 s, shorter than the search timeout), side by side.
    let started = Instant::now();
    let results: Vec<(Reply, bool, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = ["carol", "bob", "alice", "dave"]
            .iter()
            .enumerate()
            .map(|(i, who)| {
                let m = &m;
                s.spawn(move || send_to(m, &format!("B{i}"), &[&format!("{who}@example.com")]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = started.elapsed();
    for (reply, encrypted, took) in &results {
        assert!(!encrypted);
        assert!(
            matches!(reply, Reply::Tempfail)
                || matches!(reply, Reply::Code(c) if c.starts_with('4')),
            "deferred, never plaintext: {reply:?}"
        );
        assert!(
            *took >= Duration::from_millis(1500) && *took < Duration::from_millis(4500),
            "within the budget: {took:?}"
        );
    }
    // One after another they would take 8 s.
    assert!(
        total < Duration::from_secs(7),
        "side by side, not one after another: {total:?}"
    );
    let log = m.log();
    assert!(log.contains("time budget spent"), "{log}");
    silent.unpause();
}
