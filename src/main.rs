//! Command line: run the milter, check the configuration, or test a message.

use smime_milter::config::{SocketSpec, DEFAULT_CONFIG_PATH};
use smime_milter::policy::Direction;
use smime_milter::runtime::Runtime;
use smime_milter::testmode::{self, TestArgs};
use smime_milter::{logging, server};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const EX_USAGE: u8 = 64;
const EX_NOINPUT: u8 = 66;
const EX_SOFTWARE: u8 = 70;
const EX_CONFIG: u8 = 78;

const USAGE: &str = "\
usage: smime-milter [-c FILE] [-f] [--socket SPEC] [--check-config]
       smime-milter test [-c FILE] (--outbound | --inbound) [--sender ADDR]
                         [--rcpt ADDR]... [--client-ip IP] [--auth-user LOGIN]
                         [--harvest] [FILE]
       smime-milter certs [-c FILE] list | show ADDRESS | remove ADDRESS

  -c, --config FILE   configuration file (default /etc/smime-milter/smime-milter.toml)
  -f, --foreground    log to stderr instead of syslog
  --socket SPEC       unix:/path, inet:PORT@HOST or inet6:PORT@HOST (overrides the file)
  --check-config      validate the configuration and exit (0 valid, 78 invalid)
  -V, --version       print the version

test: process one message (FILE or stdin) as the milter would and print the
message as delivered; exit 0 accepted, 75 tempfail, 69 reject. It changes
no state: --harvest stores a verified signer's certificate as the milter
would.
certs: list the stored recipient certificates (static and harvested), show
every certificate for an address (LDAP included) and which one encryption
uses, or remove a harvested one.";

/// The configuration, or the exit status (EX_CONFIG) once the error is said.
fn load(path: &std::path::Path) -> Result<Runtime, ExitCode> {
    Runtime::load(path).map_err(|e| {
        eprintln!("smime-milter: {e}");
        ExitCode::from(EX_CONFIG)
    })
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("smime-milter: {msg}\n{USAGE}");
    ExitCode::from(EX_USAGE)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Every command answers --help on stdout, before it reads anything.
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some("test") {
        return test_command(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("certs") {
        return certs_command(&args[1..]);
    }
    let mut config_path = PathBuf::from(DEFAULT_CONFIG_PATH);
    let (mut foreground, mut check, mut socket) = (false, false, None::<String>);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--config" => match it.next() {
                Some(p) => config_path = p.into(),
                None => return usage_error("-c needs a file"),
            },
            "-f" | "--foreground" => foreground = true,
            "--check-config" => check = true,
            "--socket" => match it.next() {
                Some(s) => socket = Some(s),
                None => return usage_error("--socket needs a value"),
            },
            "-V" | "--version" => {
                println!("smime-milter {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument '{other}'")),
        }
    }

    // Key loading may warn (expiring certificates): the logger is in place
    // before the configuration is read, so no start-up warning is lost;
    // the configured level applies once it is known.
    logging::init(check || foreground, log::LevelFilter::Info);
    let rt = match load(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let socket = match socket.map(|s| s.parse::<SocketSpec>()) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            eprintln!("smime-milter: --socket: {e}");
            return ExitCode::from(EX_CONFIG);
        }
        None => rt.config.socket.clone(),
    };
    if check {
        println!(
            "{}: configuration OK ({} signing key{})",
            config_path.display(),
            rt.keys.len(),
            if rt.keys.len() == 1 { "" } else { "s" }
        );
        return ExitCode::SUCCESS;
    }
    let Some(socket) = socket else {
        eprintln!(
            "smime-milter: {}: no socket configured (set `socket` or use --socket)",
            config_path.display()
        );
        return ExitCode::from(EX_CONFIG);
    };
    logging::set_level(rt.config.log_level);
    install_panic_hook();
    match server::run(Arc::new(rt), &socket) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("smime-milter: {e}");
            ExitCode::from(match e {
                server::RunError::Privileges(_) => EX_CONFIG,
                _ => EX_SOFTWARE,
            })
        }
    }
}

/// Panics are caught per protocol step; the hook only makes sure the message
/// reaches syslog rather than a closed stderr.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        log::error!("panic: {info}");
    }));
}

fn certs_command(args: &[String]) -> ExitCode {
    let mut config_path = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--config" => match it.next() {
                Some(p) => config_path = p.into(),
                None => return usage_error("-c needs a file"),
            },
            _ => rest.push(a.clone()),
        }
    }
    logging::init(true, log::LevelFilter::Warn);
    let rt = match load(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    match smime_milter::admin::run(&rt, &rest, &mut out, &mut err) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("smime-milter: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

fn test_command(args: &[String]) -> ExitCode {
    let mut config_path = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut t = TestArgs::default();
    let mut file: Option<PathBuf> = None;
    let mut harvest = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let r: Result<(), String> = match a.as_str() {
            "-c" | "--config" => value(a).map(|v| config_path = v.into()),
            "--outbound" => {
                t.direction = Some(Direction::Outbound);
                Ok(())
            }
            "--inbound" => {
                t.direction = Some(Direction::Inbound);
                Ok(())
            }
            "--harvest" => {
                harvest = true;
                Ok(())
            }
            "--sender" => value(a).map(|v| t.sender = Some(v)),
            "--rcpt" => value(a).map(|v| t.recipients.push(v)),
            "--auth-user" => value(a).map(|v| t.auth_user = Some(v)),
            "--client-ip" => value(a).and_then(|v| {
                v.parse()
                    .map(|ip| t.client_ip = Some(ip))
                    .map_err(|_| format!("invalid --client-ip '{v}'"))
            }),
            f if !f.starts_with('-') || f == "-" => {
                if f != "-" {
                    file = Some(f.into());
                }
                Ok(())
            }
            other => Err(format!("unknown argument '{other}'")),
        };
        if let Err(e) = r {
            return usage_error(&e);
        }
    }
    if t.direction.is_none() {
        return usage_error("test needs --outbound or --inbound");
    }
    logging::init(true, log::LevelFilter::Warn);
    let mut rt = match load(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    rt.config.harvest_writes = harvest;
    logging::set_level(rt.config.log_level.min(log::LevelFilter::Warn));
    let input = match &file {
        Some(f) => std::fs::read(f).map_err(|e| format!("{}: {e}", f.display())),
        None => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map(|_| v)
                .map_err(|e| format!("stdin: {e}"))
        }
    };
    let input = match input {
        Ok(i) => i,
        Err(e) => {
            eprintln!("smime-milter: {e}");
            return ExitCode::from(EX_NOINPUT);
        }
    };
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    match testmode::run(Arc::new(rt), &t, &input, &mut out, &mut err) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("smime-milter: {e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}
