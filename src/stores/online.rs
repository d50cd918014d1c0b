//! Online answers about certificates: revocation status by OCSP (RFC 6960,
//! RFC 5019 GET for short requests) and by the CRLs of their distribution
//! points (RFC 5280 §4.2.1.13), and missing intermediates from AIA
//! caIssuers (§4.2.2.1). Answers are cached until their nextUpdate (capped),
//! CRLs in use are fetched again before they expire, and a URL that failed
//! rests for `retry_after`. Status is asked only for certificates whose
//! chain already verified, so only AIA follows URLs of unverified
//! certificates (what it learns is kept apart: a sender cannot make a CA's
//! OCSP or CRL URL look failed); `fetch` bounds what any URL can make us do.

use crate::config::{Online as Settings, RevocationMode};
use crate::fetch::{check_url, FetchError, Fetcher, NetPolicy};
use crate::ffi::{
    OCSP_check_nonce, OCSP_request_add1_nonce, X509_STORE_CTX_get0_param, X509_STORE_CTX_set0_crls,
};
use crate::mail::date::unix_now as now;
use crate::pki;
use foreign_types::{ForeignType, ForeignTypeRef};
use lru::LruCache;
use openssl::asn1::Asn1TimeRef;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ocsp::{
    OcspCertId, OcspCertStatus, OcspFlag, OcspRequest, OcspResponse, OcspResponseStatus,
    OcspRevokedStatus,
};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreRef;
use openssl::x509::verify::{X509VerifyFlags, X509VerifyParamRef};
use openssl::x509::{X509Crl, X509Ref, X509StoreContext, X509VerifyResult, X509};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// URLs of one kind tried per certificate, at most.
const MAX_URLS: usize = 2;
/// Certificates one AIA answer may carry.
const MAX_AIA_CERTS: usize = 8;
/// AIA answers kept: they come from URLs senders choose.
const MAX_AIA_ANSWERS: usize = 100;
/// CRLs kept (each at most `max_response_size`).
const MAX_CRLS: usize = 64;
/// Without a nextUpdate an answer is kept at most this long.
const NO_NEXT_UPDATE_AGE: i64 = 3600;
/// Clock skew allowed for thisUpdate (OCSP_check_validity's nsec).
const SKEW: i64 = 300;
/// OCSP answers and caIssuers certificates are small; only CRLs may be
/// as large as `max_response_size`.
const MAX_SMALL_ANSWER: u64 = 256 * 1024;
/// An RFC 5019 GET is used when the whole URL stays within this.
const MAX_GET_URL: usize = 255;
/// A URL shown in a reason (a header comment) is cut to this.
const SHOWN_URL: usize = 80;

/// Counters for the stats line; they survive reloads.
#[derive(Debug, Default)]
pub struct Stats {
    pub ocsp_requests: AtomicU64,
    pub crl_fetches: AtomicU64,
    pub aia_fetches: AtomicU64,
    pub cache_hits: AtomicU64,
    pub failures: AtomicU64,
}

pub static STATS: Stats = Stats {
    ocsp_requests: AtomicU64::new(0),
    crl_fetches: AtomicU64::new(0),
    aia_fetches: AtomicU64::new(0),
    cache_hits: AtomicU64::new(0),
    failures: AtomicU64::new(0),
};

impl Stats {
    /// The part of the stats line that counts online checks.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            " ocsp requests={} crl fetches={} aia fetches={} online cache hits={} online failures={}",
            g(&self.ocsp_requests),
            g(&self.crl_fetches),
            g(&self.aia_fetches),
            g(&self.cache_hits),
            g(&self.failures)
        )
    }
}

/// The revocation status of a certificate or chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not revoked, or nothing to ask (no OCSP or CRL URL).
    Good,
    Revoked(String),
    /// No answer could be had: why.
    Unknown(String),
    /// The message's lookup budget ran out first. Not "unknown": a sender
    /// can spend the budget (slow AIA servers), so soft mode must not
    /// pass it.
    OutOfTime,
}

/// What a fetch is for: failures are remembered per purpose, so that a
/// URL a sender names for AIA cannot stand in for a CA's OCSP or CRL URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Purpose {
    Ocsp,
    Crl,
    Issuers,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Purpose::Ocsp => "OCSP",
            Purpose::Crl => "CRL",
            Purpose::Issuers => "caIssuers",
        })
    }
}

struct CachedStatus {
    revoked: Option<String>,
    until: i64,
    /// An answer read from a CRL: valid while that CRL is the one in use.
    crl: Option<Weak<CrlEntry>>,
}

struct CrlEntry {
    crl: X509Crl,
    /// The issuer whose key signed it, for checking and refreshing.
    issuer: X509,
    fetched: i64,
    until: i64,
    /// Asked for since it was fetched: worth refreshing.
    used: AtomicBool,
    /// A newer fetch of its URL took its place.
    replaced: AtomicBool,
}

/// A fetch under way, for those waiting on it.
#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    landed: std::sync::Condvar,
}

/// Ends a flight when the fetch returns (or unwinds).
struct Landing<'a> {
    inflight: &'a Mutex<HashMap<(Purpose, String), Arc<Flight>>>,
    key: &'a (Purpose, String),
    flight: &'a Flight,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        lock(self.inflight).remove(self.key);
        *lock(&self.flight.done) = true;
        self.flight.landed.notify_all();
    }
}

struct Shared {
    settings: Settings,
    /// CRL and caIssuers fetches under way, by URL.
    inflight: Mutex<HashMap<(Purpose, String), Arc<Flight>>>,
    /// For CRLs.
    fetcher: Fetcher,
    /// For OCSP answers and issuer certificates.
    small: Fetcher,
    status: Mutex<LruCache<Vec<u8>, CachedStatus>>,
    crls: Mutex<LruCache<String, Arc<CrlEntry>>>,
    aia: Mutex<LruCache<String, (Vec<X509>, i64)>>,
    failed: Mutex<LruCache<(Purpose, String), (Instant, FetchError)>>,
    refresher: AtomicBool,
}

/// The online checker of one configuration (dropped, with its caches and
/// refresher, at reload).
pub struct Online {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Online {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Online({:?})", self.shared.settings.revocation)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(n.max(1)).expect("n >= 1")))
}

/// Whether we fetch from this URI: printable http only. AD CS lists an
/// ldap:/// location first and an http one after it; such others are
/// passed over (and counted, see `Urls::others`).
fn usable(uri: &str) -> bool {
    check_url(uri).is_ok()
}

/// A URL as a reason shows it.
fn shown(url: &str) -> String {
    match url.get(..SHOWN_URL) {
        Some(head) if url.len() > SHOWN_URL => format!("{head}..."),
        _ => url.to_string(),
    }
}

/// The URLs a certificate names for one purpose.
#[derive(Debug, Default, PartialEq, Eq)]
struct Urls {
    /// The usable ones, at most `MAX_URLS`.
    http: Vec<String>,
    /// Whether it named others (ldap, https, malformed).
    others: bool,
}

impl Urls {
    fn add(&mut self, uri: &str) {
        if !usable(uri) {
            self.others = true;
        } else if self.http.len() < MAX_URLS {
            self.http.push(uri.to_string());
        }
    }
}

/// The URIs of one access method in a certificate's AIA extension.
fn aia_urls(cert: &X509Ref, method: Nid) -> Urls {
    let mut urls = Urls::default();
    for a in cert.authority_info().iter().flat_map(|st| st.iter()) {
        if a.method().nid() == method {
            match a.location().uri() {
                Some(u) => urls.add(u),
                None => urls.others = true,
            }
        }
    }
    urls
}

/// The full-name URIs of a certificate's CRL distribution points.
fn crl_urls(cert: &X509Ref) -> Urls {
    let mut urls = Urls::default();
    for p in cert
        .crl_distribution_points()
        .iter()
        .flat_map(|st| st.iter())
    {
        let names = p.distpoint().and_then(|d| d.fullname());
        for n in names.into_iter().flatten() {
            match n.uri() {
                Some(u) => urls.add(u),
                None => urls.others = true,
            }
        }
    }
    urls
}

fn reason_name(r: OcspRevokedStatus) -> &'static str {
    match r {
        OcspRevokedStatus::KEY_COMPROMISE => "key compromise",
        OcspRevokedStatus::CA_COMPROMISE => "CA compromise",
        OcspRevokedStatus::AFFILIATION_CHANGED => "affiliation changed",
        OcspRevokedStatus::STATUS_SUPERSEDED => "superseded",
        OcspRevokedStatus::STATUS_CESSATION_OF_OPERATION => "cessation of operation",
        OcspRevokedStatus::STATUS_CERTIFICATE_HOLD => "on hold",
        _ => "",
    }
}

fn revoked_text(reason: &str) -> String {
    if reason.is_empty() {
        "certificate revoked".into()
    } else {
        format!("certificate revoked: {reason}")
    }
}

/// Issuers fetched (AIA) for one chain, at most: a leaf and two
/// intermediates.
const MAX_FETCHED_ISSUERS: usize = 2;

/// Why a chain could not be built.
pub enum ChainFailure {
    /// OpenSSL could not run the check (memory, say): no verdict.
    Internal(openssl::error::ErrorStack),
    Invalid(X509VerifyResult),
    /// A missing issuer named a caIssuers URL that gave none.
    NotFetched(FetchError),
}

/// `pki::verify_chain`, completed online: when an issuer is missing and
/// the certificate that lacks it names a caIssuers URL, what that URL
/// holds joins the untrusted certificates and the chain is built again.
pub fn build_chain(
    online: Option<&Online>,
    store: &X509StoreRef,
    cert: &X509Ref,
    certs: &[X509],
    at: Option<i64>,
    deadline: Instant,
) -> Result<Vec<X509>, ChainFailure> {
    let mut pool = std::borrow::Cow::Borrowed(certs);
    let mut fetched = 0;
    loop {
        let (result, at_cert) = match pki::verify_chain(store, cert, &pool, at) {
            Ok(chain) => return Ok(chain),
            Err(pki::ChainError::Internal(e)) => return Err(ChainFailure::Internal(e)),
            Err(pki::ChainError::Invalid(result, at_cert)) => (result, at_cert),
        };
        let missing_issuer = matches!(
            result.as_raw(),
            openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
                | openssl_sys::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        );
        let (Some(online), Some(lacking)) = (online.filter(|o| o.fetches_issuers()), at_cert)
        else {
            return Err(ChainFailure::Invalid(result));
        };
        if !missing_issuer || fetched >= MAX_FETCHED_ISSUERS || !Online::has_issuer_url(&lacking) {
            return Err(ChainFailure::Invalid(result));
        }
        let found = online
            .fetch_issuers(&lacking, deadline)
            .map_err(ChainFailure::NotFetched)?;
        let known: Vec<Vec<u8>> = pool.iter().filter_map(|c| c.to_der().ok()).collect();
        let new: Vec<X509> = found
            .into_iter()
            .filter(|c| c.to_der().is_ok_and(|d| !known.contains(&d)))
            .collect();
        if new.is_empty() {
            return Err(ChainFailure::Invalid(result));
        }
        pool.to_mut().extend(new);
        fetched += 1;
    }
}

/// `until` (a Unix time of the answer) as what the cache keeps.
fn keep_until(settings: &Settings, next_update: Option<i64>, now: i64) -> i64 {
    let cap = now + settings.max_cache_age.as_secs() as i64;
    next_update.unwrap_or(now + NO_NEXT_UPDATE_AGE).min(cap)
}

/// OpenSSL's own CRL check (RFC 5280 §6.3: scope and issuing distribution
/// point, reasons, signature, times, critical extensions) of `chain[0]`
/// against `crl`, the rest of the chain as its path: revoked (why) or not.
fn crl_verdict(
    store: &X509StoreRef,
    chain: &[X509],
    crl: &X509Crl,
) -> Result<Option<String>, String> {
    let internal = |_| "CRL check not run".to_string();
    let mut path = Stack::new().map_err(internal)?;
    for c in &chain[1..] {
        path.push(c.clone()).map_err(internal)?;
    }
    // The crate has no stack of CRLs: a bare OpenSSL stack that borrows
    // `crl` (the context only reads it) and is freed without its element.
    struct CrlList(*mut openssl_sys::OPENSSL_STACK);
    impl Drop for CrlList {
        fn drop(&mut self) {
            // SAFETY: our own stack; its one element is not owned by it.
            unsafe { openssl_sys::OPENSSL_sk_free(self.0) }
        }
    }
    // SAFETY: a new empty stack; NULL is checked below.
    let crls = CrlList(unsafe { openssl_sys::OPENSSL_sk_new_null() });
    // SAFETY: a live stack and a CRL that outlives it.
    if crls.0.is_null()
        || unsafe { openssl_sys::OPENSSL_sk_push(crls.0, crl.as_ptr() as *const _) } == 0
    {
        return Err("CRL check not run".into());
    }
    let mut ctx = X509StoreContext::new().map_err(internal)?;
    let result = ctx
        .init(store, &chain[0], &path, |c| {
            // SAFETY: the live context's own parameters, and a CRL list
            // that outlives the verification, which only reads it.
            unsafe {
                let param = X509_STORE_CTX_get0_param(c.as_ptr());
                X509VerifyParamRef::from_ptr_mut(param).set_flags(X509VerifyFlags::CRL_CHECK)?;
                X509_STORE_CTX_set0_crls(c.as_ptr(), crls.0 as *mut _);
            }
            let ok = c.verify_cert()?;
            Ok((ok, c.error()))
        })
        .map_err(internal)?;
    match result {
        // Not revoked only when the whole check passed.
        (true, r) if r == X509VerifyResult::OK => Ok(None),
        (true, _) => Err("CRL check inconclusive".into()),
        (false, r) => crl_error(r),
    }
}

fn crl_error(result: X509VerifyResult) -> Result<Option<String>, String> {
    use openssl_sys as s;
    match result.as_raw() {
        s::X509_V_OK => Err("CRL check inconclusive".into()),
        s::X509_V_ERR_CERT_REVOKED => Ok(Some("certificate revoked".into())),
        s::X509_V_ERR_UNABLE_TO_GET_CRL => Err("CRL does not cover the certificate".into()),
        _ => Err(format!("CRL not usable: {}", result.error_string())),
    }
}

impl Online {
    pub fn new(settings: Settings) -> Online {
        let policy = NetPolicy {
            allow: settings.allow_networks.clone(),
            deny: settings.deny_networks.clone(),
        };
        let max = settings.max_response_size;
        let fetcher = Fetcher::new(policy.clone(), settings.timeout, max);
        let small = Fetcher::new(policy, settings.timeout, max.min(MAX_SMALL_ANSWER));
        let n = settings.cache_entries;
        Online {
            shared: Arc::new(Shared {
                fetcher,
                small,
                status: lru(n),
                crls: lru(MAX_CRLS.min(n)),
                aia: lru(MAX_AIA_ANSWERS.min(n)),
                failed: lru(n.min(1000)),
                refresher: AtomicBool::new(false),
                inflight: Mutex::new(HashMap::new()),
                settings,
            }),
        }
    }

    pub fn mode(&self) -> RevocationMode {
        self.shared.settings.revocation
    }

    pub fn fetches_issuers(&self) -> bool {
        self.shared.settings.aia
    }

    /// The revocation status of a verified chain (leaf to anchor): every
    /// certificate but the anchor, each against its issuer in the chain.
    pub fn chain_status(&self, chain: &[X509], store: &X509StoreRef, deadline: Instant) -> Status {
        if self.mode() == RevocationMode::Off {
            return Status::Good;
        }
        crate::metrics::timed(crate::metrics::Operation::RevocationLookup, || {
            self.chain_status_now(chain, store, deadline)
        })
    }

    fn chain_status_now(&self, chain: &[X509], store: &X509StoreRef, deadline: Instant) -> Status {
        let mut unknown = None;
        for i in 0..chain.len().saturating_sub(1) {
            match self.shared.cert_status(&chain[i..], store, deadline) {
                Status::Good => {}
                Status::Revoked(why) => {
                    let whose = if i == 0 { "" } else { " in chain" };
                    return Status::Revoked(format!("{why}{whose}"));
                }
                Status::OutOfTime => return Status::OutOfTime,
                Status::Unknown(why) => {
                    unknown.get_or_insert(why);
                }
            }
        }
        match unknown {
            Some(why) => Status::Unknown(why),
            None => Status::Good,
        }
    }

    /// Issuer certificates for `cert` from its AIA caIssuers URLs: the
    /// certificates of the answer named as its issuer (they still have to
    /// chain to an anchor). An error says why none could be had.
    pub fn fetch_issuers(
        &self,
        cert: &X509Ref,
        deadline: Instant,
    ) -> Result<Vec<X509>, FetchError> {
        let mut last = None;
        for url in aia_urls(cert, Nid::AD_CA_ISSUERS).http {
            match self.shared.aia_certs(&url, deadline) {
                Ok(certs) => {
                    let issuers: Vec<X509> = certs
                        .into_iter()
                        .filter(|c| {
                            c.subject_name()
                                .try_cmp(cert.issuer_name())
                                .is_ok_and(|o| o.is_eq())
                        })
                        .collect();
                    if !issuers.is_empty() {
                        return Ok(issuers);
                    }
                    last = Some(FetchError::Refused(format!(
                        "{} holds no issuer",
                        shown(&url)
                    )));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Refused("no http caIssuers URL".into())))
    }

    /// Whether `cert` names an http caIssuers URL.
    pub fn has_issuer_url(cert: &X509Ref) -> bool {
        !aia_urls(cert, Nid::AD_CA_ISSUERS).http.is_empty()
    }
}

impl Shared {
    /// The status of `path[0]`, issued by `path[1]` (the rest of the path
    /// up to the anchor follows).
    fn cert_status(
        self: &Arc<Self>,
        path: &[X509],
        store: &X509StoreRef,
        deadline: Instant,
    ) -> Status {
        let cert = &path[0];
        let Ok(key) = cert.digest(MessageDigest::sha256()) else {
            return Status::Unknown("certificate not hashable".into());
        };
        let now = now();
        if let Some(c) = lock(&self.status).get(&key[..]).filter(|c| c.until > now) {
            // An answer from a CRL holds while that CRL is the current one.
            let crl_current = match &c.crl {
                None => true,
                Some(w) => w.upgrade().is_some_and(|e| {
                    e.used.store(true, Ordering::Relaxed);
                    !e.replaced.load(Ordering::Acquire)
                }),
            };
            if crl_current {
                STATS.cache_hits.fetch_add(1, Ordering::Relaxed);
                return match &c.revoked {
                    Some(why) => Status::Revoked(why.clone()),
                    None => Status::Good,
                };
            }
        }
        let ocsp = if self.settings.ocsp {
            aia_urls(cert, Nid::AD_OCSP)
        } else {
            Urls::default()
        };
        let crls = if self.settings.crl {
            crl_urls(cert)
        } else {
            Urls::default()
        };
        if ocsp.http.is_empty() && crls.http.is_empty() {
            if ocsp.others || crls.others {
                // It names where to ask, only not in a form we fetch.
                return Status::Unknown("no http OCSP or CRL URL".into());
            }
            // Nothing to ask: remembered, so that the next message skips
            // reading the extensions too.
            let until = now + self.settings.max_cache_age.as_secs() as i64;
            return self.remember(&key, None, until, None);
        }
        let mut why = Vec::new();
        for url in &ocsp.http {
            match self.ocsp(url, path, store, deadline) {
                Ok((revoked, until)) => return self.remember(&key, revoked, until, None),
                Err(FetchError::OutOfTime) => return Status::OutOfTime,
                Err(e) => why.push(format!("OCSP {}: {e}", shown(url))),
            }
        }
        for url in &crls.http {
            match self.crl_status(url, path, store, deadline) {
                Ok((revoked, entry)) => {
                    let crl = Some(Arc::downgrade(&entry));
                    return self.remember(&key, revoked, entry.until, crl);
                }
                Err(FetchError::OutOfTime) => return Status::OutOfTime,
                Err(e) => why.push(format!("CRL {}: {e}", shown(url))),
            }
        }
        Status::Unknown(why.join("; "))
    }

    /// Caches an answer about the certificate with this fingerprint.
    fn remember(
        &self,
        key: &[u8],
        revoked: Option<String>,
        until: i64,
        crl: Option<Weak<CrlEntry>>,
    ) -> Status {
        let status = match &revoked {
            Some(why) => Status::Revoked(why.clone()),
            None => Status::Good,
        };
        let cached = CachedStatus {
            revoked,
            until,
            crl,
        };
        lock(&self.status).put(key.to_vec(), cached);
        status
    }

    /// A URL that failed lately for this purpose, with how.
    fn resting(&self, purpose: Purpose, url: &str) -> Option<FetchError> {
        let key = (purpose, url.to_string());
        let mut failed = lock(&self.failed);
        match failed.get(&key) {
            Some((until, e)) if *until > Instant::now() => Some(e.clone()),
            Some(_) => {
                failed.pop(&key);
                None
            }
            None => None,
        }
    }

    /// Counts, logs and (but for a budget spent) remembers a failure.
    fn failed(&self, purpose: Purpose, url: &str, e: &FetchError) {
        STATS.failures.fetch_add(1, Ordering::Relaxed);
        log::info!("online: {purpose} {url}: {e}");
        if *e != FetchError::OutOfTime {
            lock(&self.failed).put(
                (purpose, url.to_string()),
                (Instant::now() + self.settings.retry_after, e.clone()),
            );
        }
    }

    /// GETs `url`, or POSTs an OCSP request to it. `base` is the URL the
    /// certificate named (an OCSP GET adds the request to it): what
    /// failures are remembered and logged by.
    fn fetch(
        &self,
        purpose: Purpose,
        base: &str,
        url: &str,
        post: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<Vec<u8>, FetchError> {
        // The same answer until retry_after has passed.
        if let Some(e) = self.resting(purpose, base) {
            return Err(e);
        }
        let (client, count) = match purpose {
            Purpose::Crl => (&self.fetcher, &STATS.crl_fetches),
            Purpose::Ocsp => (&self.small, &STATS.ocsp_requests),
            Purpose::Issuers => (&self.small, &STATS.aia_fetches),
        };
        count.fetch_add(1, Ordering::Relaxed);
        // Whether the message's budget, not `timeout`, bounds this request
        // (with a little slack for the time the message has already taken).
        let cut_by_budget = deadline.saturating_duration_since(Instant::now())
            + Duration::from_millis(100)
            < self.settings.timeout;
        let r = match post {
            Some(body) => client.post(url, "application/ocsp-request", body, deadline),
            None => client.get(url, deadline),
        };
        // A request cut short by the message's budget says nothing of the
        // URL; one that had its whole timeout does.
        let r = r.map_err(|e| {
            if cut_by_budget && Instant::now() >= deadline {
                FetchError::OutOfTime
            } else {
                e
            }
        });
        if let Err(e) = &r {
            self.failed(purpose, base, e);
        }
        r
    }

    /// The OCSP answer for `path[0]`: revoked (why) or not, and until when.
    fn ocsp(
        &self,
        url: &str,
        path: &[X509],
        store: &X509StoreRef,
        deadline: Instant,
    ) -> Result<(Option<String>, i64), FetchError> {
        let (cert, issuer) = (&path[0], &path[1]);
        let id = || OcspCertId::from_cert(MessageDigest::sha1(), cert, issuer);
        let e = |_| FetchError::Refused("OCSP request not built".into());
        let mut req = OcspRequest::new().map_err(e)?;
        req.add_id(id().map_err(e)?).map_err(e)?;
        if self.settings.ocsp_nonce {
            // SAFETY: a live request; a NULL value asks OpenSSL for random bytes.
            if unsafe { OCSP_request_add1_nonce(req.as_ptr(), std::ptr::null_mut(), -1) } != 1 {
                return Err(FetchError::Refused("nonce not added".into()));
            }
        }
        let der = req.to_der().map_err(e)?;
        let get = get_url(url, &der);
        let answer = match &get {
            Some(u) => self.fetch(Purpose::Ocsp, url, u, None, deadline),
            None => self.fetch(Purpose::Ocsp, url, url, Some(&der), deadline),
        }?;
        // An answer that does not hold is about this certificate only: not
        // remembered against the URL.
        let bad = |why: &str| {
            STATS.failures.fetch_add(1, Ordering::Relaxed);
            log::info!("online: OCSP answer of {url}: {why}");
            Err(FetchError::Refused(why.to_string()))
        };
        let Ok(resp) = OcspResponse::from_der(&answer) else {
            return bad("unreadable answer");
        };
        if resp.status() != OcspResponseStatus::SUCCESSFUL {
            return bad(&format!("responder status {}", resp.status().as_raw()));
        }
        let Ok(basic) = resp.basic() else {
            return bad("no basic response");
        };
        let Ok(mut certs) = Stack::new() else {
            return bad("out of memory");
        };
        for c in &path[1..] {
            let _ = certs.push(c.clone());
        }
        // The responder is the issuer or one it delegated to (id-kp-OCSPSigning).
        if basic.verify(&certs, store, OcspFlag::empty()).is_err() {
            return bad("responder signature not valid");
        }
        if self.settings.ocsp_nonce {
            // SAFETY: both live; the check only reads them.
            if unsafe { OCSP_check_nonce(req.as_ptr(), basic.as_ptr()) } != 1 {
                return bad("nonce missing or not ours");
            }
        }
        let id = id().map_err(e)?;
        let Some(st) = basic.find_status(&id) else {
            return bad("no status for the certificate");
        };
        // Current, and (without a nonce, an answer could be replayed) not
        // older than we would keep one.
        let max_age = self.settings.max_cache_age.as_secs() as u32;
        if st.check_validity(SKEW as u32, Some(max_age)).is_err() {
            return bad("answer outdated or not yet valid");
        }
        let now = now();
        let next = st.next_update().and_then(|t| {
            // SAFETY: a GeneralizedTime is an ASN1_TIME (both ASN1_STRING).
            pki::unix_time(unsafe { Asn1TimeRef::from_ptr(t.as_ptr() as *mut _) })
        });
        let until = keep_until(&self.settings, next, now);
        match st.status {
            OcspCertStatus::GOOD => Ok((None, until)),
            OcspCertStatus::REVOKED => Ok((Some(revoked_text(reason_name(st.reason))), until)),
            _ => bad("responder does not know the certificate"),
        }
    }

    /// Whether `path[0]` is revoked (why) by the CRL at `url`, fetched or
    /// cached, and that CRL.
    fn crl_status(
        self: &Arc<Self>,
        url: &str,
        path: &[X509],
        store: &X509StoreRef,
        deadline: Instant,
    ) -> Result<(Option<String>, Arc<CrlEntry>), FetchError> {
        let issuer = &path[1];
        let cached = || {
            let c = lock(&self.crls).get(url).cloned()?;
            (c.until > now() && same_cert(&c.issuer, issuer)).then_some(c)
        };
        let entry = self.once(Purpose::Crl, url, deadline, &cached, || {
            let e = self.fetch_crl(url, issuer, deadline)?;
            let kept = self.keep_crl(url.to_string(), e);
            self.start_refresher();
            Ok(kept)
        })?;
        entry.used.store(true, Ordering::Relaxed);
        let revoked = crl_verdict(store, path, &entry.crl).map_err(FetchError::Refused)?;
        Ok((revoked, entry))
    }

    /// A CRL fetched (again): answers read from the one it replaces are
    /// no longer used. One older than the CRL kept (the refresher and a
    /// message raced, or a mirror lags) does not replace it.
    fn keep_crl(&self, url: String, entry: Arc<CrlEntry>) -> Arc<CrlEntry> {
        let issued = |e: &CrlEntry| pki::unix_time(e.crl.last_update()).unwrap_or(0);
        let mut crls = lock(&self.crls);
        if let Some(cur) = crls.get(&url) {
            if issued(cur) > issued(&entry) && same_cert(&cur.issuer, &entry.issuer) {
                return Arc::clone(cur);
            }
        }
        if let Some(old) = crls.put(url, Arc::clone(&entry)) {
            old.replaced.store(true, Ordering::Release);
        }
        entry
    }

    /// A CRL from `url`, checked before it is kept: signed by `issuer` and
    /// current. Whether it covers a certificate is `crl_verdict`'s.
    fn fetch_crl(
        &self,
        url: &str,
        issuer: &X509,
        deadline: Instant,
    ) -> Result<Arc<CrlEntry>, FetchError> {
        let data = self.fetch(Purpose::Crl, url, url, None, deadline)?;
        // A CRL that does not hold is the same for every certificate:
        // remembered against its URL, not downloaded for each message.
        let bad = |why: &str| {
            let e = FetchError::Refused(why.to_string());
            self.failed(Purpose::Crl, url, &e);
            e
        };
        // Except one of another issuer (a CA's new key, the same name and
        // URL): right for some certificates, so not remembered.
        let not_ours = |why: &str| {
            STATS.failures.fetch_add(1, Ordering::Relaxed);
            log::info!("online: CRL {url}: {why}");
            FetchError::Refused(why.to_string())
        };
        let crl = if memchr::memmem::find(&data, b"-----BEGIN X509 CRL-----").is_some() {
            X509Crl::from_pem(&data)
        } else {
            X509Crl::from_der(&data)
        }
        .map_err(|_| bad("unreadable CRL"))?;
        let same_issuer = crl
            .issuer_name()
            .try_cmp(issuer.subject_name())
            .is_ok_and(|o| o.is_eq());
        let signed = issuer
            .public_key()
            .ok()
            .and_then(|k| crl.verify(&k).ok())
            .unwrap_or(false);
        if !same_issuer || !signed {
            return Err(not_ours("CRL not signed by the certificate's issuer"));
        }
        let now = now();
        let this = pki::unix_time(crl.last_update());
        let next = crl.next_update().and_then(pki::unix_time);
        // OpenSSL's own check (`crl_verdict`) allows no skew either.
        if this.is_none_or(|t| t > now) {
            return Err(bad("CRL not yet valid"));
        }
        if next.is_some_and(|t| t < now) {
            return Err(bad("CRL expired"));
        }
        let max_age = self.settings.max_cache_age.as_secs() as i64;
        if next.is_none() && this.is_some_and(|t| t < now - max_age) {
            return Err(bad("CRL without nextUpdate older than max_cache_age"));
        }
        Ok(Arc::new(CrlEntry {
            crl,
            issuer: issuer.clone(),
            fetched: now,
            until: keep_until(&self.settings, next, now),
            used: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
        }))
    }

    /// The certificates at an AIA caIssuers URL, fetched or cached.
    fn aia_certs(&self, url: &str, deadline: Instant) -> Result<Vec<X509>, FetchError> {
        let cached = || {
            let now = now();
            let mut aia = lock(&self.aia);
            aia.get(url)
                .filter(|(_, until)| *until > now)
                .map(|(certs, _)| certs.clone())
        };
        self.once(Purpose::Issuers, url, deadline, &cached, || {
            let data = self.fetch(Purpose::Issuers, url, url, None, deadline)?;
            let mut certs = pki::certs_from_bytes(&data).map_err(|why| {
                let e = FetchError::Refused(format!("{}: {why}", shown(url)));
                self.failed(Purpose::Issuers, url, &e);
                e
            })?;
            certs.truncate(MAX_AIA_CERTS);
            let until = now() + self.settings.max_cache_age.as_secs() as i64;
            lock(&self.aia).put(url.to_string(), (certs.clone(), until));
            Ok(certs)
        })
    }

    /// What `cached` has, else one fetch at a time per URL: the first
    /// message to need it fetches (`fetch` fills the cache), the others
    /// wait for it, within their own deadline, and then read the cache or
    /// the failure it left. A burst of mail from a new CA downloads its CRL
    /// once, not once per message.
    fn once<T>(
        &self,
        purpose: Purpose,
        url: &str,
        deadline: Instant,
        cached: &dyn Fn() -> Option<T>,
        fetch: impl FnOnce() -> Result<T, FetchError>,
    ) -> Result<T, FetchError> {
        let key = (purpose, url.to_string());
        loop {
            if let Some(v) = cached() {
                STATS.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(v);
            }
            if let Some(e) = self.resting(purpose, url) {
                return Err(e);
            }
            let (flight, leader) = {
                let mut inflight = lock(&self.inflight);
                match inflight.get(&key) {
                    Some(f) => (Arc::clone(f), false),
                    None => {
                        let f = Arc::new(Flight::default());
                        inflight.insert(key.clone(), Arc::clone(&f));
                        (f, true)
                    }
                }
            };
            if leader {
                // Landed, failed or panicked: the waiters are let go.
                let _landing = Landing {
                    inflight: &self.inflight,
                    key: &key,
                    flight: &flight,
                };
                return fetch();
            }
            let mut done = lock(&flight.done);
            while !*done {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(FetchError::OutOfTime);
                }
                done = flight
                    .landed
                    .wait_timeout(done, left)
                    .map_or_else(|e| e.into_inner().0, |r| r.0);
            }
            // The leader's answer is in the cache or the failure memory;
            // if neither (its own budget ran out), this one fetches.
        }
    }

    /// One thread per configuration keeps CRLs in use fresh; it ends when
    /// the configuration is replaced. Started with the first CRL (after the
    /// daemon has forked).
    fn start_refresher(self: &Arc<Self>) {
        if self.refresher.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak: Weak<Shared> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("crl-refresh".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                match weak.upgrade() {
                    Some(s) => s.refresh_crls(),
                    None => break,
                }
            });
        if spawned.is_err() {
            // Without it CRLs are fetched again when a message needs them.
            self.refresher.store(false, Ordering::SeqCst);
        }
    }

    /// Fetches again the CRLs used since their fetch that are in the last
    /// tenth of the time we keep them (at least the last 2 s).
    fn refresh_crls(&self) {
        let now = now();
        let due: Vec<(String, Arc<CrlEntry>)> = lock(&self.crls)
            .iter()
            .filter(|(_, e)| {
                let margin = ((e.until - e.fetched) / 10).max(2);
                e.used.load(Ordering::Relaxed) && e.until - now <= margin
            })
            .map(|(u, e)| (u.clone(), Arc::clone(e)))
            .collect();
        for (url, old) in due {
            let deadline = Instant::now() + self.settings.timeout;
            match self.fetch_crl(&url, &old.issuer, deadline) {
                Ok(fresh) => {
                    log::debug!("online: CRL of {url} refreshed");
                    let _ = self.keep_crl(url, fresh);
                }
                // Kept until it expires; a message then fetches it itself.
                Err(_) => old.used.store(false, Ordering::Relaxed),
            }
        }
    }
}

fn same_cert(a: &X509Ref, b: &X509Ref) -> bool {
    a.to_der().ok() == b.to_der().ok()
}

/// RFC 5019 §5: the GET form (`url/` + URL-escaped base64 of the request)
/// when it is short enough.
fn get_url(url: &str, der: &[u8]) -> Option<String> {
    let b64 = openssl::base64::encode_block(der);
    let escaped = b64
        .replace('%', "%25")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let sep = if url.ends_with('/') { "" } else { "/" };
    let full = format!("{url}{sep}{escaped}");
    (full.len() <= MAX_GET_URL).then_some(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::MAX_URL;

    fn settings() -> Settings {
        Settings {
            revocation: RevocationMode::Soft,
            ocsp: true,
            crl: true,
            aia: true,
            ocsp_nonce: false,
            timeout: Duration::from_secs(3),
            max_response_size: 1 << 20,
            cache_entries: 100,
            max_cache_age: Duration::from_secs(86_400),
            retry_after: Duration::from_secs(30),
            allow_networks: Vec::new(),
            deny_networks: Vec::new(),
        }
    }

    #[test]
    fn answers_are_kept_until_next_update_within_the_cap() {
        let s = settings();
        assert_eq!(keep_until(&s, Some(1_000_600), 1_000_000), 1_000_600);
        assert_eq!(
            keep_until(&s, None, 1_000_000),
            1_000_000 + NO_NEXT_UPDATE_AGE
        );
        assert_eq!(
            keep_until(&s, Some(1_000_000 + 30 * 86_400), 1_000_000),
            1_000_000 + 86_400
        );
    }

    #[test]
    fn urls_we_fetch_and_urls_we_show() {
        assert!(usable("http://ca.example/x.crl") && usable("HTTP://x/"));
        for no in [
            "https://x/",
            "ldap:///cn=x",
            "http://a b/",
            "http://x/\r\n",
            "ftp://x",
        ] {
            assert!(!usable(no), "{no}");
        }
        assert!(!usable(&format!("http://x/{}", "a".repeat(MAX_URL))));
        let long = format!("http://x/{}", "a".repeat(200));
        assert_eq!(shown(&long).len(), SHOWN_URL + 3);
        assert_eq!(shown("http://x/"), "http://x/");
    }

    #[test]
    fn short_requests_go_by_get_long_ones_by_post() {
        let u = get_url("http://ocsp.example", &[0xfb; 40]).unwrap();
        assert!(u.starts_with("http://ocsp.example/"), "{u}");
        assert!(u.contains("%2F") && !u[7..].contains('+'), "{u}");
        assert!(get_url("http://ocsp.example/", &[0; 300]).is_none());
    }

    /// A self-signed certificate with these extensions (conf strings).
    fn cert_with(exts: &[(Nid, &str)]) -> X509 {
        use openssl::x509::{X509Builder, X509Extension, X509NameBuilder};
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "t").unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        for (nid, value) in exts {
            #[allow(deprecated)]
            let e = X509Extension::new_nid(None, None, *nid, value).unwrap();
            b.append_extension(e).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn urls_are_read_from_aia_and_distribution_points() {
        let c = cert_with(&[
            (
                Nid::INFO_ACCESS,
                "OCSP;URI:http://o.example/,caIssuers;URI:ldap:///CN=ca?cACertificate,\
                 caIssuers;URI:http://c.example/i.p7c,\
                 caIssuers;URI:http://c2.example/i.der,caIssuers;URI:http://c3.example/x",
            ),
            (
                Nid::CRL_DISTRIBUTION_POINTS,
                "URI:ldap:///CN=ca?certificateRevocationList,\
                 URI:http://crl.example/a.crl,URI:HTTP://crl2.example/a.crl",
            ),
        ]);
        let ocsp = aia_urls(&c, Nid::AD_OCSP);
        assert_eq!(ocsp.http, ["http://o.example/"]);
        assert!(!ocsp.others);
        // At most MAX_URLS of each kind: a certificate cannot make us fetch
        // more. ldap URLs (AD CS lists one first) are passed over, not tried.
        let issuers = aia_urls(&c, Nid::AD_CA_ISSUERS);
        assert_eq!(
            issuers.http,
            ["http://c.example/i.p7c", "http://c2.example/i.der"]
        );
        assert!(issuers.others);
        let crls = crl_urls(&c);
        assert_eq!(
            crls.http,
            ["http://crl.example/a.crl", "HTTP://crl2.example/a.crl"]
        );
        assert!(crls.others);
        assert!(Online::has_issuer_url(&c));
        let plain = cert_with(&[]);
        assert_eq!(aia_urls(&plain, Nid::AD_OCSP), Urls::default());
        assert_eq!(crl_urls(&plain), Urls::default());
        assert!(!Online::has_issuer_url(&plain));
        // Only an ldap CRL: it names where to ask, in a form we do not fetch.
        let ldap_only = cert_with(&[(
            Nid::CRL_DISTRIBUTION_POINTS,
            "URI:ldap:///CN=ca?certificateRevocationList",
        )]);
        let o = Online::new(settings());
        let store = openssl::x509::store::X509StoreBuilder::new()
            .unwrap()
            .build();
        let far = Instant::now() + Duration::from_secs(5);
        let chain = [ldap_only.clone(), ldap_only];
        assert_eq!(
            o.chain_status(&chain, &store, far),
            Status::Unknown("no http OCSP or CRL URL".into())
        );
    }

    #[test]
    fn a_certificate_without_urls_is_good_without_a_fetch() {
        let o = Online::new(settings());
        let c = cert_with(&[]);
        let store = openssl::x509::store::X509StoreBuilder::new()
            .unwrap()
            .build();
        let far = Instant::now() + Duration::from_secs(5);
        let chain = [c.clone(), c];
        assert_eq!(o.chain_status(&chain, &store, far), Status::Good);
        assert_eq!(STATS.ocsp_requests.load(Ordering::Relaxed), 0);
    }
}
