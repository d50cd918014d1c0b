//! The libmilter layer, kept thin: each callback reads what the MTA sent,
//! calls one `Session` method and turns its answer into a milter status. No
//! panic crosses into C: it is caught, logged and becomes the internal-error
//! action.

use crate::config::{Config, FailAction, SocketSpec};
use crate::outcome::{HeaderOp, Outcome, Verdict};
use crate::session::{self, Session, Step};
use milter::Context;
use milter_sys as sys;
use std::ffi::{c_char, c_uchar, CStr, CString};
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

static CONFIG: RwLock<Option<Arc<Config>>> = RwLock::new(None);

/// The configuration new messages use.
pub fn current_config() -> Arc<Config> {
    CONFIG
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("configuration installed before the milter starts")
}

pub fn install_config(cfg: Arc<Config>) {
    *CONFIG.write().unwrap_or_else(|e| e.into_inner()) = Some(cfg);
}

type Ctx = Context<Session>;

/// Runs a callback body; a panic becomes the internal-error action. In a
/// step the MTA expects no reply to (`no_reply`, an SMFIP_NR_* flag), the
/// action is kept for the next step that has one.
fn guard(
    ctx: *mut sys::SMFICTX,
    stage: &str,
    no_reply: u64,
    f: impl FnOnce(&mut Ctx) -> sys::sfsistat,
) -> sys::sfsistat {
    if ctx.is_null() {
        return sys::SMFIS_TEMPFAIL;
    }
    let mut c = Ctx::new(ctx);
    match catch_unwind(AssertUnwindSafe(|| f(&mut c))) {
        Ok(status) => status,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let qid = queue_id(&c).unwrap_or_else(|| "NOQUEUE".into());
            log::error!("{qid}: internal error: panic in {stage} callback: {what}");
            let action = current_config().actions.internal_error;
            if let Some(s) = c.data.borrow_mut() {
                if s.no_reply & no_reply != 0 && s.message.is_some() {
                    s.defer(crate::outcome::Outcome::failure(
                        action,
                        format!("panic in {stage} callback"),
                    ));
                    return sys::SMFIS_NOREPLY;
                }
                s.reset();
            }
            match action {
                FailAction::Accept => sys::SMFIS_ACCEPT,
                _ => tempfail(&c),
            }
        }
    }
}

fn queue_id(c: &Ctx) -> Option<String> {
    c.api
        .macro_value("i")
        .ok()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn tempfail(c: &Ctx) -> sys::sfsistat {
    let _ = c.api.set_error_reply(
        "451",
        Some("4.7.0"),
        vec!["S/MIME processing failed, please try again later"],
    );
    sys::SMFIS_TEMPFAIL
}

fn reject(c: &Ctx) -> sys::sfsistat {
    let _ = c.api.set_error_reply(
        "550",
        Some("5.7.0"),
        vec!["message refused by S/MIME policy"],
    );
    sys::SMFIS_REJECT
}

/// Logs the summary, ends the message and answers the MTA.
fn finish(c: &mut Ctx, outcome: Outcome) -> sys::sfsistat {
    let qid = queue_id(c);
    let Some(s) = c.data.borrow_mut() else {
        return sys::SMFIS_CONTINUE;
    };
    if let Some(m) = s.message.as_mut() {
        if m.queue_id.is_none() {
            m.queue_id = qid;
        }
        let line = session::summary_line(m, &outcome);
        match outcome.verdict {
            Verdict::Accept => log::info!("{line}"),
            _ => log::warn!("{line}"),
        }
    }
    s.reset();
    match outcome.verdict {
        Verdict::Accept => sys::SMFIS_ACCEPT,
        Verdict::Tempfail(_) => tempfail(c),
        Verdict::Reject(_) => reject(c),
    }
}

/// A step the MTA sends without waiting for our answer (negotiated
/// SMFIP_NR_*): an early decision is kept for the next step that has a reply.
fn step_no_reply(c: &mut Ctx, st: Step, flag: u64) -> sys::sfsistat {
    let no_reply = c.data.borrow_mut().is_some_and(|s| s.no_reply & flag != 0);
    if !no_reply {
        return step(c, st);
    }
    if let Step::Done(o) = st {
        if let Some(s) = c.data.borrow_mut() {
            s.defer(o);
        }
    }
    sys::SMFIS_NOREPLY
}

fn step(c: &mut Ctx, step: Step) -> sys::sfsistat {
    match step {
        Step::Continue => sys::SMFIS_CONTINUE,
        Step::Done(o) => finish(c, o),
        Step::RejectRecipient(why) => {
            log::warn!(
                "{}: recipient refused: {why}",
                queue_id(c).unwrap_or_else(|| "NOQUEUE".into())
            );
            let _ = c.api.set_error_reply(
                "550",
                Some("5.7.1"),
                vec!["recipient has no S/MIME certificate; mail to it must be encrypted"],
            );
            sys::SMFIS_REJECT
        }
        Step::TempfailRecipient(why) => {
            log::warn!(
                "{}: recipient deferred: {why}",
                queue_id(c).unwrap_or_else(|| "NOQUEUE".into())
            );
            let _ = c.api.set_error_reply(
                "451",
                Some("4.7.1"),
                vec!["cannot look up the recipient's S/MIME certificate, try again later"],
            );
            sys::SMFIS_TEMPFAIL
        }
    }
}

unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match (*sa).sa_family as i32 {
        libc::AF_INET => {
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ))
        }
        libc::AF_INET6 => {
            let sin6 = &*(sa as *const libc::sockaddr_in6);
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

unsafe extern "C" fn on_connect(
    ctx: *mut sys::SMFICTX,
    _host: *mut c_char,
    addr: *mut libc::sockaddr,
) -> sys::sfsistat {
    guard(ctx, "connect", 0, |c| {
        let ip = sockaddr_ip(addr);
        // The session may exist already, made at negotiation.
        if let Some(s) = c.data.borrow_mut() {
            s.client_ip = ip;
            return sys::SMFIS_CONTINUE;
        }
        match c.data.replace(Session::new(ip)) {
            Ok(_) => sys::SMFIS_CONTINUE,
            Err(_) => tempfail(c),
        }
    })
}

/// The steps we need no reply for, so that the MTA need not wait after each
/// header line and body chunk (a round trip each), and the ones we do not
/// use at all.
const WANTED_PROTOCOL: std::ffi::c_ulong = sys::SMFIP_NOHELO
    | sys::SMFIP_NOUNKNOWN
    | sys::SMFIP_NODATA
    | sys::SMFIP_NR_HDR
    | sys::SMFIP_NR_MAIL
    | sys::SMFIP_NR_BODY;

/// Per stage, the macros smime-milter reads: the queue id (logs) and the
/// SMTP AUTH login (who may sign as whom). Postfix sends no macro packet for
/// a stage with an empty list.
const MACROS: &[(std::ffi::c_int, &str)] = &[
    (sys::SMFIM_CONNECT, ""),
    (sys::SMFIM_HELO, ""),
    (sys::SMFIM_ENVFROM, "i {auth_authen}"),
    // Postfix assigns the queue id after the first valid recipient
    // (smtpd_delay_open_until_valid_rcpt), so it is asked for again.
    (sys::SMFIM_ENVRCPT, "i"),
    (sys::SMFIM_DATA, ""),
    (sys::SMFIM_EOH, "i"),
    (sys::SMFIM_EOM, "i"),
];

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn on_negotiate(
    ctx: *mut sys::SMFICTX,
    f0: std::ffi::c_ulong,
    f1: std::ffi::c_ulong,
    _f2: std::ffi::c_ulong,
    _f3: std::ffi::c_ulong,
    pf0: *mut std::ffi::c_ulong,
    pf1: *mut std::ffi::c_ulong,
    pf2: *mut std::ffi::c_ulong,
    pf3: *mut std::ffi::c_ulong,
) -> sys::sfsistat {
    guard(ctx, "negotiate", 0, |c| {
        let actions = sys::SMFIF_ADDHDRS | sys::SMFIF_CHGHDRS | sys::SMFIF_CHGBODY;
        if f0 & actions != actions {
            log::error!("the MTA does not offer the header and body changes smime-milter needs");
            return sys::SMFIS_REJECT;
        }
        let steps = f1 & WANTED_PROTOCOL;
        // Only the macros we read: the MTA sends fewer packets per message
        // (each one a read and a wake-up of this thread).
        if f0 & sys::SMFIF_SETSYMLIST != 0 {
            for (stage, list) in MACROS {
                let list = std::ffi::CString::new(*list).expect("no NUL");
                sys::smfi_setsymlist(ctx, *stage, list.as_ptr() as *mut c_char);
            }
        }
        *pf0 = actions | (f0 & sys::SMFIF_SETSYMLIST);
        *pf1 = steps;
        *pf2 = 0;
        *pf3 = 0;
        let mut s = Session::new(None);
        s.no_reply = steps;
        match c.data.replace(s) {
            Ok(_) => sys::SMFIS_CONTINUE,
            Err(_) => sys::SMFIS_REJECT,
        }
    })
}

unsafe extern "C" fn on_mail(ctx: *mut sys::SMFICTX, argv: *mut *mut c_char) -> sys::sfsistat {
    guard(ctx, "mail", sys::SMFIP_NR_MAIL, |c| {
        let sender = if argv.is_null() {
            String::new()
        } else {
            cstr(*argv)
        };
        let login = c
            .api
            .macro_value("{auth_authen}")
            .ok()
            .flatten()
            .map(str::to_string);
        let cfg = current_config();
        let Some(s) = c.data.borrow_mut() else {
            return sys::SMFIS_CONTINUE;
        };
        s.mail(cfg, &sender, login.as_deref());
        if s.no_reply & sys::SMFIP_NR_MAIL != 0 {
            sys::SMFIS_NOREPLY
        } else {
            sys::SMFIS_CONTINUE
        }
    })
}

unsafe extern "C" fn on_rcpt(ctx: *mut sys::SMFICTX, argv: *mut *mut c_char) -> sys::sfsistat {
    guard(ctx, "rcpt", 0, |c| {
        let rcpt = if argv.is_null() {
            String::new()
        } else {
            cstr(*argv)
        };
        let st = match c.data.borrow_mut() {
            Some(s) => s.rcpt(&rcpt),
            None => Step::Continue,
        };
        step(c, st)
    })
}

unsafe extern "C" fn on_header(
    ctx: *mut sys::SMFICTX,
    name: *mut c_char,
    value: *mut c_char,
) -> sys::sfsistat {
    guard(ctx, "header", sys::SMFIP_NR_HDR, |c| {
        let (name, value) = (cstr(name), cstr(value));
        let st = match c.data.borrow_mut() {
            Some(s) => s.header(&name, &value),
            None => Step::Continue,
        };
        step_no_reply(c, st, sys::SMFIP_NR_HDR)
    })
}

unsafe extern "C" fn on_eoh(ctx: *mut sys::SMFICTX) -> sys::sfsistat {
    guard(ctx, "eoh", 0, |c| {
        let qid = queue_id(c);
        let st = match c.data.borrow_mut() {
            Some(s) => {
                if let Some(m) = s.message.as_mut() {
                    m.queue_id = qid;
                }
                s.end_of_headers()
            }
            None => Step::Continue,
        };
        step(c, st)
    })
}

unsafe extern "C" fn on_body(
    ctx: *mut sys::SMFICTX,
    data: *mut c_uchar,
    len: libc::size_t,
) -> sys::sfsistat {
    guard(ctx, "body", sys::SMFIP_NR_BODY, |c| {
        let chunk = if data.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(data, len)
        };
        let st = match c.data.borrow_mut() {
            Some(s) => s.body(chunk),
            None => Step::Continue,
        };
        step_no_reply(c, st, sys::SMFIP_NR_BODY)
    })
}

unsafe extern "C" fn on_eom(ctx: *mut sys::SMFICTX) -> sys::sfsistat {
    guard(ctx, "eom", 0, |c| {
        let Some(s) = c.data.borrow_mut() else {
            return sys::SMFIS_CONTINUE;
        };
        let outcome = s.end_of_message();
        if let Err(e) = apply_changes(c, &outcome) {
            // Some changes may be applied already: only a tempfail makes the
            // MTA drop them, whatever internal_error says.
            let qid = queue_id(c).unwrap_or_else(|| "NOQUEUE".into());
            log::error!("{qid}: internal error: cannot apply changes: {e}");
            let failed =
                Outcome::failure(FailAction::Tempfail, format!("cannot apply changes: {e}"));
            return finish(c, failed);
        }
        finish(c, outcome)
    })
}

fn apply_changes(c: &Ctx, o: &Outcome) -> Result<(), milter::Error> {
    if o.verdict != Verdict::Accept {
        return Ok(());
    }
    for op in &o.changes.headers {
        match op {
            HeaderOp::Change { name, index, value } => {
                c.api.replace_header(name, *index, value.as_deref())?
            }
            HeaderOp::Add { name, value } => c.api.add_header(name, value)?,
            HeaderOp::Insert { index, name, value } => c.api.insert_header(*index, name, value)?,
        }
    }
    if let Some(body) = &o.changes.body {
        // Repeated calls append; small chunks keep every length well inside
        // the C int smfi_replacebody takes.
        for chunk in body.chunks(65536) {
            c.api.append_body_chunk(chunk)?;
        }
    }
    Ok(())
}

unsafe extern "C" fn on_abort(ctx: *mut sys::SMFICTX) -> sys::sfsistat {
    guard(ctx, "abort", 0, |c| {
        if let Some(s) = c.data.borrow_mut() {
            s.reset();
        }
        sys::SMFIS_CONTINUE
    })
}

unsafe extern "C" fn on_close(ctx: *mut sys::SMFICTX) -> sys::sfsistat {
    guard(ctx, "close", 0, |c| {
        let _ = c.data.take();
        sys::SMFIS_CONTINUE
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot use socket {0}")]
    Socket(String),
    #[error("cannot register with libmilter")]
    Register,
    #[error("cannot set up socket {path}: {err}")]
    SocketSetup { path: String, err: std::io::Error },
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivError),
    #[error("libmilter main loop failed")]
    Main,
    #[error("cannot write the PID file {path}: {err}")]
    PidFile { path: String, err: std::io::Error },
    #[error("cannot set up the reload and stats threads: {0}")]
    Threads(std::io::Error),
}

/// Opens the socket, drops privileges and serves until libmilter stops
/// (SIGTERM, SIGHUP, SIGINT).
pub fn run(cfg: Arc<Config>, socket: &SocketSpec) -> Result<(), RunError> {
    let identity = crate::privileges::target(&cfg)?;
    let socket_mode = cfg.socket_mode;
    let config_path = cfg.path.clone();
    let pid_file = cfg.pid_file.clone();
    install_config(cfg);
    // Before libmilter starts its threads, so that they inherit the mask.
    crate::reload::block_signals().map_err(RunError::Threads)?;
    let conn =
        CString::new(socket.to_libmilter()).map_err(|_| RunError::Socket(socket.to_string()))?;
    let name = CString::new("smime-milter").expect("no NUL");
    let desc = sys::smfiDesc {
        xxfi_name: name.as_ptr() as *mut c_char,
        xxfi_version: sys::SMFI_VERSION,
        xxfi_flags: sys::SMFIF_ADDHDRS | sys::SMFIF_CHGHDRS | sys::SMFIF_CHGBODY,
        xxfi_connect: Some(on_connect),
        xxfi_helo: None,
        xxfi_envfrom: Some(on_mail),
        xxfi_envrcpt: Some(on_rcpt),
        xxfi_header: Some(on_header),
        xxfi_eoh: Some(on_eoh),
        xxfi_body: Some(on_body),
        xxfi_eom: Some(on_eom),
        xxfi_abort: Some(on_abort),
        xxfi_close: Some(on_close),
        xxfi_unknown: None,
        xxfi_data: None,
        xxfi_negotiate: Some(on_negotiate),
    };
    unsafe {
        if sys::smfi_setconn(conn.as_ptr() as *mut c_char) != sys::MI_SUCCESS {
            return Err(RunError::Socket(socket.to_string()));
        }
        if sys::smfi_register(desc) != sys::MI_SUCCESS {
            return Err(RunError::Register);
        }
        if sys::smfi_opensocket(1) != sys::MI_SUCCESS {
            return Err(RunError::Socket(socket.to_string()));
        }
    }
    crate::listener::after_open(socket, socket_mode, identity.as_ref()).map_err(|err| {
        RunError::SocketSetup {
            path: socket.to_string(),
            err,
        }
    })?;
    if let Some(id) = &identity {
        crate::privileges::drop_to(id)?;
        log::info!("running as user {}", id.name);
    }
    crate::reload::spawn_reload_thread(config_path).map_err(RunError::Threads)?;
    crate::reload::spawn_stats_thread().map_err(RunError::Threads)?;
    log::info!(
        "smime-milter {} listening on {socket}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(pid_file) = &pid_file {
        std::fs::write(pid_file, format!("{}\n", std::process::id())).map_err(|err| {
            RunError::PidFile {
                path: pid_file.display().to_string(),
                err,
            }
        })?;
    }
    let main = unsafe { sys::smfi_main() };
    // libmilter stopped (SIGTERM, SIGHUP). A message whose end it still
    // delivers to us is finished; one it dropped mid-way the MTA defers
    // (milter_default_action = tempfail). Wait a little for the former.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut active = crate::session::in_flight();
    if active > 0 {
        log::info!("stopping: waiting for {active} message(s) in flight");
    }
    while active > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        active = crate::session::in_flight();
    }
    if let Some(pid_file) = &pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    if main != sys::MI_SUCCESS {
        return Err(RunError::Main);
    }
    log::info!("smime-milter stopped");
    Ok(())
}
