//! The test's surroundings: the milter binary, the project, whether a
//! test can run here (and must, under CI), temporary files and processes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smime-milter"))
}

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether a test can run here. Where it must run (CI, CI=true) a test
/// that cannot fails instead of passing as if it had run; elsewhere it
/// says why it skips.
pub fn can_run(why_not: Option<String>) -> bool {
    let Some(why) = why_not else {
        return true;
    };
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "CI must run this test, but: {why}"
    );
    eprintln!("{why}: skipping");
    false
}

/// `can_run` for a test that needs root (Postfix, Sendmail, the package).
pub fn can_run_as_root() -> bool {
    can_run((!is_root()).then(|| "not root: Postfix, Sendmail and packages need root".into()))
}

/// The interop corpus (../shared/interop/thunderbird), if this test can run.
pub fn interop_corpus() -> Option<PathBuf> {
    let dir = project_dir().join("../shared/interop/thunderbird");
    can_run(
        (!dir.join("MANIFEST.tsv").exists())
            .then(|| format!("interop corpus not found at {}", dir.display())),
    )
    .then_some(dir)
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A directory the MTA's unprivileged processes can traverse.
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("smime-milter-test.")
        .tempdir()
        .expect("tempdir");
    set_mode(d.path(), 0o755);
    d
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A `/proc/PID/status` field in kB, e.g. `VmHWM:` or `VmRSS:`.
pub fn proc_status_kb(pid: u32, key: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} for process {pid}"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}
