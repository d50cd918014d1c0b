//! The milter binary driven by Debian's `miltertest` (an independent milter
//! client) through the scripts in tests/miltertest/. Debian 12's miltertest
//! crashes when a milter replaces a body larger than 1 KB (OpenDKIM issue
//! #66), so the paths that sign are driven by tests/milter_protocol.rs.

mod common;
use common::*;
use std::process::Command;

fn miltertest(m: &Milter, script: &str) {
    let dir = project_dir().join("tests/miltertest");
    let out = run(Command::new("miltertest")
        .arg("-D")
        .arg(format!("socket={}", m.spec()))
        .arg("-D")
        .arg(format!("dir={}", dir.display()))
        .arg("-s")
        .arg(dir.join(script)));
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}\nmilter log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
}

#[test]
fn sender_without_key_is_accepted_unchanged() {
    let m = Milter::start("", &pki().key_table());
    miltertest(&m, "nokey.lua");
    let log = m.wait_log("action=unchanged");
    assert!(
        log.contains("no signing key for <someone@unknown.example>"),
        "{log}"
    );
}

#[test]
fn sender_without_key_can_tempfail() {
    let m = Milter::start(
        "[actions]\nkey_not_found = \"tempfail\"\n",
        &pki().key_table(),
    );
    miltertest(&m, "nokey_tempfail.lua");
    let log = m.wait_log("action=tempfail");
    assert!(log.contains("action=tempfail verdict=tempfail"), "{log}");
}

#[test]
fn malformed_input_is_accepted_unchanged() {
    let m = Milter::start("", &pki().key_table());
    miltertest(&m, "malformed.lua");
    let log = m.wait_log("action=unchanged");
    assert!(log.contains("multipart entity without a boundary"), "{log}");
}

#[test]
fn external_client_is_inbound() {
    let m = Milter::start("", &pki().key_table());
    miltertest(&m, "inbound.lua");
    let log = m.wait_log("inbound");
    assert!(log.contains("MT0001: inbound action=unchanged"), "{log}");
}

#[test]
fn authenticated_client_cannot_use_us_as_a_signing_oracle() {
    let m = Milter::start("", &pki().key_table());
    miltertest(&m, "oracle.lua");
    let log = m.wait_log("action=unchanged");
    assert!(
        log.contains("outbound action=unchanged")
            && log.contains("login 'mallory' may not sign as <alice@example.com>"),
        "{log}"
    );
}
