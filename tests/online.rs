//! Revocation and chain completion online, against real components on
//! 127.0.0.1: a CA (tests/pki/make-online-pki.sh) whose web server
//! (tests/pki/online-server.py) serves its CRLs and intermediate, and
//! answers OCSP with `openssl ocsp` over the CA's index.txt. The server
//! logs every request, so tests count what the milter fetched.

mod common;
use common::online::Ca;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const AUTHSERV: &str = "mx.online.test";

/// A milter verifying with the CA's root as trust anchor (as a PKCS#7
/// bundle, the form AD CS exports) and these `[online]` keys.
fn milter(ca: &Ca, online: &str) -> Milter {
    Milter::start(
        &format!("authserv_id = \"{AUTHSERV}\"\nstats_interval = \"1s\"\n"),
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n[online]\n{online}\n",
            ca.path("root.p7b").display()
        ),
    )
}

const LOOPBACK: &str = "allow_networks = [\"127.0.0.1/32\"]";

/// Our Authentication-Results value, unfolded.
fn verdict(m: &Milter, msg: &[u8]) -> String {
    let (r, out) = milter_client::send_one(
        &m.socket_path,
        "192.0.2.1",
        "Q1",
        "sender@example.org",
        &["someone@example.net"],
        msg,
    );
    assert_ne!(r.reply, milter_client::Reply::Tempfail, "{}", m.log());
    let text = String::from_utf8_lossy(&out).replace("\r\n", "\n");
    let head = text
        .split("\n\n")
        .next()
        .unwrap_or("")
        .replace("\n\t", " ")
        .replace("\n ", " ");
    head.lines()
        .filter_map(|l| l.strip_prefix("Authentication-Results: "))
        .find(|v| v.starts_with(AUTHSERV))
        .unwrap_or_else(|| panic!("no verdict in {text}\n{}", m.log()))
        .to_string()
}

fn assert_result(v: &str, want: &str) {
    assert!(
        v.contains(&format!("smime={want}")),
        "want smime={want}: {v}"
    );
}

#[test]
fn ocsp_answers_decide_and_are_cached() {
    let ca = Ca::start();
    let m = milter(&ca, LOOPBACK);

    let v = verdict(&m, &ca.signed("good", true));
    assert_result(&v, "pass");
    assert!(!v.contains("revocation"), "{v}");
    // A short request goes by GET (RFC 5019), which caches can serve.
    assert_eq!(ca.requests("GET /ocsp/good/"), 1, "{}", ca.all_requests());
    // The intermediate's status came from the root's CRL (its distribution point).
    assert_eq!(ca.requests("GET /root.crl"), 1, "{}", ca.all_requests());

    // The second message is answered from the caches: no request at all.
    let before = ca.all_requests().lines().count();
    assert_result(&verdict(&m, &ca.signed("good", true)), "pass");
    assert_eq!(
        ca.all_requests().lines().count(),
        before,
        "{}",
        ca.all_requests()
    );

    let v = verdict(&m, &ca.signed("revoked", true));
    assert_result(&v, "fail");
    assert!(v.contains("certificate revoked: key compromise"), "{v}");
    assert_eq!(ca.ocsp("revoked"), 1);

    let stats = m.wait_log(" ocsp requests=2 ");
    assert!(
        stats.contains(" ocsp requests=2 crl fetches=1 aia fetches=0 online cache hits="),
        "{stats}"
    );
}

#[test]
fn crl_distribution_points_decide() {
    let ca = Ca::start();
    let m = milter(&ca, &format!("{LOOPBACK}\nocsp = false"));
    assert_result(&verdict(&m, &ca.signed("crlgood", true)), "pass");
    let v = verdict(&m, &ca.signed("crlrevoked", true));
    assert_result(&v, "fail");
    assert!(v.contains("certificate revoked"), "{v}");
    // One fetch of each CRL for both messages.
    assert_eq!(ca.requests("GET /inter.crl"), 1, "{}", ca.all_requests());
    assert_eq!(ca.requests("GET /root.crl"), 1, "{}", ca.all_requests());
    // With OCSP off, the OCSP URLs of the other leaves are not asked either.
    assert_result(&verdict(&m, &ca.signed("good", true)), "pass");
    assert_eq!(ca.requests("GET /ocsp") + ca.requests("POST /ocsp"), 0);
}

#[test]
fn a_burst_of_messages_fetches_a_crl_once() {
    let ca = Ca::start();
    let m = milter(&ca, &format!("{LOOPBACK}\nocsp = false"));
    let msg = ca.signed("slowcrl", true);
    // Six messages at once; the CRL takes a second to come.
    let verdicts: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| verdict(&m, &msg))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for v in &verdicts {
        assert_result(v, "pass");
    }
    assert_eq!(
        ca.requests("GET /slow/inter.crl"),
        1,
        "{}",
        ca.all_requests()
    );
    assert_eq!(ca.requests("GET /root.crl"), 1, "{}", ca.all_requests());
}

#[test]
fn unreachable_responders_pass_in_soft_mode_and_defer_in_hard_mode() {
    let ca = Ca::start();
    let soft = milter(&ca, LOOPBACK);
    let v = verdict(&soft, &ca.signed("down", true));
    assert_result(&v, "pass");
    assert!(v.contains("revocation status unknown"), "{v}");
    let log = soft.wait_log("online: OCSP http://127.0.0.1");
    assert!(
        log.contains("online: OCSP http://127.0.0.1"),
        "the failure is logged: {log}"
    );

    let hard = milter(&ca, &format!("{LOOPBACK}\nrevocation = \"hard\""));
    let v = verdict(&hard, &ca.signed("down", true));
    assert_result(&v, "temperror");
    assert!(v.contains("revocation status unknown"), "{v}");
    // An HTTP error is no answer either.
    assert_result(&verdict(&hard, &ca.signed("flaky", true)), "temperror");
    assert_eq!(
        ca.requests("POST /broken/") + ca.requests("GET /broken/"),
        1
    );
    // A certificate whose responder answers is not held back by hard mode.
    assert_result(&verdict(&hard, &ca.signed("good", true)), "pass");

    // A responder that takes the connection and never answers: after its
    // whole timeout that is no answer (soft: pass). With the message's
    // budget then spent on the CRL URL (as silent): temperror even in
    // soft mode, since a sender could spend the budget on purpose.
    let short = Milter::start(
        &format!("authserv_id = \"{AUTHSERV}\"\nlookup_budget = \"3s\"\n"),
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n[online]\n{LOOPBACK}\ntimeout = \"2s\"\n",
            ca.path("root.crt").display()
        ),
    );
    let started = Instant::now();
    let v = verdict(&short, &ca.signed("silent", true));
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_result(&v, "temperror");
    assert!(v.contains("lookup time budget spent"), "{v}");
    // The OCSP URL timed out after its whole timeout: remembered, so the
    // next message spends no time on it, and its CRL URL gets the time
    // (and times out whole: no answer, soft pass). Then both are known
    // to fail: no wait at all.
    let v = verdict(&short, &ca.signed("silent", true));
    assert_result(&v, "pass");
    assert!(v.contains("revocation status unknown"), "{v}");
    let started = Instant::now();
    assert_result(&verdict(&short, &ca.signed("silent", true)), "pass");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // Off: no fetch at all, and no comment.
    let off = milter(
        &ca,
        &format!("{LOOPBACK}\nrevocation = \"off\"\naia_issuers = false"),
    );
    let before = ca.all_requests().lines().count();
    let v = verdict(&off, &ca.signed("revoked", true));
    assert_result(&v, "pass");
    assert_eq!(ca.all_requests().lines().count(), before);
}

#[test]
fn a_missing_intermediate_is_fetched_from_aia() {
    let ca = Ca::start();
    let m = milter(&ca, LOOPBACK);
    // DER certificate at the caIssuers URL.
    assert_result(&verdict(&m, &ca.signed("good", false)), "pass");
    assert_eq!(ca.requests("GET /inter.der"), 1, "{}", ca.all_requests());
    // PKCS#7 certs-only at the caIssuers URL.
    assert_result(&verdict(&m, &ca.signed("p7", false)), "pass");
    assert_eq!(ca.requests("GET /inter.p7c"), 1, "{}", ca.all_requests());
    // Cached: the next message without its intermediate fetches nothing.
    assert_result(&verdict(&m, &ca.signed("good", false)), "pass");
    assert_eq!(ca.requests("GET /inter.der"), 1);
    // Revocation still applies to a chain completed online.
    assert_result(&verdict(&m, &ca.signed("revoked", false)), "fail");

    // Without AIA the same message names the missing issuer as before.
    let off = milter(&ca, &format!("{LOOPBACK}\naia_issuers = false"));
    let v = verdict(&off, &ca.signed("good", false));
    assert_result(&v, "fail");
    assert!(v.contains("untrusted issuer"), "{v}");

    // A server that cannot give it: the reason says so, and it may be
    // temporary.
    drop(m);
    let bad = milter(&ca, LOOPBACK);
    std::fs::remove_file(ca.path("www/inter.der")).unwrap();
    let v = verdict(&bad, &ca.signed("good", false));
    assert_result(&v, "temperror");
    assert!(
        v.contains("issuer certificate not fetched: HTTP status 404"),
        "{v}"
    );
}

#[test]
fn urls_outside_the_allowed_networks_are_not_fetched() {
    let ca = Ca::start();
    // The default: public unicast only; 127.0.0.1 is not fetched from.
    let m = milter(&ca, "");
    let v = verdict(&m, &ca.signed("good", false));
    assert_result(&v, "fail");
    assert!(v.contains("not in allowed networks"), "{v}");
    // With the intermediate in the message, the OCSP URL is refused too:
    // soft mode passes with a comment.
    let v = verdict(&m, &ca.signed("good", true));
    assert_result(&v, "pass");
    assert!(v.contains("revocation status unknown"), "{v}");
    assert_eq!(ca.all_requests(), "", "nothing reached the server");

    // Loopback allowed, but a private address named by a certificate is not.
    let m = milter(&ca, LOOPBACK);
    let v = verdict(&m, &ca.signed("private", false));
    assert_result(&v, "fail");
    assert!(
        v.contains("10.255.255.1") && v.contains("not in allowed networks"),
        "{v}"
    );
    // Denied explicitly, although allowed.
    let m = milter(
        &ca,
        "allow_networks = [\"127.0.0.0/8\"]\ndeny_networks = [\"127.0.0.1\"]",
    );
    assert_result(&verdict(&m, &ca.signed("good", false)), "fail");
    assert_eq!(ca.all_requests(), "");
}

#[test]
fn answers_are_fetched_again_when_they_expire() {
    let ca = Ca::start();
    let m = milter(&ca, &format!("{LOOPBACK}\nmax_cache_age = \"2s\""));
    assert_result(&verdict(&m, &ca.signed("good", true)), "pass");
    assert_eq!(ca.ocsp("good"), 1);
    std::thread::sleep(Duration::from_millis(2500));
    assert_result(&verdict(&m, &ca.signed("good", true)), "pass");
    assert_eq!(ca.ocsp("good"), 2, "asked again after max_cache_age");

    // A CRL in use is fetched again before its nextUpdate, by the
    // refresher, without a message asking.
    // Due in 6 s: the refresher fetches it again 2 s before.
    let m = milter(&ca, &format!("{LOOPBACK}\nocsp = false"));
    ca.new_crl(Some(6));
    assert_result(&verdict(&m, &ca.signed("crlgood", true)), "pass");
    assert_eq!(ca.requests("GET /inter.crl"), 1);
    // Meanwhile the CA revokes crlgood; the refreshed CRL says so.
    ca.revoke("crlgood");
    ca.new_crl(Some(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while ca.requests("GET /inter.crl") < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ca.requests("GET /inter.crl"), 2, "{}", ca.all_requests());
    // The answer cached from the old CRL is not used any more.
    let v = verdict(&m, &ca.signed("crlgood", true));
    assert_result(&v, "fail");
    assert!(v.contains("certificate revoked"), "{v}");
}

/// `smime-milter test --outbound` encrypting to `rcpt`, with the CA's
/// rcpt-old, rcpt-new, lone and flaky certificates (without their
/// intermediate) in the local store.
fn outbound(ca: &Ca, rcpt: &str, online: &str) -> TestRun {
    let certs = ca.path("certs");
    let _ = std::fs::create_dir(&certs);
    for n in ["rcpt-old", "rcpt-new", "lone", "flaky"] {
        std::fs::copy(ca.path(&format!("{n}.crt")), certs.join(format!("{n}.pem"))).unwrap();
    }
    let cfg = write_config(
        ca.dir.path(),
        "",
        &format!(
            "[signing]\nenabled = false\n[verify]\ntrust_anchors = \"{}\"\n\
             [encrypt]\ncerts_dir = \"{}\"\ndefault_policy = \"required\"\nmissing_cert = \"reject\"\n\
             require_trusted_recipient_certs = true\n[online]\n{online}\n",
            ca.path("root.crt").display(),
            certs.display()
        ),
    );
    let msg = b"From: alice@example.com\r\nTo: x\r\nSubject: s\r\n\r\nsecret\r\n";
    test_mode(&cfg, &["--outbound", "--rcpt", rcpt], msg)
}

fn decrypts_with(ca: &Ca, message: &[u8], leaf: &str) -> bool {
    let mut cmd = Command::new("openssl");
    cmd.args(["cms", "-decrypt", "-recip"])
        .arg(ca.path(&format!("{leaf}.crt")))
        .arg("-inkey")
        .arg(ca.path(&format!("{leaf}.key")));
    let out = pipe(cmd, message);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("secret")
}

#[test]
fn a_revoked_recipient_certificate_is_not_used() {
    let ca = Ca::start();
    // rcpt-new expires later (the usual choice) but is revoked: rcpt-old is used.
    let r = outbound(&ca, "rcpt@example.org", LOOPBACK);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(decrypts_with(&ca, &r.stdout, "rcpt-old"), "{}", r.stderr);
    assert!(!decrypts_with(&ca, &r.stdout, "rcpt-new"));
    assert_eq!(ca.ocsp("rcpt"), 2, "{}", ca.all_requests());

    // Revocation off: the later one is chosen, as before.
    let r = outbound(
        &ca,
        "rcpt@example.org",
        &format!("{LOOPBACK}\nrevocation = \"off\""),
    );
    assert!(decrypts_with(&ca, &r.stdout, "rcpt-new"), "{}", r.stderr);

    // Only a revoked certificate: the recipient has none (required: refused).
    let r = outbound(&ca, "lone@example.org", LOOPBACK);
    assert_eq!(r.code, 69, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("no usable certificate for <lone@example.org>"),
        "{}",
        r.stderr
    );

    // A responder that fails: soft mode uses the certificate, hard mode
    // defers the message.
    let r = outbound(&ca, "flaky@example.org", LOOPBACK);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(decrypts_with(&ca, &r.stdout, "flaky"), "{}", r.stderr);
    let r = outbound(
        &ca,
        "flaky@example.org",
        &format!("{LOOPBACK}\nrevocation = \"hard\""),
    );
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(
        r.stderr.contains("revocation status unknown"),
        "{}",
        r.stderr
    );

    // The intermediate cannot be fetched now: deferred, not sent in plaintext.
    let mut ca = ca;
    stop_child(&mut ca.server);
    let r = outbound(&ca, "rcpt@example.org", LOOPBACK);
    assert_eq!(r.code, 75, "{}", r.stderr);
    assert!(
        r.stderr.contains("issuer certificate not fetched"),
        "{}",
        r.stderr
    );
}

#[test]
fn trust_anchors_from_a_der_pkcs7_bundle() {
    let ca = Ca::start();
    let der = ca.path("root-der.p7b");
    let st = Command::new("openssl")
        .args(["crl2pkcs7", "-nocrl", "-outform", "DER", "-certfile"])
        .arg(ca.path("root.crt"))
        .arg("-out")
        .arg(&der)
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = write_config(
        ca.dir.path(),
        &format!("authserv_id = \"{AUTHSERV}\""),
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n[online]\nrevocation = \"off\"\n",
            der.display()
        ),
    );
    let r = test_mode(&cfg, &["--inbound"], &ca.signed("good", true));
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("smime=pass"), "{out}\n{}", r.stderr);
}

#[test]
fn only_the_issuer_or_its_delegate_may_answer() {
    let ca = Ca::start();
    let m = milter(&ca, &format!("{LOOPBACK}\nrevocation = \"hard\""));
    // Signed by a key the issuer never authorized: no answer at all.
    let v = verdict(&m, &ca.signed("forged", true));
    assert_result(&v, "temperror");
    let log = m.wait_log("responder signature not valid");
    assert!(log.contains("responder signature not valid"), "{log}");
    // A delegated responder (id-kp-OCSPSigning, issued by the issuer) may.
    assert_result(&verdict(&m, &ca.signed("delegated", true)), "pass");
    assert_eq!(ca.ocsp("delegated"), 1);

    // With a nonce asked for, the responder's echo is checked.
    let nonce = format!("{LOOPBACK}\nrevocation = \"hard\"\nocsp_nonce = true");
    let m = milter(&ca, &nonce);
    assert_result(&verdict(&m, &ca.signed("good", true)), "pass");
    let v = verdict(&m, &ca.signed("revoked", true));
    assert_result(&v, "fail");
    // An old answer replayed: fine without a nonce, refused with one.
    let plain = milter(&ca, LOOPBACK);
    assert_result(&verdict(&plain, &ca.signed("replay", true)), "pass");
    let v = verdict(&m, &ca.signed("replay", true));
    assert_result(&v, "temperror");
    let log = m.wait_log("nonce missing or not ours");
    assert!(log.contains("nonce missing or not ours"), "{log}");
    assert_eq!(ca.ocsp("replay"), 2);
}

#[test]
fn fetches_are_bounded() {
    use smime_milter::fetch::{FetchError, Fetcher, NetPolicy};
    let ca = Ca::start();
    let base = std::fs::read_to_string(ca.path("good.ext")).unwrap();
    let base = base
        .split("caIssuers;URI:")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches("inter.der")
        .to_string();
    let policy = NetPolicy {
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        deny: Vec::new(),
    };
    let f = Fetcher::new(policy, Duration::from_secs(2), 1 << 20);
    let soon = || Instant::now() + Duration::from_secs(5);
    let der = std::fs::read(ca.path("www/inter.der")).unwrap();
    // One redirect is followed, a second is not.
    assert_eq!(
        f.get(&format!("{base}moved/inter.der"), soon()).unwrap(),
        der
    );
    assert!(matches!(
        f.get(&format!("{base}twice/inter.der"), soon()),
        Err(FetchError::Refused(_))
    ));
    // Larger than max_response_size: announced, or found while reading.
    for big in ["big", "bigstream"] {
        assert_eq!(
            f.get(&format!("{base}{big}"), soon()),
            Err(FetchError::TooLarge(1 << 20)),
            "{big}"
        );
    }
    // A redirect is checked like the first URL: not to a private address.
    match f.get(&format!("{base}elsewhere"), soon()) {
        Err(FetchError::NotAllowed(why)) => assert!(why.contains("10.255.255.1"), "{why}"),
        other => panic!("{other:?}"),
    }
    // HTTP errors are transient failures.
    let e = f.get(&format!("{base}nothing"), soon()).unwrap_err();
    assert!(e.transient() && e.to_string().contains("404"), "{e}");

    // A server that accepts and never answers: the timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x", silent.local_addr().unwrap());
    let started = Instant::now();
    let e = f.get(&url, soon()).unwrap_err();
    assert!(e.transient(), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The message's budget is the limit when it is shorter.
    let started = Instant::now();
    let e = f.get(&url, Instant::now() + Duration::from_millis(300));
    assert!(e.is_err());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
