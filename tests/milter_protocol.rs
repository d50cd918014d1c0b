//! The milter binary driven over its socket by a milter protocol client
//! playing Postfix; the rewritten messages are verified with openssl.

mod common;
use common::milter_client;

use common::*;
use milter_client::{send_parts, split_message, MilterClient, Modification, Reply};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(project_dir().join("tests/data").join(name)).unwrap()
}

#[test]
fn signed_message_verifies_after_the_mta_applies_the_changes() {
    let m = Milter::start("", &pki().key_table());
    for name in [
        "plain.eml",
        "utf8-8bit.eml",
        "multipart-binary.eml",
        "long-lines.eml",
    ] {
        let raw = data(name);
        let (headers, body) = split_message(&raw);
        let mut c = MilterClient::connect(&m.socket_path).unwrap();
        assert_eq!(c.connect_info("127.0.0.1").unwrap(), None);
        let r = c
            .message(
                "QID1",
                None,
                "alice@example.com",
                &["bob@example.net"],
                &headers,
                &body,
            )
            .unwrap();
        assert!(
            matches!(r.reply, Reply::Continue | Reply::Accept),
            "{name}: {:?}",
            r.reply
        );
        assert!(r.new_body().is_some(), "{name}: body replaced");
        assert!(
            r.modifications.iter().all(|m| match m {
                Modification::ChangeHeader(_, n, _) | Modification::AddHeader(n, _) =>
                    n.to_ascii_lowercase().starts_with("content-") || n == "MIME-Version",
                _ => true,
            }),
            "{name}: only Content-* and MIME-Version are touched: {:?}",
            r.modifications
        );
        let delivered = r.apply(&headers, &body);
        let content = openssl_verify(&delivered).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(mime_leaves(&content), mime_leaves(&raw), "{name}");
        c.quit();
    }
    let log = m.wait_log("QID1");
    assert!(
        log.contains("QID1: outbound action=signed verdict=accept key=alice@example.com"),
        "{log}"
    );
}

#[test]
fn one_megabyte_message_is_signed() {
    let m = Milter::start("", &pki().key_table());
    let mut raw =
        b"From: alice@example.com\r\nSubject: big\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    while raw.len() < 1 << 20 {
        raw.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog; pack my box with five dozen.\r\n",
        );
    }
    let (headers, body) = split_message(&raw);
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let r = c
        .message(
            "BIG1",
            None,
            "alice@example.com",
            &["x@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    let content = openssl_verify(&r.apply(&headers, &body)).unwrap();
    assert!(
        content.ends_with(&body),
        "the signed entity carries the body unchanged"
    );
}

#[test]
fn messages_on_one_connection_do_not_share_state() {
    let m = Milter::start("", &pki().key_table());
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let msgs: [(&str, bool); 3] = [
        ("alice@example.com", true),
        ("nobody@unknown.example", false),
        ("bob@example.com", true),
    ];
    for (i, (from, signed)) in msgs.iter().enumerate() {
        let raw = format!("From: {from}\r\nSubject: {i}\r\n\r\nmessage {i}\r\n");
        let (headers, body) = split_message(raw.as_bytes());
        let r = c
            .message(
                &format!("SEQ{i}"),
                None,
                from,
                &["x@example.net"],
                &headers,
                &body,
            )
            .unwrap();
        assert_eq!(
            r.new_body().is_some(),
            *signed,
            "message {i}: {:?}",
            r.reply
        );
        if *signed {
            let content = openssl_verify(&r.apply(&headers, &body)).unwrap();
            assert!(content.ends_with(format!("message {i}\r\n").as_bytes()));
        }
    }
    c.quit();
}

/// The reply to a message from a sender without a key, with
/// `key_not_found` set to `action`, and the milter's log for it.
fn key_not_found_reply(action: &str, qid: &str) -> (Reply, String) {
    let m = Milter::start(
        &format!("[actions]\nkey_not_found = \"{action}\"\n"),
        &pki().key_table(),
    );
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) = split_message(b"From: x@unknown.example\r\n\r\nhi\r\n");
    let r = c
        .message(
            qid,
            None,
            "x@unknown.example",
            &["y@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    (r.reply, m.wait_log(qid))
}

#[test]
fn tempfail_carries_a_4xx_reply() {
    let (reply, log) = key_not_found_reply("tempfail", "TF1");
    match reply {
        Reply::Code(text) => assert!(text.starts_with("451 4.7.0"), "{text}"),
        other => panic!("expected a 451 reply, got {other:?}"),
    }
    assert!(
        log.contains("TF1: outbound action=tempfail verdict=tempfail"),
        "{log}"
    );
}

#[test]
fn reject_carries_a_5xx_reply() {
    let (reply, _) = key_not_found_reply("reject", "RJ1");
    assert!(
        matches!(&reply, Reply::Code(t) if t.starts_with("550 5.7.0")),
        "{reply:?}"
    );
}

#[test]
fn concurrent_connections_are_all_signed() {
    let m = Milter::start("", &pki().key_table());
    let path = m.socket_path.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = MilterClient::connect(&path).unwrap();
                c.connect_info("127.0.0.1").unwrap();
                for i in 0..5 {
                    let raw = format!("From: carol@example.com\r\nSubject: {t}/{i}\r\n\r\nthread {t} message {i}\r\n");
                    let (headers, body) = split_message(raw.as_bytes());
                    let r = c.message(&format!("C{t}x{i}"), None, "carol@example.com", &["x@example.net"], &headers, &body).unwrap();
                    let content = openssl_verify(&r.apply(&headers, &body)).unwrap();
                    assert!(content.ends_with(format!("thread {t} message {i}\r\n").as_bytes()));
                }
                c.quit();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn oversized_message_is_passed_without_buffering_it_all() {
    let m = Milter::start("max_message_size = \"64K\"\n", &pki().key_table());
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, _) = split_message(b"From: alice@example.com\r\n\r\n");
    let body = vec![b'a'; 300 * 1024];
    let r = c
        .message(
            "OS1",
            None,
            "alice@example.com",
            &["x@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    assert_eq!(
        r.reply,
        Reply::Accept,
        "accepted unchanged once over the limit"
    );
    assert!(r.modifications.is_empty());
    let log = m.wait_log("OS1");
    assert!(log.contains("larger than max_message_size"), "{log}");
}

#[test]
fn a_panic_becomes_a_tempfail_and_the_milter_keeps_serving() {
    // Debug builds panic on this header (see Session::header).
    let m = Milter::start("", &pki().key_table());
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) =
        split_message(b"From: alice@example.com\r\nX-Smime-Milter-Test-Panic: 1\r\n\r\nhi\r\n");
    let r = c
        .message(
            "PANIC1",
            None,
            "alice@example.com",
            &["x@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    assert!(
        matches!(&r.reply, Reply::Code(t) if t.starts_with("451 4.7.0")),
        "{:?}",
        r.reply
    );
    c.quit();
    let log = m.wait_log("panic in header callback");
    assert!(
        log.contains("PANIC1: internal error: panic in header callback: test panic requested"),
        "{log}"
    );

    // The same process still signs.
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) = split_message(b"From: alice@example.com\r\n\r\nafter the panic\r\n");
    let r = c
        .message(
            "PANIC2",
            None,
            "alice@example.com",
            &["x@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    openssl_verify(&r.apply(&headers, &body)).unwrap();
}

#[test]
fn inbound_signed_message_over_the_size_limit_flows_with_a_permerror() {
    let top = "internal_hosts = [\"192.0.2.0/24\"]\nauthserv_id = \"mx.example.com\"\nmax_message_size = \"8K\"\n";
    let tables = format!(
        "[verify]\ntrust_anchors = \"{}\"\n",
        pki().path("root.crt").display()
    );
    let m = Milter::start(top, &tables);
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, _) = split_message(
        b"From: bob@example.com\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=b\r\n\r\n",
    );
    let body = vec![b'a'; 64 * 1024];
    let r = c
        .message(
            "BIGIN",
            None,
            "bob@example.com",
            &["x@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    assert!(
        matches!(r.reply, Reply::Continue | Reply::Accept),
        "{:?}",
        r.reply
    );
    let added: Vec<_> = r
        .modifications
        .iter()
        .filter_map(|m| match m {
            // Unfolded, as a reader sees it.
            Modification::InsertHeader(0, n, v) if n == "Authentication-Results" => {
                Some(v.replace("\n ", " "))
            }
            _ => None,
        })
        .collect();
    assert_eq!(added.len(), 1, "{:?}", r.modifications);
    assert!(
        added[0].starts_with(
            // No limit may make an unchecked signature milder than a bad one.
            "mx.example.com; smime=permerror (message larger than 8192 bytes not verified)"
        ),
        "{}",
        added[0]
    );
    assert!(r.new_body().is_none(), "body untouched");
}

/// A key table of the test PKI entries `names`, with copies of the keys the
/// milter's user can read after dropping root (a reload reads them as that user).
fn owned_key_table(dir: &std::path::Path, names: &[&str]) -> String {
    let mut t = String::new();
    for n in names {
        let cert = dir.join(format!("{n}.pem"));
        let key = dir.join(format!("{n}.key"));
        std::fs::copy(pki().path(&format!("{n}.chain.pem")), &cert).unwrap();
        std::fs::copy(pki().path(&format!("{n}.key")), &key).unwrap();
        set_mode(&key, 0o600);
        if is_root() {
            run(std::process::Command::new("chown").arg("nobody").arg(&key));
        }
        t.push_str(&format!(
            "[[signing.key]]\nsender = \"{n}@example.com\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    t
}

fn signs(m: &Milter, qid: &str, from: &str) -> bool {
    let raw = format!("From: {from}\r\nSubject: reload\r\n\r\nhi\r\n");
    let (headers, body) = split_message(raw.as_bytes());
    let r = send_parts(
        &m.socket_path,
        "127.0.0.1",
        qid,
        from,
        &["x@example.net"],
        &headers,
        &body,
    );
    r.new_body().is_some()
}

#[test]
fn sigusr1_reloads_the_key_table_and_a_broken_config_keeps_the_old_one() {
    let keys = tempdir();
    let m = Milter::start("", &owned_key_table(keys.path(), &["alice"]));
    assert!(signs(&m, "R1", "alice@example.com"));
    assert!(!signs(&m, "R2", "bob@example.com"), "bob has no key yet");

    // Add bob's key and reload.
    let cfg = m.dir.path().join("smime-milter.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("{text}\n{}", owned_key_table(keys.path(), &["bob"])),
    )
    .unwrap();
    unsafe { libc::kill(m.pid() as i32, libc::SIGUSR1) };
    let log = m.wait_log("configuration reloaded");
    assert!(
        log.contains("configuration reloaded") && log.contains("2 signing keys"),
        "{log}"
    );
    assert!(
        signs(&m, "R3", "bob@example.com"),
        "the next message uses the new table"
    );

    // A broken file: logged, and the running configuration stays.
    std::fs::write(
        &cfg,
        format!(
            "{}\nthis is = not = toml\n",
            std::fs::read_to_string(&cfg).unwrap()
        ),
    )
    .unwrap();
    unsafe { libc::kill(m.pid() as i32, libc::SIGUSR1) };
    let log = m.wait_log("reload failed");
    assert!(
        log.contains("reload failed, the previous configuration stays in force"),
        "{log}"
    );
    assert!(signs(&m, "R4", "bob@example.com"));
    assert!(signs(&m, "R5", "alice@example.com"));
}

#[test]
fn broken_packets_close_the_connection_and_the_milter_serves_on() {
    use std::io::{Read, Write};
    let m = Milter::start("", &pki().key_table());
    let cases: [(&[u8], &str); 4] = [
        // 2 GiB announced: refused before anything is allocated.
        (
            &[0x7f, 0xff, 0xff, 0xff, b'B'],
            "packet of 2147483647 bytes announced",
        ),
        (&[0, 0, 0, 0], "empty packet"),
        (&[0, 0, 0, 1, b'Z'], "unknown command 'Z'"),
        (&[0, 0, 0, 3, b'L', b'x', b'y'], "malformed header packet"),
    ];
    for (bytes, logged) in cases {
        let mut s = std::os::unix::net::UnixStream::connect(&m.socket_path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(bytes).unwrap();
        let mut buf = [0u8; 16];
        // Closed without a reply (the MTA then applies its default action).
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "{logged}");
        let log = m.wait_log(logged);
        assert!(
            log.contains(&format!("closing the MTA connection: {logged}")),
            "{log}"
        );
    }
    assert!(signs(&m, "AFTER1", "alice@example.com"));
}

/// Found by fuzzing: a header name with a multi-byte character across its
/// eighth byte made the outbound path panic (a tempfail every time).
#[test]
fn odd_header_names_are_signed_not_deferred() {
    let m = Milter::start("", &pki().key_table());
    let (mut headers, body) =
        split_message(b"From: alice@example.com\r\nSubject: odd\r\n\r\nhi\r\n");
    headers.push(("Conten\u{FFFD}\u{FFFD}".into(), "x".into()));
    let r = send_parts(
        &m.socket_path,
        "127.0.0.1",
        "ODD1",
        "alice@example.com",
        &["x@example.net"],
        &headers,
        &body,
    );
    assert!(r.new_body().is_some(), "{:?}\n{}", r.reply, m.log());
}

#[test]
fn an_empty_decrypted_body_replaces_the_ciphertext() {
    // AES-GCM (authenticated), so the plaintext is released: its body is empty.
    let der = openssl_encrypt("carol", b"Content-Type: text/plain\r\n\r\n", "-aes-256-gcm");
    let b64 = pipe(std::process::Command::new("base64"), &der).stdout;
    let mut msg = b"From: Sender <sender@example.net>\r\nTo: carol@example.com\r\n\
        Subject: empty\r\nMIME-Version: 1.0\r\n\
        Content-Type: application/pkcs7-mime; smime-type=authEnveloped-data; name=\"smime.p7m\"\r\n\
        Content-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    msg.extend_from_slice(&b64);
    let m = Milter::start(
        "",
        &format!("[decrypt]\nenabled = true\n{}", pki().key_table()),
    );
    let (headers, body) = split_message(&msg);
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("192.0.2.7").unwrap();
    let r = c
        .message(
            "E0",
            None,
            "sender@example.net",
            &["carol@example.com"],
            &headers,
            &body,
        )
        .unwrap();
    assert!(
        matches!(r.reply, Reply::Continue | Reply::Accept),
        "{:?}",
        r.reply
    );
    assert_eq!(
        r.new_body(),
        Some(Vec::new()),
        "{:?} {}",
        r.modifications,
        m.log()
    );
}

#[test]
fn one_recipient_over_the_limit_gets_452_4_5_3() {
    let m = Milter::start("max_recipients = 2\n", &pki().key_table());
    let mut c = MilterClient::connect(&m.socket_path).unwrap();
    c.connect_info("127.0.0.1").unwrap();
    let (headers, body) = split_message(b"From: alice@example.com\r\n\r\nhi\r\n");
    let r = c
        .message(
            "R3",
            None,
            "alice@example.com",
            &["a@example.net", "b@example.net", "c@example.net"],
            &headers,
            &body,
        )
        .unwrap();
    // The client stops at the first recipient refused: the third.
    assert!(
        matches!(&r.reply, Reply::Code(t) if t.starts_with("452 4.5.3")),
        "{:?}",
        r.reply
    );
}

#[test]
fn three_thousand_idle_connections_meet_the_cap_cleanly() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    // 3,000 sockets here and over 1,000 in the milter (which inherits this).
    let want = 10_000;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
        if !can_run((!ok).then(|| format!("cannot raise the open-files limit to {want}"))) {
            return;
        }
    }
    let m = Milter::start("max_mta_connections = 1000\n", &pki().key_table());
    let held: Vec<UnixStream> = (0..3000)
        .map(|_| UnixStream::connect(&m.socket_path).unwrap())
        .collect();
    m.wait_log("refusing new ones");
    // Those beyond the cap are closed by the milter: EOF, not a wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        let refused = held
            .iter()
            .filter(|s| {
                s.set_nonblocking(true).unwrap();
                matches!((&**s).read(&mut [0u8; 1]), Ok(0))
            })
            .count();
        if refused >= 2000 || std::time::Instant::now() > deadline {
            break refused;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(refused, 2000, "{}", m.log());
    let threads = proc_status_kb(m.pid(), "Threads:");
    assert!(threads <= 1000 + 20, "{threads} threads");
    let log = m.log();
    assert_eq!(
        log.matches("refusing new ones").count(),
        1,
        "said once: {log}"
    );

    // Once they are gone, a new connection is served.
    drop(held);
    let raw = data("plain.eml");
    let (headers, body) = split_message(&raw);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut c = MilterClient::connect(&m.socket_path).unwrap();
        let served = c.connect_info("127.0.0.1").is_ok()
            && c.message(
                "CAP",
                None,
                "alice@example.com",
                &["bob@example.net"],
                &headers,
                &body,
            )
            .is_ok_and(|r| r.new_body().is_some());
        if served {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", m.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(m
        .wait_log("accepting MTA connections again")
        .contains("again"));
}
