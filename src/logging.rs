//! Logging to syslog (facility mail, ident smime-milter) or, in the
//! foreground, to stderr. Lines about a message start with its queue id.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            let level = match r.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug | log::Level::Trace => "debug",
            };
            // One write per line so concurrent threads do not interleave.
            let line = format!(
                "smime-milter[{}]: {level}: {}\n",
                std::process::id(),
                r.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
    fn flush(&self) {}
}

/// Installs the logger once; `set_level` changes the level later (reload).
pub fn init(foreground: bool, level: LevelFilter) {
    let installed = if foreground {
        log::set_boxed_logger(Box::new(StderrLogger)).is_ok()
    } else {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_MAIL,
            hostname: None,
            process: "smime-milter".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(logger) => log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger))).is_ok(),
            Err(e) => {
                // Said once, on stderr itself: no level or logger can hide it.
                eprintln!("smime-milter: warning: cannot reach syslog ({e}); logging to stderr");
                log::set_boxed_logger(Box::new(StderrLogger)).is_ok()
            }
        }
    };
    if installed {
        log::set_max_level(level);
    }
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}
