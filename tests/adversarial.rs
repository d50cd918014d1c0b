//! The adversarial corpus (tests/adversarial/, doc/inbound-verdicts.md):
//! messages crafted to make our inbound verdict lie, each run through the
//! milter and read back as a mail reader reads it (tests/adversarial/check.py).
//! The expected verdicts are the rules', not what some version printed.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const AUTHSERV: &str = "mx.adversarial.test";
const RCPT: &str = "carol@example.com";

/// The corpus, built once per test into a fresh directory.
fn make_corpus() -> tempfile::TempDir {
    let corpus = tempdir();
    let out = run(Command::new("bash")
        .arg(project_dir().join("tests/adversarial/make-adversarial.sh"))
        .arg(&pki().dir)
        .arg(corpus.path()));
    assert!(
        out.status.success(),
        "make-adversarial.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    corpus
}

/// Manifest lines: file, smime, decrypted, comment, class, description, hdr.
fn manifest(corpus: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(corpus.join("MANIFEST.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

/// Each case through the test mode (inbound, to carol), what comes out in a
/// fresh directory. Accept actions throughout: every message comes out.
fn deliver(cfg: &Path, corpus: &Path, cases: &[Vec<String>]) -> tempfile::TempDir {
    let delivered = tempdir();
    for c in cases {
        let input = std::fs::read(corpus.join(&c[0])).unwrap();
        let r = test_mode(cfg, &["--inbound", "--rcpt", RCPT], &input);
        assert_eq!(r.code, 0, "{}: {}", c[0], r.stderr);
        std::fs::write(delivered.path().join(&c[0]), &r.stdout).unwrap();
    }
    delivered
}

/// Writes manifest lines (a subset, or changed expectations) for check.py.
fn write_manifest(path: &Path, cases: &[Vec<String>]) -> PathBuf {
    let text: String = cases.iter().map(|c| c.join("\t") + "\n").collect();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Top-level keys and tables of the test configuration: verification with
/// the test root, decryption on, the usual key table (carol decrypts).
fn tables(decrypt_extra: &str) -> String {
    format!(
        "[decrypt]\nenabled = true\n{decrypt_extra}\n[verify]\ntrust_anchors = \"{}\"\n{}",
        pki().path("root.crt").display(),
        pki().key_table()
    )
}

fn config(dir: &Path, decrypt_extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!("authserv_id = \"{AUTHSERV}\""),
        &tables(decrypt_extra),
    )
}

/// Runs check.py over a manifest; returns (success, its output). With
/// ADVERSARIAL_KEEP=DIR set, the corpus and what was delivered are copied
/// to DIR/<manifest name> for a closer look.
fn check(manifest: &Path, corpus: &Path, delivered: &Path) -> (bool, String) {
    if let Some(keep) = std::env::var_os("ADVERSARIAL_KEEP") {
        let dst = Path::new(&keep).join(manifest.file_name().unwrap());
        let _ = std::fs::create_dir_all(&dst);
        for (from, to) in [(corpus, "corpus"), (delivered, "delivered")] {
            run(Command::new("cp").arg("-r").arg(from).arg(dst.join(to)));
        }
    }
    let out = run(Command::new("python3")
        .arg(project_dir().join("tests/adversarial/check.py"))
        .arg(manifest)
        .arg(corpus)
        .arg(delivered));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn adversarial_corpus_gets_the_secure_verdicts() {
    let corpus = make_corpus();
    let cases = manifest(corpus.path());
    assert!(cases.len() >= 150, "corpus too small: {}", cases.len());
    let d = tempdir();
    let cfg = config(d.path(), "");
    let delivered = deliver(&cfg, corpus.path(), &cases);
    let (ok, report) = check(
        &corpus.path().join("MANIFEST.tsv"),
        corpus.path(),
        delivered.path(),
    );
    println!("{report}");
    assert!(ok, "secure verdicts not met:\n{report}");
}

/// The same verdicts with decryption off (the default): every case that
/// does not depend on decrypting.
#[test]
fn verdicts_hold_with_decryption_off() {
    let corpus = make_corpus();
    let cases: Vec<Vec<String>> = manifest(corpus.path())
        .into_iter()
        .filter(|c| c[2] == "-" && c[4] != "7")
        .collect();
    assert!(
        cases.len() >= 150,
        "cases without decryption: {}",
        cases.len()
    );
    let d = tempdir();
    let cfg = write_config(
        d.path(),
        &format!("authserv_id = \"{AUTHSERV}\""),
        &format!(
            "[verify]\ntrust_anchors = \"{}\"\n{}",
            pki().path("root.crt").display(),
            pki().key_table()
        ),
    );
    let delivered = deliver(&cfg, corpus.path(), &cases);
    let m = write_manifest(&d.path().join("MANIFEST.no-decrypt.tsv"), &cases);
    let (ok, report) = check(&m, corpus.path(), delivered.path());
    println!("{report}");
    assert!(ok, "with decryption off:\n{report}");
}

/// `[decrypt] release_unauthenticated = true`: the admin accepts CBC's
/// malleability; the plain CBC message is then released.
#[test]
fn release_unauthenticated_opt_in() {
    let corpus = make_corpus();
    let d = tempdir();
    let cfg = config(d.path(), "release_unauthenticated = true");
    let input = std::fs::read(corpus.path().join("c7-cbc-plain.eml")).unwrap();
    let r = test_mode(&cfg, &["--inbound", "--rcpt", RCPT], &input);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let delivered = tempdir();
    std::fs::write(delivered.path().join("c7-cbc-plain.eml"), &r.stdout).unwrap();
    let line = manifest(corpus.path())
        .into_iter()
        .find(|c| c[0] == "c7-cbc-plain.eml")
        .expect("c7-cbc-plain.eml in the manifest");
    // The same case, expected released.
    let mut opt_in = line.clone();
    opt_in[2] = "yes".into();
    let m = write_manifest(&d.path().join("MANIFEST.opt-in.tsv"), &[opt_in]);
    let (ok, report) = check(&m, corpus.path(), delivered.path());
    println!("{report}");
    assert!(
        ok,
        "CBC not released with release_unauthenticated:\n{report}\n{}",
        String::from_utf8_lossy(&r.stdout)
    );
}

/// The Message-ID every corpus message carries: <case-NAME@adversarial.test>.
fn case_name(msg: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(msg);
    let start = text.find("<case-")? + "<case-".len();
    let end = start + text[start..].find("@adversarial.test>")?;
    Some(format!("{}.eml", &text[start..end]))
}

/// The header-level cases (bare CR, `Name :` fields, 8-bit header bytes,
/// forged Authentication-Results spellings, hidden From/Content-Type) as
/// Postfix hands them to the milter.
#[test]
fn header_level_attacks_through_a_real_postfix() {
    assert!(
        is_root(),
        "a Postfix master must be started as root: run this test as root"
    );
    let corpus = make_corpus();
    let cases: Vec<Vec<String>> = manifest(corpus.path())
        .into_iter()
        .filter(|c| c.get(6).is_some_and(|h| h.starts_with("hdr")))
        .map(|mut c| {
            // `hdr=RESULT`: Postfix's cleanup turns a bare CR in a header
            // into a space before the milter sees it, so a field hidden
            // behind one is no longer hidden: the result through Postfix.
            if let Some(r) = c[6].strip_prefix("hdr=") {
                c[1] = r.to_string();
                c[3] = "-".into();
            }
            c
        })
        .collect();
    assert!(cases.len() >= 40, "header-level cases: {}", cases.len());
    // 127.0.0.2 is not internal, so it is inbound; and it is not one of
    // Postfix's own interfaces, so Postfix does not rewrite its headers
    // (local_header_rewrite_clients).
    let top = format!("internal_hosts = [\"192.0.2.0/24\"]\nauthserv_id = \"{AUTHSERV}\"\n");
    let milter = Milter::start(&top, &tables(""));
    let postfix = Postfix::start(&milter.spec());
    let mut refused = Vec::new();
    for c in &cases {
        let input = std::fs::read(corpus.path().join(&c[0])).unwrap();
        let reply = postfix.send_from(
            "127.0.0.2".parse().unwrap(),
            "sender@example.net",
            &[RCPT],
            &input,
        );
        if !reply.starts_with("250") {
            refused.push(format!("{}: {reply}", c[0]));
        }
    }
    let delivered = postfix.delivered(cases.len() - refused.len());
    let dir = tempdir();
    for msg in &delivered {
        let name = case_name(msg).expect("a corpus Message-ID");
        std::fs::write(dir.path().join(name), msg).unwrap();
    }
    let m = write_manifest(&dir.path().join("MANIFEST.hdr.tsv"), &cases);
    let (ok, report) = check(&m, corpus.path(), dir.path());
    println!("{report}");
    assert!(
        ok && refused.is_empty(),
        "through Postfix:\n{report}\nrefused: {refused:#?}\nmilter log:\n{}",
        milter.log()
    );
}
