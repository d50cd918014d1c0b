//! The milter as a separate process, and its offline test mode.
#![allow(dead_code)]

use super::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Milter {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket_path: PathBuf,
    stderr: PathBuf,
    cfg: PathBuf,
    env: Vec<(String, PathBuf)>,
}

impl Milter {
    /// Starts `smime-milter -f` on a unix socket in a fresh directory.
    pub fn start(top: &str, tables: &str) -> Milter {
        Self::start_env(top, tables, &[])
    }

    /// The same, with extra environment variables for the milter (tests run
    /// in parallel threads, so none changes the test process's environment).
    pub fn start_env(top: &str, tables: &str, env: &[(&str, &Path)]) -> Milter {
        let dir = tempdir();
        let socket_path = dir.path().join("milter.sock");
        let user = if is_root() {
            "user = \"nobody\"\nsocket_mode = \"0666\"\n"
        } else {
            ""
        };
        let cfg = write_config(
            dir.path(),
            &format!("socket = \"unix:{}\"\n{user}{top}", socket_path.display()),
            tables,
        );
        let stderr = dir.path().join("milter.log");
        let env: Vec<(String, PathBuf)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect();
        let child = Self::spawn(&cfg, &env, &stderr);
        let mut m = Milter {
            child,
            dir,
            socket_path,
            stderr,
            cfg,
            env,
        };
        m.wait_listening(0);
        m
    }

    fn spawn(cfg: &Path, env: &[(String, PathBuf)], log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        Command::new(bin())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["-f", "-c"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn smime-milter")
    }

    /// Waits for the `nth` (0-based) "listening" line in the log.
    fn wait_listening(&mut self, nth: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // The socket file appears at bind(), before listen(): wait for the
        // line logged once the milter is listening.
        while self.log().matches(" listening on ").count() <= nth {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("smime-milter exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "smime-milter did not start listening: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no clean-up, sessions cut mid-message.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the milter again with the same configuration and socket, as
    /// a service manager would after a crash.
    pub fn restart(&mut self) {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "still running"
        );
        let n = self.log().matches(" listening on ").count();
        self.child = Self::spawn(&self.cfg, &self.env, &self.stderr);
        self.wait_listening(n);
    }

    pub fn spec(&self) -> String {
        format!("unix:{}", self.socket_path.display())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (log lines are written after the
    /// MTA has its answer).
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Milter {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// SIGTERM, then SIGKILL if it has not exited after a while; always reaped.
pub fn stop_child(child: &mut Child) {
    let pid = child.id() as i32;
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Running the offline test mode.

pub struct TestRun {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

pub fn test_mode(cfg: &Path, args: &[&str], input: &[u8]) -> TestRun {
    test_mode_env(cfg, args, input, &[])
}

pub fn test_mode_env(cfg: &Path, args: &[&str], input: &[u8], env: &[(&str, &Path)]) -> TestRun {
    let mut cmd = Command::new(bin());
    cmd.envs(env.iter().map(|(k, v)| (*k, *v)))
        .arg("test")
        .arg("-c")
        .arg(cfg)
        .args(args);
    let out = pipe(cmd, input);
    TestRun {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
