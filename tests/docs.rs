//! The documentation matches the code: every configuration key the code
//! accepts is in the sample configuration and the manual page, and the page
//! is the one the generator makes from the sample.

mod common;
use common::*;
use smime_milter::config::known_keys;
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
    // Entries (".TP" tags: \fBkey\fR = value) and the keys of examples
    // (the tables of entries, written out between .EX and .EE).
    let mut documented: BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("\\fB"))
        .filter_map(|l| l.split_once("\\fR = ").map(|(k, _)| k.replace("\\-", "-")))
        .collect();
    let mut example = false;
    for l in page.lines() {
        match l {
            ".EX" => example = true,
            ".EE" => example = false,
            _ if example => {
                if let Some((k, _)) = l.split_once(" = ") {
                    if k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    {
                        documented.insert(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let known: BTreeSet<String> = known_keys()
        .iter()
        .filter(|k| *k != "senders")
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
        page.contains(".SS \"[senders]\""),
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

/// A manual page as a reader sees it: man-db at 100 columns, plain text (no
/// formatting characters), and groff's warnings.
fn render(page: &str) -> (Vec<String>, String) {
    let out = Command::new("man")
        .args(["--warnings=all,mac", "-P", "cat", "-l"])
        .arg(project_dir().join(page))
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("MAN_KEEP_FORMATTING")
        .env_remove("MANPAGER")
        .env_remove("MANOPT")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run man (Debian package man-db, contrib/dev-setup.sh): {e}")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "man -l {page} failed: {stderr}");
    assert!(
        !text.contains(['\u{8}', '\u{1b}']),
        "man -l {page}: formatting characters in the plain text"
    );
    (
        text.lines().map(|l| l.trim_end().to_string()).collect(),
        stderr,
    )
}

/// A `[table]` or `[[table]]` header, as written in the sample.
fn table_header(line: &str) -> Option<&str> {
    let l = line.trim_start_matches('#').trim();
    let name = l.trim_start_matches('[').trim_end_matches(']');
    let brackets = l.len() - name.len();
    (l.starts_with('[')
        && (brackets == 2 || brackets == 4)
        && !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.".contains(c)))
    .then_some(l)
}

/// A `key = value` line of the sample (commented out or not), without `#`.
fn key_line(line: &str) -> Option<&str> {
    let l = line.strip_prefix('#').unwrap_or(line);
    let (key, _) = l.split_once(" = ")?;
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
    .then_some(l.trim())
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

#[test]
fn manual_pages_render_every_section_and_table_header() {
    let sample = std::fs::read_to_string(project_dir().join("contrib/smime-milter.toml")).unwrap();
    let sample: Vec<&str> = sample.lines().collect();
    let mut failures = Vec::new();

    for page in ["doc/smime-milter.toml.5", "doc/smime-milter.8"] {
        let (lines, warnings) = render(page);
        if !warnings.trim().is_empty() {
            failures.push(format!("{page}: troff warnings:\n{warnings}"));
        }
        // Every heading of the page is a heading of the rendered text.
        let source = std::fs::read_to_string(project_dir().join(page)).unwrap();
        for l in source.lines() {
            let (macro_, indent_) = match l.split_once(' ') {
                Some((".SH", _)) => (".SH", 0),
                Some((".SS", _)) => (".SS", 3),
                _ => continue,
            };
            let words: Vec<&str> = l[macro_.len()..]
                .split(|c: char| c.is_whitespace() || c == '"')
                .filter(|w| !w.is_empty())
                .map(|w| w.trim_start_matches("\\&"))
                .collect();
            let title = words.join(" ").replace("\\-", "-").replace("\\(aq", "'");
            if !lines
                .iter()
                .any(|r| indent(r) == indent_ && r.trim() == title)
            {
                failures.push(format!("{page}: heading {title:?} is not rendered"));
            }
        }
        // No word hyphenated across lines (U+2010 ends such a line in
        // UTF-8): header names, keys and paths are read as written.
        for r in lines.iter().filter(|r| r.ends_with('\u{2010}')) {
            failures.push(format!("{page}: hyphenated word in {r:?}"));
        }
        // Installed paths only: nothing of the source tree.
        for r in &lines {
            let bare_doc = r
                .match_indices("doc/")
                .any(|(i, _)| !r[..i].ends_with("/usr/share/"));
            if r.contains("contrib/") || r.contains("postfix-sample/") || bare_doc {
                failures.push(format!("{page}: source-tree path in {r:?}"));
            }
        }
        if page.ends_with(".8") {
            continue;
        }

        // Every table header of the sample, brackets and all, on a line of
        // its own; and as the heading of a subsection.
        for h in sample.iter().filter_map(|l| table_header(l)) {
            if !lines.iter().any(|r| indent(r) == 3 && r.trim() == h) {
                failures.push(format!("{page}: table header {h} is not a subsection"));
            }
        }
        // Every key line of the sample (entries and examples) on a line of
        // its own, as written.
        for k in sample.iter().filter_map(|l| key_line(l)) {
            if !lines.iter().any(|r| r.trim() == k) {
                failures.push(format!("{page}: {k:?} is not a line of its own"));
            }
        }
        // Every example (comment lines indented by three spaces or more) line
        // by line, indentation kept.
        let mut i = 0;
        while i < sample.len() {
            if !sample[i].starts_with("#   ") || sample[i].starts_with("#    ") {
                i += 1;
                continue;
            }
            let mut run = vec![&sample[i][1..]];
            i += 1;
            while i < sample.len() && sample[i].starts_with("#   ") {
                run.push(&sample[i][1..]);
                i += 1;
            }
            let at = lines.iter().position(|r| r.trim() == run[0].trim());
            let ok = at.is_some_and(|at| {
                run.iter().enumerate().all(|(n, l)| {
                    lines.get(at + n).is_some_and(|r| {
                        r.trim() == l.trim() && indent(r) - indent(&lines[at]) == indent(l) - 3
                    })
                })
            });
            if !ok {
                failures.push(format!(
                    "{page}: example not rendered line by line:\n{}",
                    run.join("\n")
                ));
            }
        }

        // Subsections: from a table header (indented 3) to the next heading
        // (a table header, a section heading at column 0, or the footer).
        // Top-level keys come before the first table.
        let mut sections: Vec<(String, Vec<&str>)> = vec![(String::new(), vec![])];
        for r in &lines {
            if indent(r) == 3 && table_header(r).is_some() {
                sections.push((r.trim().to_string(), vec![]));
            } else if indent(r) == 0 && !r.is_empty() && sections.len() > 1 {
                sections.push((r.to_string(), vec![]));
            } else {
                sections.last_mut().unwrap().1.push(r);
            }
        }
        let in_table = |table: &str| {
            sections
                .iter()
                .filter(|(h, _)| *h == format!("[{table}]") || *h == format!("[[{table}]]"))
                .flat_map(|(_, ls)| ls.iter().copied())
                .collect::<Vec<&str>>()
        };
        let first_table = sections
            .iter()
            .position(|(h, _)| h.starts_with('['))
            .unwrap_or(sections.len());
        let top: Vec<&str> = sections[..first_table]
            .iter()
            .flat_map(|(_, ls)| ls.iter().copied())
            .collect();
        for key in &known_keys() {
            if sections.iter().any(|(h, _)| *h == format!("[{key}]")) {
                continue; // a table of free-form entries: [senders]
            }
            let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            let body = if table.is_empty() {
                top.clone()
            } else {
                in_table(table)
            };
            if !body
                .iter()
                .any(|r| r.trim_start().starts_with(&format!("{leaf} = ")))
            {
                failures.push(format!(
                    "{page}: key {key} is not in its table's subsection"
                ));
            }
        }
        // [senders] is described, not only shown.
        let senders = in_table("senders");
        let prose = senders
            .iter()
            .filter(|r| {
                !r.trim().is_empty() && table_header(r).is_none() && key_line(r.trim()).is_none()
            })
            .count();
        if prose < 2 {
            failures.push(format!(
                "{page}: the [senders] table is not described: {senders:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "manual pages render badly:\n{}",
        failures.join("\n")
    );
}
