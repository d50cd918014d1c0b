//! A fleet of gateways: certificates harvested into the directory (two
//! slapd providers replicating each other, one milter on each), and the
//! Prometheus metrics endpoint, scraped with Prometheus's own parser.

mod common;
use common::milter_client::{send_one, MessageResult};
use common::slapd::{
    fleet_ldif, Slapd, BASE_DN, CONTACTS_DN, HARVESTER_DN, HARVESTER_PW, ROOT_DN, ROOT_PW,
};
use common::*;
use smime_milter::harvest_ldap::{DirectoryStore, EntryClass, Written};
use smime_milter::ldap::LdapSettings;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ENTITY: &str = "Content-Type: text/plain; charset=us-ascii\r\n\r\nHello from Dave.\r\n";

/// A message dave@example.net signed with openssl.
fn from_dave() -> Vec<u8> {
    let mut msg =
        b"From: Dave <dave@example.net>\nTo: alice@example.com\nSubject: hello\n".to_vec();
    msg.extend_from_slice(&openssl_sign("dave", "sha256", ENTITY.as_bytes()));
    // CRLF throughout, as the MTA passes it (openssl writes its header in LF).
    let mut out = Vec::with_capacity(msg.len() + 64);
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\n' && (i == 0 || msg[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

const REPLY: &[u8] =
    b"From: alice@example.com\r\nTo: dave@example.net\r\nSubject: Re: hello\r\n\r\nThe reply.\r\n";

fn password_file(dir: &Path) -> String {
    let p = dir.join("harvest.pw");
    std::fs::write(&p, format!("{HARVESTER_PW}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// A node: verifies inbound mail, harvests into the directory at `uri`,
/// encrypts outbound mail when it has a certificate; `extra` goes last.
fn node_tables(uri: &str, pw: &str, extra: &str) -> String {
    format!(
        "[verify]\ntrust_anchors = \"{root}\"\n\
         [encrypt]\ndefault_policy = \"opportunistic\"\n\
         [ldap]\nuris = [\"{uri}\"]\nbase_dn = \"{BASE_DN}\"\nsearch_timeout = \"3s\"\n\
         [harvest]\nstore = \"ldap\"\nldap_base = \"{CONTACTS_DN}\"\nldap_bind_dn = \"{HARVESTER_DN}\"\nldap_bind_password_file = \"{pw}\"\n\
         {extra}\n[[signing.key]]\nsender = \"alice@example.com\"\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n",
        root = pki().path("root.crt").display(),
        cert = pki().path("alice.chain.pem").display(),
        key = pki().path("alice.key").display(),
    )
}

fn inbound(m: &Milter, qid: &str, raw: &[u8]) -> (MessageResult, Vec<u8>) {
    send_one(
        &m.socket_path,
        "192.0.2.25",
        qid,
        "dave@example.net",
        &["alice@example.com"],
        raw,
    )
}

fn outbound(m: &Milter, qid: &str, to: &str, raw: &[u8]) -> (MessageResult, Vec<u8>) {
    send_one(
        &m.socket_path,
        "127.0.0.1",
        qid,
        "alice@example.com",
        &[to],
        raw,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for the entry on a server (replication takes a moment).
fn wait_entry(s: &Slapd, dn: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = s.search_dn(dn) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "{dn} never appeared on {}",
            s.uri()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const DAVE_DN: &str = "cn=dave@example.net,ou=contacts,dc=example,dc=com";

#[test]
fn a_signer_learnt_by_one_node_encrypts_replies_leaving_through_another() {
    let (ldap_a, ldap_b) = Slapd::start_pair(&fleet_ldif());
    let d = tempdir();
    let pw = password_file(d.path());
    // Debug on A: the "kept" decision is logged at that level.
    let a = Milter::start(
        "log_level = \"debug\"",
        &node_tables(&ldap_a.uri(), &pw, ""),
    );
    let b = Milter::start("", &node_tables(&ldap_b.uri(), &pw, ""));

    // Nobody knows dave yet: a reply would leave in plaintext.
    let (r, out) = outbound(&a, "A0", "dave@example.net", REPLY);
    assert!(!text(&out).contains("enveloped-data"), "{r:?}");
    assert!(a
        .wait_log("A0: ")
        .contains("no usable certificate for <dave@example.net>"));

    // Dave writes in through node A: verified, and learnt by the directory.
    let (r, out) = inbound(&a, "A1", &from_dave());
    assert!(
        text(&out).contains("smime=pass") && text(&out).contains("dave@example.net"),
        "{r:?}\n{}",
        a.log()
    );
    let log = a.wait_log("A1: harvested dave@example.net into the directory (added)");
    assert!(
        log.contains("A1: harvested dave@example.net into the directory (added)"),
        "{log}"
    );
    // The entry, on both servers: A's by the write, B's by replication.
    for s in [&ldap_a, &ldap_b] {
        let entry = wait_entry(s, DAVE_DN);
        assert!(
            entry.contains("userCertificate;binary:: ")
                && entry.contains("userSMIMECertificate:: ")
                && entry.contains("mail: dave@example.net")
                && entry.contains("objectClass: inetOrgPerson"),
            "{entry}"
        );
    }

    // Dave's reply from alice leaves through node B: encrypted to him.
    let (r, out) = outbound(&b, "B1", "dave@example.net", REPLY);
    assert!(text(&out).contains("enveloped-data"), "{r:?}\n{}", b.log());
    let inner = openssl_decrypt(&out, "dave").expect("dave can read it");
    assert!(text(&inner).contains("The reply."));
    // And through node A, whose cache the write emptied for dave.
    let (_, out) = outbound(&a, "A2", "dave@example.net", REPLY);
    assert!(openssl_decrypt(&out, "dave").is_ok(), "{}", a.log());

    // The same certificate again: the entry is kept as it is.
    let (_, _) = inbound(&a, "A3", &from_dave());
    let log = a.wait_log("A3: harvest: the directory keeps its certificate for dave@example.net");
    assert!(
        log.contains("A3: harvest: the directory keeps its certificate for dave@example.net")
            && !log.contains("A3: harvested"),
        "{log}"
    );

    // A valid certificate for one of our own addresses (alice has a key
    // here) is never published as hers.
    let mut own = b"From: alice@example.com\nTo: bob@example.com\nSubject: hi\n".to_vec();
    own.extend_from_slice(&openssl_sign("alice", "sha256", ENTITY.as_bytes()));
    let own = String::from_utf8_lossy(&own)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let (_, out) = inbound(&a, "A4", own.as_bytes());
    assert!(text(&out).contains("smime=pass"), "{}", a.log());
    let log = a.wait_log("A4: inbound");
    assert!(log.contains("harvest=skipped(own address)"), "{log}");
    assert!(ldap_a
        .search_dn("cn=alice@example.com,ou=contacts,dc=example,dc=com")
        .is_none());
}

/// A `DirectoryStore` on one server, as root.
fn store_on(s: &Slapd) -> DirectoryStore {
    DirectoryStore::new(store_settings(s), EntryClass::InetOrgPerson, 10)
}

/// A certificate for `address` from the test intermediate, valid `days`.
fn cert_for(address: &str, days: u32, dir: &Path, name: &str) -> openssl::x509::X509 {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let crt = dir.join(format!("{name}.crt"));
    let ext = dir.join(format!("{name}.ext"));
    std::fs::write(
        &ext,
        format!("keyUsage = critical, digitalSignature\nextendedKeyUsage = emailProtection\nsubjectAltName = email:{address}\n"),
    )
    .unwrap();
    let ok = |c: &mut Command| {
        let o = run(c);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    ok(Command::new("openssl")
        .args(["x509", "-req", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(pki().path("inter.crt"))
        .arg("-CAkey")
        .arg(pki().path("inter.key"))
        .arg("-CAserial")
        .arg(dir.join("inter.srl"))
        .arg("-CAcreateserial")
        .args(["-days", &days.to_string(), "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&crt));
    openssl::x509::X509::from_pem(&std::fs::read(&crt).unwrap()).unwrap()
}

fn signer(cert: &openssl::x509::X509) -> smime_milter::pki::SignerCert {
    let inter =
        openssl::x509::X509::from_pem(&std::fs::read(pki().path("inter.crt")).unwrap()).unwrap();
    let root =
        openssl::x509::X509::from_pem(&std::fs::read(pki().path("root.crt")).unwrap()).unwrap();
    smime_milter::pki::SignerCert {
        cert: cert.clone(),
        chain: vec![inter, root],
        caps: None,
    }
}

#[test]
fn directory_entries_are_replaced_only_by_longer_validity_and_managed_by_certs() {
    let ldap = Slapd::start(&fleet_ldif());
    let d = tempdir();
    let store = store_on(&ldap);
    let deadline = || Instant::now() + Duration::from_secs(10);
    let mid = cert_for("erin@example.org", 200, d.path(), "mid");
    let short = cert_for("Erin@Example.org", 100, d.path(), "short");
    let long = cert_for("erin@example.org", 300, d.path(), "long");
    let serial = |c: &openssl::x509::X509| {
        c.serial_number()
            .to_bn()
            .unwrap()
            .to_hex_str()
            .unwrap()
            .to_string()
    };

    let erin = "erin@example.org";
    let w = |c| store.store(&signer(c), erin, deadline()).unwrap();
    assert_eq!(w(&mid), Written::Added);
    assert_eq!(w(&short), Written::Kept);
    assert_eq!(w(&mid), Written::Kept);
    assert_eq!(w(&long), Written::Replaced);
    // Stored under the address it is given, whatever its case.
    assert_eq!(
        store
            .store(&signer(&long), "Erin@Example.ORG", deadline())
            .unwrap(),
        Written::Kept
    );
    // An address that is none is refused, nothing written.
    assert!(store.store(&signer(&long), "", deadline()).is_err());

    // A server that will not write (a read-only replica) passes the write
    // to the next one.
    let replica = Slapd::start_readonly(&fleet_ldif());
    let failover = DirectoryStore::new(
        LdapSettings {
            uris: vec![replica.uri(), ldap.uri()],
            ..store_settings(&ldap)
        },
        EntryClass::InetOrgPerson,
        10,
    );
    let frank = cert_for("frank@example.org", 100, d.path(), "frank");
    assert_eq!(
        failover
            .store(&signer(&frank), "frank@example.org", deadline())
            .unwrap(),
        Written::Added
    );
    let frank_dn = "cn=frank@example.org,ou=contacts,dc=example,dc=com";
    assert!(ldap.search_dn(frank_dn).is_some());
    assert!(replica.search_dn(frank_dn).is_none());
    drop(replica);

    // What the milter's LDAP lookup reads: the long one, with its chain
    // (the intermediate, not the root) in userSMIMECertificate.
    let found = smime_milter::ldap::Ldap::new(LdapSettings {
        base_dn: BASE_DN.into(),
        filter: "(mail=%s)".into(),
        ..store_settings(&ldap)
    })
    .lookup("erin@example.org", deadline())
    .unwrap();
    let mut serials: Vec<String> = found.iter().map(serial).collect();
    serials.sort();
    let inter =
        openssl::x509::X509::from_pem(&std::fs::read(pki().path("inter.crt")).unwrap()).unwrap();
    let mut expected = vec![serial(&long), serial(&long), serial(&inter)];
    expected.sort();
    assert_eq!(
        serials, expected,
        "userSMIMECertificate (with the chain) and userCertificate;binary"
    );

    // The admin command lists and removes entries of that store.
    let cfg = write_config(
        d.path(),
        "",
        &format!(
            "[encrypt]\ndefault_policy = \"opportunistic\"\n[ldap]\nuris = [\"{}\"]\nbase_dn = \"{BASE_DN}\"\n[harvest]\nstore = \"ldap\"\nldap_base = \"{CONTACTS_DN}\"\nldap_bind_dn = \"{ROOT_DN}\"\nldap_bind_password_file = \"{}\"\n",
            ldap.uri(),
            root_password_file(d.path())
        ),
    );
    let certs = |args: &[&str]| {
        let o = run(Command::new(bin())
            .arg("certs")
            .arg("-c")
            .arg(&cfg)
            .args(args));
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let (code, out, err) = certs(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("erin@example.org  [harvested, directory]")
            && out.contains(&format!("serial:    {}", serial(&long))),
        "{out}"
    );
    let (code, out, _) = certs(&["show", "erin@example.org"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("[ldap]"), "{out}");
    // An entry an unescaped DN would reach: `bob,cn=x@y.example` would read
    // as cn=bob under cn=x@y.example. Escaped, it reaches nothing.
    let child = "cn=bob,cn=x@y.example,ou=contacts,dc=example,dc=com";
    let ldif = format!(
        "dn: cn=x@y.example,ou=contacts,dc=example,dc=com\nobjectClass: inetOrgPerson\ncn: x@y.example\nsn: x\n\ndn: {child}\nobjectClass: inetOrgPerson\ncn: bob\nsn: bob\n"
    );
    let out = pipe(
        {
            let mut c = Command::new("ldapadd");
            c.args(["-x", "-H", &ldap.uri(), "-D", ROOT_DN, "-w", ROOT_PW]);
            c
        },
        ldif.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, _, _) = certs(&["remove", "bob,cn=x@y.example"]);
    assert_eq!(code, Some(1));
    assert!(ldap.search_dn(child).is_some());
    let (code, _, err) = certs(&["remove", "erin@example.org"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("removed cn=erin@example.org,ou=contacts,dc=example,dc=com"),
        "{err}"
    );
    assert!(ldap
        .search_dn("cn=erin@example.org,ou=contacts,dc=example,dc=com")
        .is_none());
    let (code, _, err) = certs(&["remove", "erin@example.org"]);
    assert_eq!(code, Some(1), "{err}");
    // An address cannot reach another entry: bob's, outside the OU, stays.
    let (code, _, _) = certs(&["remove", "bob,ou=people"]);
    assert_eq!(code, Some(1));
    assert!(ldap
        .search_dn("uid=bob,ou=people,dc=example,dc=com")
        .is_some());
}

fn store_settings(s: &Slapd) -> LdapSettings {
    LdapSettings {
        uris: vec![s.uri()],
        starttls: false,
        ca_pem: None,
        bind_dn: Some(ROOT_DN.into()),
        bind_password: Some(ROOT_PW.into()),
        base_dn: CONTACTS_DN.into(),
        filter: String::new(),
        connect_timeout: Duration::from_secs(3),
        search_timeout: Duration::from_secs(3),
        max_connections: 1,
        retry_after: Duration::from_secs(1),
    }
}

fn root_password_file(dir: &Path) -> String {
    let p = dir.join("root.pw");
    std::fs::write(&p, format!("{ROOT_PW}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// Scrapes with Python's prometheus_client (the OpenMetrics parser, which
/// refuses malformed text): the content type, then each sample as
/// `name{labels} value`.
fn scrape(port: u16) -> (String, BTreeMap<String, f64>) {
    let script = r#"
import sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
    print(r.headers.get('Content-Type'))
    text = r.read().decode()
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        labels = ','.join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print('%s{%s} %r' % (s.name, labels, s.value))
"#;
    let o = run(Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/metrics")));
    assert!(o.status.success(), "scrape: {}", text(&o.stderr));
    let out = text(&o.stdout);
    let mut lines = out.lines();
    let ctype = lines.next().unwrap_or_default().to_string();
    let samples = lines
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse::<f64>().unwrap()))
        .collect();
    (ctype, samples)
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_count_messages_operations_and_caches() {
    let d = tempdir();
    let port = free_port();
    let certs = cert_dir(&["carol"]);
    let m = Milter::start(
        "",
        &format!(
            "[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
             [verify]\ntrust_anchors = \"{}\"\n\
             [harvest]\nenabled = false\n[decrypt]\nenabled = true\n\
             [encrypt]\ndefault_policy = \"opportunistic\"\ncerts_dir = \"{}\"\n{}",
            pki().path("root.crt").display(),
            certs.path().display(),
            pki().key_table()
        ),
    );
    let _ = d;
    assert!(m
        .log()
        .contains(&format!("metrics on http://127.0.0.1:{port}/metrics")));
    let health = http_get(port, "/health");
    assert!(
        health.starts_with("HTTP/1.1 200 OK") && health.ends_with("\r\n\r\nok\n"),
        "{health}"
    );
    assert!(http_get(port, "/other").starts_with("HTTP/1.1 404"));
    let (ctype, before) = scrape(port);
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let get = |s: &BTreeMap<String, f64>, k: &str| s.get(k).copied().unwrap_or(0.0);
    assert_eq!(get(&before, "smime_milter_messages_in_flight{}"), 0.0);
    assert!(
        before.contains_key("smime_milter_certificate_cache_hits_total{}"),
        "{before:?}"
    );

    // Two replies to carol (the second from the cache), one to dave (no
    // certificate: signed only), dave's signed message in.
    for (i, to) in ["carol@example.com", "carol@example.com", "dave@example.net"]
        .iter()
        .enumerate()
    {
        let (r, _) = outbound(&m, &format!("Q{i}"), to, REPLY);
        assert_eq!(r.reply, common::milter_client::Reply::Accept, "{}", m.log());
    }
    let (r, _) = inbound(&m, "Q9", &from_dave());
    assert_eq!(r.reply, common::milter_client::Reply::Accept);
    // And a message encrypted to alice (AES-GCM), decrypted at the gateway.
    let der = openssl_encrypt(
        "alice",
        b"Content-Type: text/plain\r\n\r\nThe secret.\r\n",
        "-aes-256-gcm",
    );
    let b64 = openssl::base64::encode_block(&der);
    let mut enc = b"From: dave@example.net\r\nTo: alice@example.com\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    for line in b64.as_bytes().chunks(76) {
        enc.extend_from_slice(line);
        enc.extend_from_slice(b"\r\n");
    }
    let (_, out) = inbound(&m, "Q10", &enc);
    assert!(text(&out).contains("The secret."), "{}", m.log());
    // A message is counted once its answer is out: scraped until all are.
    let total = |s: &BTreeMap<String, f64>| {
        s.iter()
            .filter(|(k, _)| k.starts_with("smime_milter_messages_total{"))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let (_, s) = scrape(port);
        if total(&s) - total(&before) >= 5.0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let moved = |k: &str| get(&after, k) - get(&before, k);
    let out = |action: &str| {
        format!("smime_milter_messages_total{{action=\"{action}\",direction=\"outbound\",smime=\"none\"}}")
    };
    assert_eq!(moved(&out("signed+encrypted")), 2.0, "{after:?}");
    assert_eq!(moved(&out("signed")), 1.0, "{after:?}");
    assert_eq!(
        moved(
            "smime_milter_messages_total{action=\"verified\",direction=\"inbound\",smime=\"pass\"}"
        ),
        1.0,
        "{after:?}"
    );
    let count = |op: &str| {
        moved(&format!(
            "smime_milter_operation_seconds_count{{operation=\"{op}\"}}"
        ))
    };
    assert_eq!(count("sign"), 3.0);
    assert_eq!(count("encrypt"), 2.0);
    assert_eq!(count("verify"), 1.0);
    assert_eq!(count("decrypt"), 1.0);
    assert_eq!(
        moved("smime_milter_decrypt_total{outcome=\"decrypted\"}"),
        1.0,
        "{after:?}"
    );
    assert_eq!(
        moved("smime_milter_messages_total{action=\"decrypted\",direction=\"inbound\",smime=\"none\"}"),
        1.0,
        "{after:?}"
    );
    assert!(
        get(
            &after,
            "smime_milter_operation_seconds_sum{operation=\"sign\"}"
        ) > 0.0
    );
    assert_eq!(
        get(
            &after,
            "smime_milter_operation_seconds_bucket{le=\"+Inf\",operation=\"sign\"}"
        ),
        3.0
    );
    assert_eq!(moved("smime_milter_certificate_cache_hits_total{}"), 1.0);
    assert_eq!(moved("smime_milter_certificate_cache_misses_total{}"), 2.0);
    assert_eq!(get(&after, "smime_milter_messages_in_flight{}"), 0.0);
    assert_eq!(get(&after, "smime_milter_directory_errors_total{}"), 0.0);
}

#[test]
fn harvest_writes_wait_for_the_reply_and_their_queue_is_bounded() {
    let ldap = Slapd::start(&fleet_ldif());
    let d = tempdir();
    let pw = root_password_file(d.path());
    let port = free_port();
    let m = Milter::start(
        "",
        &format!(
            "[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
             [verify]\ntrust_anchors = \"{root}\"\n\
             [encrypt]\ndefault_policy = \"opportunistic\"\n\
             [ldap]\nuris = [\"{uri}\"]\nbase_dn = \"{BASE_DN}\"\nsearch_timeout = \"30s\"\nconnect_timeout = \"30s\"\n\
             [harvest]\nstore = \"ldap\"\nldap_base = \"{CONTACTS_DN}\"\nldap_bind_dn = \"{ROOT_DN}\"\nldap_bind_password_file = \"{pw}\"\nmax_pending = 1\n",
            root = pki().path("root.crt").display(),
            uri = ldap.uri(),
        ),
    );
    // The directory takes connections and answers nothing.
    ldap.pause();
    let started = Instant::now();
    for i in 0..4 {
        let (r, out) = inbound(&m, &format!("P{i}"), &from_dave());
        assert_eq!(r.reply, common::milter_client::Reply::Accept);
        assert!(text(&out).contains("smime=pass"), "{}", m.log());
    }
    // Every message had its answer while no write could be made, well
    // before a write could have timed out (30 s).
    assert!(started.elapsed() < Duration::from_secs(25));
    assert!(!m.log().contains("into the directory ("), "{}", m.log());
    let log = m.wait_log("harvest into the directory skipped: 1 writes already pending");
    assert!(log.contains("skipped: 1 writes already pending"), "{log}");
    ldap.unpause();
    let log = m.wait_log("harvested dave@example.net into the directory (added)");
    assert!(
        log.contains("P0: harvested dave@example.net into the directory (added)"),
        "{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, s) = scrape(port);
        let g = |k: &str| s.get(k).copied().unwrap_or(0.0);
        let (queued, written, unchanged, dropped) = (
            g("smime_milter_harvest_queued_total{}"),
            g("smime_milter_harvest_written_total{}"),
            g("smime_milter_harvest_unchanged_total{}"),
            g("smime_milter_harvest_dropped_total{}"),
        );
        assert_eq!(queued + dropped, 4.0, "{s:?}");
        assert!(dropped >= 2.0, "{s:?}");
        if written + unchanged == queued {
            assert_eq!(written, 1.0, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
