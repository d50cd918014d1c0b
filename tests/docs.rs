//! The documentation matches the code: every configuration key the code
//! accepts is in the sample configuration and the manual page, and the page
//! is the one the generator makes from the sample.

mod common;
use common::*;
use smime_milter::config::KNOWN_KEYS;
use std::collections::BTreeSet;
use std::process::Command;

fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap()
}

#[test]
fn manual_page_is_generated_from_the_sample_configuration() {
    let out = run(Command::new("python3").arg(project_dir().join("contrib/gen-manpage.py")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(project_dir().join("doc/smime-milter.toml.5")).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == page,
        "doc/smime-milter.toml.5 is stale: run python3 contrib/gen-manpage.py > doc/smime-milter.toml.5"
    );
}

#[test]
fn manual_page_documents_exactly_the_keys_the_code_accepts() {
    let page = std::fs::read_to_string(project_dir().join("doc/smime-milter.toml.5")).unwrap();
    let documented: BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("\\fB"))
        .filter_map(|l| l.split_once("\\fR = ").map(|(k, _)| k.replace("\\-", "-")))
        .collect();
    let known: BTreeSet<String> = KNOWN_KEYS
        .iter()
        .filter(|k| **k != "senders")
        .map(|k| leaf(k).to_string())
        .collect();
    let missing: Vec<_> = known.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys not in the manual page: {missing:?}"
    );
    let unknown: Vec<_> = documented.difference(&known).collect();
    // Entries of the [senders] table are logins, not keys.
    assert!(
        unknown.iter().all(|k| *k == "alice"),
        "manual page documents unknown keys: {unknown:?}"
    );
    assert!(
        page.contains(".SS [senders]"),
        "the senders table is documented"
    );
}

#[test]
fn command_manual_page_lists_every_option() {
    let page = std::fs::read_to_string(project_dir().join("doc/smime-milter.8")).unwrap();
    let help = run(Command::new(bin()).arg("--help"));
    let help = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--check-config",
        "--socket",
        "--foreground",
        "--outbound",
        "--inbound",
        "--rcpt",
        "--client-ip",
        "--auth-user",
        "certs",
        "SIGUSR1",
    ] {
        let roffed = opt.replace('-', "\\-");
        assert!(
            page.contains(&roffed) || page.contains(opt),
            "{opt} missing from smime-milter(8)"
        );
        if opt.starts_with("--") {
            assert!(help.contains(opt), "{opt} missing from --help");
        }
    }
}
