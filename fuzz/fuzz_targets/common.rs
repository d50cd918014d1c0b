//! Shared by the fuzz targets: the configuration contrib/fuzz.sh writes
//! (test PKI, verification, decryption, signing and encryption), loaded once.
#![allow(dead_code)]

use smime_milter::config::Config;
use smime_milter::policy::Direction;
use smime_milter::testmode::{self, TestArgs};
use std::sync::{Arc, OnceLock};

fn config() -> Arc<Config> {
    static CFG: OnceLock<Arc<Config>> = OnceLock::new();
    CFG.get_or_init(|| {
        let path = std::env::var_os("SMIME_FUZZ_CONFIG")
            .expect("SMIME_FUZZ_CONFIG: run the targets through contrib/fuzz.sh");
        Arc::new(Config::load(path.as_ref()).expect("fuzz configuration loads"))
    })
    .clone()
}

/// Runs one message through the milter's session code as `smime-milter
/// test` does. A finding: a crash, a hang, runaway memory, or (the inbound
/// property) a header value we emit that is not one safe field: a CR, NUL
/// or LF that is not our folding, or a line over 998 octets.
pub fn run(direction: Direction, input: &[u8]) {
    let args = TestArgs {
        direction: Some(direction),
        sender: Some("alice@example.com".into()),
        recipients: vec!["bob@example.com".into(), "carol@example.com".into()],
        client_ip: None,
        auth_user: None,
    };
    let p = testmode::process(config(), &args, input);
    if direction != Direction::Inbound {
        return;
    }
    for op in &p.outcome.changes.headers {
        assert!(
            op.unsafe_name().is_none(),
            "unsafe header value emitted: {op:?}"
        );
    }
    if let Some(line) = &p.summary {
        assert!(!line.contains(['\r', '\n', '\0']), "log line split: {line:?}");
    }
}

/// Serves `stream` as one MTA connection; replies go nowhere.
pub fn milter_connection(stream: &[u8]) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| smime_milter::reload::install_config(config()));
    thread_local! {
        static BUFFERS: std::cell::RefCell<smime_milter::protocol::Buffers> = Default::default();
    }
    BUFFERS.with_borrow_mut(|b| {
        let _ = smime_milter::connection::serve(stream, std::io::sink(), b);
    });
}
