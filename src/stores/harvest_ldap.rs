//! Harvested certificates kept in the directory, for a fleet of gateways:
//! a signer learnt by one node is found by every node's LDAP lookup.
//!
//! Each address is one contact entry, `cn=<address>,<base>` (inetOrgPerson;
//! on Active Directory a `contact`, as Exchange keeps them), holding the
//! certificate as
//! `userCertificate;binary` and, with its chain, as `userSMIMECertificate`
//! (certs-only PKCS#7). Only entries at that place are read, written or
//! removed; the rest of the directory is never touched.
//!
//! Writes never hold up a message: they are queued (at most
//! `max_pending`) and made by one thread per configuration, started with
//! the first write, with the connection and search timeouts of `[ldap]`.

use crate::certstore::Forget;
use crate::ldap::{certs_in_entries, connect, LdapSettings};
use crate::pki::{cert_addresses, certs_only_pkcs7, SignerCert};
use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConn, LdapError as Ldap3Error, Mod, Scope, SearchEntry};
use openssl::x509::X509;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A kept connection unused for this long is opened anew.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// How long an admin command waits for the directory.
const ADMIN_TIME: Duration = Duration::from_secs(30);

/// Entries read per page by `list` (servers cap unpaged results: OpenLDAP
/// at 500 for most accounts, Active Directory at 1000).
const PAGE: i32 = 500;

const CERT_ATTR: &str = "userCertificate;binary";
const SMIME_ATTR: &str = "userSMIMECertificate";

/// Counters for the stats line and metrics, by message; they survive
/// reloads.
#[derive(Debug, Default)]
pub struct Stats {
    /// Entries added or replaced.
    pub written: AtomicU64,
    /// What was there is valid as long or longer.
    pub unchanged: AtomicU64,
    pub failed: AtomicU64,
    /// The queue was full, or no writer could be started.
    pub dropped: AtomicU64,
}

pub static STATS: Stats = Stats {
    written: AtomicU64::new(0),
    unchanged: AtomicU64::new(0),
    failed: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
};

impl Stats {
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            " harvest writes={} unchanged={} failed={} dropped={}",
            g(&self.written),
            g(&self.unchanged),
            g(&self.failed),
            g(&self.dropped)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("no LDAP server for harvesting reachable ({0})")]
    Unreachable(String),
    #[error("{0}")]
    Operation(String),
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Added,
    Replaced,
    /// The entry holds a certificate valid as long or longer.
    Kept,
}

/// The structural object class of the entries we add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryClass {
    /// OpenLDAP and most directories: cn, sn and mail.
    InetOrgPerson,
    /// Active Directory's mail contact (an inetOrgPerson is a user account
    /// there): cn and mail.
    Contact,
}

impl EntryClass {
    fn name(self) -> &'static str {
        match self {
            EntryClass::InetOrgPerson => "inetOrgPerson",
            EntryClass::Contact => "contact",
        }
    }
}

struct Job {
    queue_id: String,
    signer: SignerCert,
    address: String,
    /// The cache of the certificate store of the same configuration.
    then: Option<Forget>,
}

struct Worker {
    queue: SyncSender<Job>,
    thread: JoinHandle<()>,
}

/// How the store reaches the directory and what it writes.
struct Target {
    ldap: LdapSettings,
    class: EntryClass,
}

/// The directory store of harvested certificates.
pub struct DirectoryStore {
    target: Arc<Target>,
    max_pending: usize,
    worker: Mutex<Option<Worker>>,
}

impl std::fmt::Debug for DirectoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DirectoryStore({:?} under {})",
            self.target.ldap.uris, self.target.ldap.base_dn
        )
    }
}

/// An address as a log line may show it.
fn shown(address: &str) -> String {
    address.chars().flat_map(char::escape_default).collect()
}

impl DirectoryStore {
    /// `settings.base_dn` is where the entries go; its filter is unused.
    pub fn new(settings: LdapSettings, class: EntryClass, max_pending: usize) -> DirectoryStore {
        DirectoryStore {
            target: Arc::new(Target {
                ldap: settings,
                class,
            }),
            max_pending: max_pending.max(1),
            worker: Mutex::new(None),
        }
    }

    pub fn base_dn(&self) -> &str {
        &self.target.ldap.base_dn
    }

    /// Queues the signer's certificate to be written under `address`;
    /// returns at once. False when it was dropped (queue full, no writer).
    pub fn submit(
        &self,
        queue_id: &str,
        signer: &SignerCert,
        address: &str,
        then: Option<Forget>,
    ) -> bool {
        let mut job = Job {
            queue_id: queue_id.to_string(),
            signer: signer.clone(),
            address: address.to_ascii_lowercase(),
            then,
        };
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        // A writer that ended (it cannot, short of a bug) is started again once.
        for _ in 0..2 {
            if worker.is_none() {
                match self.start() {
                    Ok(w) => *worker = Some(w),
                    Err(e) => {
                        STATS.dropped.fetch_add(1, Ordering::Relaxed);
                        log::error!("{queue_id}: cannot start the harvest writer: {e}");
                        return false;
                    }
                }
            }
            match worker.as_ref().expect("started").queue.try_send(job) {
                Ok(()) => return true,
                Err(TrySendError::Full(_)) => {
                    STATS.dropped.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{queue_id}: harvest into the directory skipped: {} writes already pending",
                        self.max_pending
                    );
                    return false;
                }
                Err(TrySendError::Disconnected(j)) => {
                    job = j;
                    *worker = None;
                }
            }
        }
        STATS.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    // The thread starts with the first write, so after the daemon is set up
    // and only in configurations that harvest.
    fn start(&self) -> std::io::Result<Worker> {
        let (queue, jobs) = sync_channel::<Job>(self.max_pending);
        let target = Arc::clone(&self.target);
        let thread = std::thread::Builder::new()
            .name("harvest".into())
            .spawn(move || {
                let mut conn: Option<(usize, LdapConn)> = None;
                let mut last_used = Instant::now();
                // Ends when the configuration is replaced (its sender dropped).
                for job in jobs {
                    // Servers and firewalls drop idle connections silently:
                    // one unused for a minute is not trusted.
                    if last_used.elapsed() > MAX_IDLE {
                        conn = None;
                    }
                    write_job(&target, &mut conn, &job);
                    last_used = Instant::now();
                }
            })?;
        Ok(Worker { queue, thread })
    }

    /// Waits until every queued write is made (the test mode, before it
    /// exits); later writes start a new thread.
    pub fn finish(&self) {
        let worker = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = worker {
            drop(w.queue);
            let _ = w.thread.join();
        }
    }

    /// Writes the signer's certificate under `address` at once, by
    /// `deadline`.
    pub fn store(
        &self,
        signer: &SignerCert,
        address: &str,
        deadline: Instant,
    ) -> Result<Written, WriteError> {
        let mut conn = None;
        store_with(
            &self.target,
            &mut conn,
            signer,
            &address.to_ascii_lowercase(),
            deadline,
        )
    }

    /// Every harvested entry: its address and certificate, read page by
    /// page.
    pub fn list(&self) -> Result<Vec<(String, X509)>, WriteError> {
        let deadline = Instant::now() + ADMIN_TIME;
        let (_, mut conn) = open(&self.target.ldap, &all(&self.target.ldap), deadline)?;
        let filter = format!("(objectClass={})", self.target.class.name());
        let adapters: Vec<Box<dyn Adapter<&str, Vec<&str>>>> = vec![
            Box::new(EntriesOnly::new()),
            Box::new(PagedResults::new(PAGE)),
        ];
        let mut stream = conn
            .with_timeout(ADMIN_TIME)
            .streaming_search_with(
                adapters,
                &self.target.ldap.base_dn,
                Scope::OneLevel,
                &filter,
                vec!["mail", CERT_ATTR, SMIME_ATTR],
            )
            .map_err(op_error("search"))?;
        let mut out = Vec::new();
        while let Some(e) = stream.next().map_err(op_error("search"))? {
            let entry = SearchEntry::construct(e.clone());
            let mail = entry
                .attrs
                .get("mail")
                .and_then(|m| m.first())
                .cloned()
                .unwrap_or(entry.dn);
            if let Some(cert) = certs_in_entries(vec![e]).into_iter().next() {
                out.push((mail, cert));
            }
        }
        stream.result().success().map_err(op_error("search"))?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes the entry for an address; false when there was none.
    pub fn remove(&self, address: &str) -> Result<bool, WriteError> {
        let deadline = Instant::now() + ADMIN_TIME;
        let (_, mut conn) = open(&self.target.ldap, &all(&self.target.ldap), deadline)?;
        match conn
            .with_timeout(self.target.ldap.search_timeout)
            .delete(&dn_for(&self.target.ldap.base_dn, address))
            .and_then(|r| r.success())
        {
            Ok(_) => Ok(true),
            Err(e) if result_code(&e) == Some(NO_SUCH_OBJECT) => Ok(false),
            Err(e) => Err(op_error("delete")(e)),
        }
    }
}

const NO_SUCH_OBJECT: u32 = 32;
const ALREADY_EXISTS: u32 = 68;

/// Answers that say "not here, ask another server": a referral (a read-only
/// replica), busy, unavailable, unwilling to perform.
fn ask_another(rc: u32) -> bool {
    matches!(rc, 10 | 51 | 52 | 53)
}

/// The entry of an address: its value escaped as RFC 4514 asks, so an
/// address cannot add an RDN or leave the base.
pub fn dn_for(base: &str, address: &str) -> String {
    format!(
        "cn={},{base}",
        ldap3::dn_escape(address.to_ascii_lowercase())
    )
}

fn result_code(e: &Ldap3Error) -> Option<u32> {
    match e {
        Ldap3Error::LdapResult { result } => Some(result.rc),
        _ => None,
    }
}

fn op_error(what: &'static str) -> impl Fn(Ldap3Error) -> WriteError {
    move |e| WriteError::Operation(format!("LDAP {what} failed: {e}"))
}

/// A connection to the first of these servers (indices into the URIs, in
/// order) that takes one, and which it is.
fn open(
    settings: &LdapSettings,
    order: &[usize],
    deadline: Instant,
) -> Result<(usize, LdapConn), WriteError> {
    let mut errors = Vec::new();
    for &i in order {
        let uri = &settings.uris[i];
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            errors.push("out of time".to_string());
            break;
        }
        match connect(settings, uri, remaining) {
            Ok(c) => return Ok((i, c)),
            Err((e, _)) => errors.push(format!("{uri}: {e}")),
        }
    }
    if errors.is_empty() {
        errors.push("no server to ask".into());
    }
    Err(WriteError::Unreachable(errors.join("; ")))
}

/// Every server, in the order configured.
fn all(settings: &LdapSettings) -> Vec<usize> {
    (0..settings.uris.len()).collect()
}

fn write_job(target: &Target, conn: &mut Option<(usize, LdapConn)>, job: &Job) {
    // Bounded like a lookup: connect, then a few operations on each server.
    let tries = target.ldap.uris.len().max(1) as u32;
    let deadline =
        Instant::now() + (target.ldap.connect_timeout + target.ldap.search_timeout * 3) * tries;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        store_with(target, conn, &job.signer, &job.address, deadline)
    }));
    let (qid, address) = (&job.queue_id, shown(&job.address));
    match outcome {
        Ok(Ok(Written::Kept)) => {
            STATS.unchanged.fetch_add(1, Ordering::Relaxed);
            log::debug!("{qid}: harvest: the directory keeps its certificate for {address}");
        }
        Ok(Ok(w)) => {
            STATS.written.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = &job.then {
                f.forget(&job.address);
            }
            log::info!(
                "{qid}: harvested {address} into the directory ({})",
                if w == Written::Added {
                    "added"
                } else {
                    "replaced"
                }
            );
        }
        Ok(Err(e)) => {
            *conn = None;
            STATS.failed.fetch_add(1, Ordering::Relaxed);
            log::warn!("{qid}: harvest of {address} into the directory failed: {e}");
        }
        Err(_) => {
            *conn = None;
            STATS.failed.fetch_add(1, Ordering::Relaxed);
            log::error!("{qid}: internal error: panic while harvesting into the directory");
        }
    }
}

/// Writes on `conn` (kept between jobs). A kept connection that broke is
/// opened again; a server that refers us elsewhere or will not write (a
/// read-only replica, busy) passes the write to the next URI.
fn store_with(
    target: &Target,
    conn: &mut Option<(usize, LdapConn)>,
    signer: &SignerCert,
    address: &str,
    deadline: Instant,
) -> Result<Written, WriteError> {
    if address.is_empty() || !address.contains('@') {
        return Err(WriteError::Operation(format!(
            "not an address: '{}'",
            shown(address)
        )));
    }
    let leaf = signer
        .cert
        .to_der()
        .map_err(|e| WriteError::Operation(e.to_string()))?;
    // The chain, without self-signed roots: those come from trust.
    let mut bundle = vec![signer.cert.clone()];
    bundle.extend(
        signer
            .chain
            .iter()
            .filter(|c| c.issuer_name_hash() != c.subject_name_hash())
            .cloned(),
    );
    let p7 = certs_only_pkcs7(&bundle).map_err(|e| WriteError::Operation(e.to_string()))?;
    let uris = &target.ldap.uris;
    let mut tried = vec![false; uris.len()];
    let mut reopened = false;
    loop {
        let kept = conn.is_some();
        let (at, c) = match conn {
            Some((at, c)) => (*at, c),
            None => {
                let order: Vec<usize> = (0..uris.len()).filter(|&i| !tried[i]).collect();
                let (at, c) = open(&target.ldap, &order, deadline)?;
                let (at, c) = conn.insert((at, c));
                (*at, c)
            }
        };
        match write_address(target, c, address, &signer.cert, &leaf, &p7, deadline) {
            Ok(w) => return Ok(w),
            // A kept connection the server or a firewall dropped: once more.
            Err(Failure::Connection(_)) if kept && !reopened => {
                *conn = None;
                reopened = true;
            }
            Err(Failure::Elsewhere(e) | Failure::Connection(e)) => {
                *conn = None;
                tried[at] = true;
                if tried.iter().all(|&t| t) {
                    return Err(WriteError::Operation(e));
                }
                log::info!(
                    "harvest: {} did not take the write ({e}); trying another server",
                    uris[at]
                );
            }
            Err(Failure::Operation(e)) => {
                *conn = None;
                return Err(WriteError::Operation(e));
            }
        }
    }
}

enum Failure {
    Connection(String),
    /// A referral, busy, unavailable, unwilling: another server may write.
    Elsewhere(String),
    Operation(String),
}

fn failure(what: &str, e: Ldap3Error) -> Failure {
    match result_code(&e) {
        Some(rc) if ask_another(rc) => Failure::Elsewhere(format!("LDAP {what} failed: {e}")),
        Some(_) => Failure::Operation(format!("LDAP {what} failed: {e}")),
        None => Failure::Connection(format!("LDAP {what} failed: {e}")),
    }
}

/// Adds the entry, or replaces its certificates when the new one is valid
/// longer (the folder store's rule). Another node adding it first is
/// taken as "it exists": compared and replaced as such.
fn write_address(
    target: &Target,
    conn: &mut LdapConn,
    address: &str,
    cert: &X509,
    leaf: &[u8],
    p7: &[u8],
    deadline: Instant,
) -> Result<Written, Failure> {
    let settings = &target.ldap;
    let dn = dn_for(&settings.base_dn, address);
    let timeout = || {
        settings
            .search_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1))
    };
    for _ in 0..2 {
        let found = conn
            .with_timeout(timeout())
            .search(
                &dn,
                Scope::Base,
                "(objectClass=*)",
                vec![CERT_ATTR, SMIME_ATTR],
            )
            .and_then(|r| r.success());
        match found {
            Ok((entries, _)) => {
                // The entry's own certificates, not the chain beside them.
                let old: Vec<X509> = certs_in_entries(entries)
                    .into_iter()
                    .filter(|c| {
                        cert_addresses(c)
                            .iter()
                            .any(|a| a.eq_ignore_ascii_case(address))
                    })
                    .collect();
                if old.iter().any(|o| o.not_after() >= cert.not_after()) {
                    return Ok(Written::Kept);
                }
                let mods = vec![
                    Mod::Replace(CERT_ATTR.as_bytes().to_vec(), set(leaf)),
                    Mod::Replace(SMIME_ATTR.as_bytes().to_vec(), set(p7)),
                ];
                conn.with_timeout(timeout())
                    .modify(&dn, mods)
                    .and_then(|r| r.success())
                    .map_err(|e| failure("modify", e))?;
                return Ok(Written::Replaced);
            }
            Err(e) if result_code(&e) == Some(NO_SUCH_OBJECT) => {}
            Err(e) => return Err(failure("search", e)),
        }
        let a = address.as_bytes().to_vec();
        let mut attrs: Vec<(Vec<u8>, HashSet<Vec<u8>>)> = vec![
            (
                b"objectClass".to_vec(),
                HashSet::from([target.class.name().as_bytes().to_vec()]),
            ),
            (b"cn".to_vec(), set(&a)),
            (b"mail".to_vec(), set(&a)),
            (CERT_ATTR.as_bytes().to_vec(), set(leaf)),
            (SMIME_ATTR.as_bytes().to_vec(), set(p7)),
        ];
        if target.class == EntryClass::InetOrgPerson {
            attrs.push((b"sn".to_vec(), set(&a)));
        }
        match conn
            .with_timeout(timeout())
            .add(&dn, attrs)
            .and_then(|r| r.success())
        {
            Ok(_) => return Ok(Written::Added),
            Err(e) if result_code(&e) == Some(ALREADY_EXISTS) => continue,
            Err(e) => return Err(failure("add", e)),
        }
    }
    Err(Failure::Operation(format!(
        "{dn} appears and disappears: not written"
    )))
}

fn set(v: &[u8]) -> HashSet<Vec<u8>> {
    HashSet::from([v.to_vec()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_one_rdn_under_the_base() {
        assert_eq!(
            dn_for("ou=contacts,dc=example,dc=com", "Alice@Example.com"),
            "cn=alice@example.com,ou=contacts,dc=example,dc=com"
        );
        let dn = dn_for("ou=c,dc=x", "a,cn=admin+x=y@x");
        assert_eq!(dn, "cn=a\\2ccn\\3dadmin\\2bx\\3dy@x,ou=c,dc=x");
        assert!(crate::ldap::dn_within(&dn, "ou=c,dc=x"));
        assert_eq!(dn_for("ou=c", " #a"), "cn=\\20#a,ou=c");
    }

    #[test]
    fn certs_only_bundles_read_back() {
        let certs = vec![
            crate::pki::test_self_signed("one").0,
            crate::pki::test_self_signed("two").0,
        ];
        let der = certs_only_pkcs7(&certs).unwrap();
        let back = crate::ldap::certs_from_pkcs7(&der);
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].to_der().unwrap(), certs[0].to_der().unwrap());
        assert_eq!(back[1].to_der().unwrap(), certs[1].to_der().unwrap());
        assert_eq!(crate::pki::certs_from_bytes(&der).unwrap().len(), 2);
    }
}
