//! Online answers about certificates: revocation status by OCSP (RFC 6960,
//! RFC 5019 GET for short requests) and by the CRLs of their distribution
//! points (RFC 5280 §4.2.1.13), and missing intermediates from AIA
//! caIssuers (§4.2.2.1). Answers are cached until their nextUpdate (capped),
//! CRLs in use are fetched again before they expire, and a URL that failed
//! rests for `retry_after`. Status is asked only for certificates whose
//! chain already verified, so only AIA follows URLs of unverified
//! certificates; `fetch` bounds what any URL can make us do.

use crate::config::{Online as Settings, RevocationMode};
use crate::fetch::{FetchError, Fetcher, NetPolicy};
use crate::ffi::{OCSP_check_nonce, OCSP_request_add1_nonce};
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
use openssl::x509::{CrlStatus, X509Crl, X509Ref, X509};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// URLs of one kind tried per certificate, at most.
const MAX_URLS: usize = 2;
/// Certificates one AIA answer may carry.
const MAX_AIA_CERTS: usize = 8;
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
}

struct CachedStatus {
    revoked: Option<String>,
    until: i64,
    /// An answer read from a CRL: that CRL (kept in use for the
    /// refresher) and the CRL generation it belongs to.
    crl: Option<(Arc<CrlEntry>, u64)>,
}

struct CrlEntry {
    crl: X509Crl,
    /// The issuer whose key signed it, for checking and refreshing.
    issuer: X509,
    until: i64,
    /// Asked for since it was fetched: worth refreshing.
    used: AtomicBool,
}

struct Shared {
    settings: Settings,
    /// For CRLs.
    fetcher: Fetcher,
    /// For OCSP answers and issuer certificates.
    small: Fetcher,
    status: Mutex<LruCache<Vec<u8>, CachedStatus>>,
    crls: Mutex<LruCache<String, Arc<CrlEntry>>>,
    aia: Mutex<LruCache<String, (Vec<X509>, i64)>>,
    failed: Mutex<LruCache<String, (Instant, FetchError)>>,
    refresher: AtomicBool,
    /// Counts CRLs replaced: an answer read from an older one is asked again.
    crl_generation: AtomicU64,
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

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lru<K: std::hash::Hash + Eq, V>(n: usize) -> Mutex<LruCache<K, V>> {
    Mutex::new(LruCache::new(NonZeroUsize::new(n.max(1)).expect("n >= 1")))
}

/// Whether we fetch from this URI: http only. AD CS lists an ldap:///
/// location first and an http one after it; the ldap one is passed over
/// as if absent, not counted as a failure.
fn http(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

/// The http URIs of one access method in a certificate's AIA extension.
fn aia_urls(cert: &X509Ref, method: Nid) -> Vec<String> {
    cert.authority_info()
        .map(|st| {
            st.iter()
                .filter(|a| a.method().nid() == method)
                .filter_map(|a| a.location().uri().filter(|u| http(u)).map(str::to_string))
                .take(MAX_URLS)
                .collect()
        })
        .unwrap_or_default()
}

/// The http full-name URIs of a certificate's CRL distribution points.
fn crl_urls(cert: &X509Ref) -> Vec<String> {
    let Some(points) = cert.crl_distribution_points() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in points.iter() {
        let names = p.distpoint().and_then(|d| d.fullname());
        for n in names.into_iter().flatten() {
            if let Some(u) = n.uri().filter(|u| http(u)) {
                out.push(u.to_string());
            }
        }
    }
    out.truncate(MAX_URLS);
    out
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
    Invalid(openssl::x509::X509VerifyResult),
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
                aia: lru(n.min(1000)),
                failed: lru(n.min(1000)),
                refresher: AtomicBool::new(false),
                crl_generation: AtomicU64::new(0),
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
        let mut unknown = None;
        for pair in chain.windows(2) {
            match self
                .shared
                .cert_status(&pair[0], &pair[1], chain, store, deadline)
            {
                Status::Good => {}
                Status::Revoked(why) => {
                    let whose = if std::ptr::eq(&pair[0], &chain[0]) {
                        ""
                    } else {
                        " in chain"
                    };
                    return Status::Revoked(format!("{why}{whose}"));
                }
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
        let urls = aia_urls(cert, Nid::AD_CA_ISSUERS);
        let mut last = None;
        for url in urls {
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
                    last = Some(FetchError::Refused(format!("{url} holds no issuer")));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Refused("no caIssuers URL".into())))
    }

    /// Whether `cert` names a caIssuers URL at all.
    pub fn has_issuer_url(cert: &X509Ref) -> bool {
        !aia_urls(cert, Nid::AD_CA_ISSUERS).is_empty()
    }
}

impl Shared {
    fn cert_status(
        self: &Arc<Self>,
        cert: &X509,
        issuer: &X509,
        chain: &[X509],
        store: &X509StoreRef,
        deadline: Instant,
    ) -> Status {
        let Ok(key) = cert.digest(MessageDigest::sha256()) else {
            return Status::Unknown("certificate not hashable".into());
        };
        let now = now();
        let generation = self.crl_generation.load(Ordering::Relaxed);
        if let Some(c) = lock(&self.status)
            .get(&key[..])
            .filter(|c| c.until > now && c.crl.as_ref().is_none_or(|(_, g)| *g == generation))
        {
            STATS.cache_hits.fetch_add(1, Ordering::Relaxed);
            if let Some((crl, _)) = &c.crl {
                crl.used.store(true, Ordering::Relaxed);
            }
            return match &c.revoked {
                Some(why) => Status::Revoked(why.clone()),
                None => Status::Good,
            };
        }
        let ocsp = if self.settings.ocsp {
            aia_urls(cert, Nid::AD_OCSP)
        } else {
            Vec::new()
        };
        let crls = if self.settings.crl {
            crl_urls(cert)
        } else {
            Vec::new()
        };
        if ocsp.is_empty() && crls.is_empty() {
            // Nothing to ask: remembered, so that the next message skips
            // reading the extensions too.
            let until = now + self.settings.max_cache_age.as_secs() as i64;
            let nothing = CachedStatus {
                revoked: None,
                until,
                crl: None,
            };
            lock(&self.status).put(key.to_vec(), nothing);
            return Status::Good;
        }
        let mut why = Vec::new();
        for url in &ocsp {
            match self.ocsp(url, cert, issuer, chain, store, deadline) {
                Ok((revoked, until)) => {
                    let status = match &revoked {
                        Some(r) => Status::Revoked(r.clone()),
                        None => Status::Good,
                    };
                    let cached = CachedStatus {
                        revoked,
                        until,
                        crl: None,
                    };
                    lock(&self.status).put(key.to_vec(), cached);
                    return status;
                }
                Err(e) => why.push(format!("OCSP {e}")),
            }
        }
        for url in &crls {
            match self.crl_status(url, cert, issuer, deadline) {
                Ok((revoked, entry)) => {
                    let status = match &revoked {
                        Some(r) => Status::Revoked(r.clone()),
                        None => Status::Good,
                    };
                    let cached = CachedStatus {
                        revoked,
                        until: entry.until,
                        crl: Some((entry, generation)),
                    };
                    lock(&self.status).put(key.to_vec(), cached);
                    return status;
                }
                Err(e) => why.push(format!("CRL {e}")),
            }
        }
        Status::Unknown(why.join("; "))
    }

    /// A URL that failed lately, with how.
    fn resting(&self, url: &str) -> Option<FetchError> {
        let mut failed = lock(&self.failed);
        match failed.get(url) {
            Some((until, e)) if *until > Instant::now() => Some(e.clone()),
            Some(_) => {
                failed.pop(url);
                None
            }
            None => None,
        }
    }

    fn failed(&self, url: &str, e: &FetchError) {
        STATS.failures.fetch_add(1, Ordering::Relaxed);
        log::info!("online: {url}: {e}");
        // A refusal is the same next time: rest from it too.
        lock(&self.failed).put(
            url.to_string(),
            (Instant::now() + self.settings.retry_after, e.clone()),
        );
    }

    /// GETs `url` (a CRL when `crl`), or POSTs an OCSP request to it.
    /// `base` is the URL the certificate named (an OCSP GET adds the
    /// request to it): what failures are remembered and logged by.
    fn fetch(
        &self,
        base: &str,
        url: &str,
        post: Option<&[u8]>,
        crl: bool,
        deadline: Instant,
    ) -> Result<Vec<u8>, FetchError> {
        // The same answer until retry_after has passed.
        if let Some(e) = self.resting(base) {
            return Err(e);
        }
        let client = if crl { &self.fetcher } else { &self.small };
        let r = match post {
            Some(body) => client.post(url, "application/ocsp-request", body, deadline),
            None => client.get(url, deadline),
        };
        if let Err(e) = &r {
            self.failed(base, e);
        }
        r
    }

    /// The OCSP answer for `cert`: revoked (why) or not, and until when.
    fn ocsp(
        &self,
        url: &str,
        cert: &X509,
        issuer: &X509,
        chain: &[X509],
        store: &X509StoreRef,
        deadline: Instant,
    ) -> Result<(Option<String>, i64), String> {
        let id = || OcspCertId::from_cert(MessageDigest::sha1(), cert, issuer);
        let e = |_| "request not built".to_string();
        let mut req = OcspRequest::new().map_err(e)?;
        req.add_id(id().map_err(e)?).map_err(e)?;
        if self.settings.ocsp_nonce {
            // SAFETY: a live request; a NULL value asks OpenSSL for random bytes.
            if unsafe { OCSP_request_add1_nonce(req.as_ptr(), std::ptr::null_mut(), -1) } != 1 {
                return Err("nonce not added".into());
            }
        }
        let der = req.to_der().map_err(e)?;
        let get = get_url(url, &der);
        STATS.ocsp_requests.fetch_add(1, Ordering::Relaxed);
        let answer = match &get {
            Some(u) => self.fetch(url, u, None, false, deadline),
            None => self.fetch(url, url, Some(&der), false, deadline),
        }
        .map_err(|e| format!("{url}: {e}"))?;
        let bad = |why: &str| {
            STATS.failures.fetch_add(1, Ordering::Relaxed);
            log::info!("online: OCSP answer of {url}: {why}");
            Err(format!("{url}: {why}"))
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
        let mut certs = Stack::new().map_err(|_| "out of memory".to_string())?;
        for c in chain {
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
        if st.check_validity(SKEW as u32, None).is_err() {
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

    /// Whether `cert` is revoked (why) by the CRL at `url`, fetched or
    /// cached, and that CRL.
    fn crl_status(
        self: &Arc<Self>,
        url: &str,
        cert: &X509,
        issuer: &X509,
        deadline: Instant,
    ) -> Result<(Option<String>, Arc<CrlEntry>), String> {
        let now = now();
        let cached = lock(&self.crls).get(url).cloned();
        let entry = match cached {
            Some(c) if c.until > now && same_cert(&c.issuer, issuer) => {
                STATS.cache_hits.fetch_add(1, Ordering::Relaxed);
                c
            }
            _ => {
                let e = self.fetch_crl(url, issuer, deadline)?;
                self.keep_crl(url.to_string(), Arc::clone(&e));
                self.start_refresher();
                e
            }
        };
        entry.used.store(true, Ordering::Relaxed);
        let revoked = match entry.crl.get_by_cert(cert) {
            CrlStatus::Revoked(_) => Some("certificate revoked".to_string()),
            CrlStatus::NotRevoked | CrlStatus::RemoveFromCrl(_) => None,
        };
        Ok((revoked, entry))
    }

    /// A CRL fetched (again): answers read from the one it replaces are
    /// no longer used.
    fn keep_crl(&self, url: String, entry: Arc<CrlEntry>) {
        lock(&self.crls).put(url, entry);
        self.crl_generation.fetch_add(1, Ordering::Relaxed);
    }

    /// A CRL from `url`, checked: signed by `issuer`, current, and a full
    /// CRL of its whole scope (no critical extension: partitioned, delta
    /// and indirect CRLs are not read).
    fn fetch_crl(
        &self,
        url: &str,
        issuer: &X509,
        deadline: Instant,
    ) -> Result<Arc<CrlEntry>, String> {
        STATS.crl_fetches.fetch_add(1, Ordering::Relaxed);
        let data = self
            .fetch(url, url, None, true, deadline)
            .map_err(|e| format!("{url}: {e}"))?;
        let bad = |why: &str| {
            STATS.failures.fetch_add(1, Ordering::Relaxed);
            log::info!("online: CRL of {url}: {why}");
            format!("{url}: {why}")
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
            return Err(bad("not signed by the certificate's issuer"));
        }
        // SAFETY: a live CRL; the call only reads its extensions.
        let critical =
            unsafe { openssl_sys::X509_CRL_get_ext_by_critical(crl.as_ptr(), 1, -1) } >= 0;
        if critical {
            return Err(bad(
                "CRL with a critical extension (partitioned, delta or indirect)",
            ));
        }
        let now = now();
        let this = pki::unix_time(crl.last_update());
        let next = crl.next_update().and_then(pki::unix_time);
        if this.is_none_or(|t| t > now + SKEW) {
            return Err(bad("CRL not yet valid"));
        }
        if next.is_some_and(|t| t < now) {
            return Err(bad("CRL expired"));
        }
        Ok(Arc::new(CrlEntry {
            crl,
            issuer: issuer.clone(),
            until: keep_until(&self.settings, next, now),
            used: AtomicBool::new(false),
        }))
    }

    /// The certificates at an AIA caIssuers URL, fetched or cached.
    fn aia_certs(&self, url: &str, deadline: Instant) -> Result<Vec<X509>, FetchError> {
        let now = now();
        if let Some((certs, _)) = lock(&self.aia).get(url).filter(|(_, until)| *until > now) {
            STATS.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(certs.clone());
        }
        STATS.aia_fetches.fetch_add(1, Ordering::Relaxed);
        let data = self.fetch(url, url, None, false, deadline)?;
        let mut certs = pki::certs_from_bytes(&data).map_err(|why| {
            let e = FetchError::Refused(format!("{url}: {why}"));
            self.failed(url, &e);
            e
        })?;
        certs.truncate(MAX_AIA_CERTS);
        let until = now + self.settings.max_cache_age.as_secs() as i64;
        lock(&self.aia).put(url.to_string(), (certs.clone(), until));
        Ok(certs)
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
    /// tenth of their life (at least the last 2 s).
    fn refresh_crls(&self) {
        let now = now();
        let due: Vec<(String, Arc<CrlEntry>)> = lock(&self.crls)
            .iter()
            .filter(|(_, e)| {
                let this = pki::unix_time(e.crl.last_update()).unwrap_or(now);
                let margin = ((e.until - this) / 10).max(2);
                e.used.load(Ordering::Relaxed) && e.until - now <= margin
            })
            .map(|(u, e)| (u.clone(), Arc::clone(e)))
            .collect();
        for (url, old) in due {
            let deadline = Instant::now() + self.settings.timeout;
            match self.fetch_crl(&url, &old.issuer, deadline) {
                Ok(fresh) => {
                    log::debug!("online: CRL of {url} refreshed");
                    self.keep_crl(url, fresh);
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
        assert_eq!(aia_urls(&c, Nid::AD_OCSP), ["http://o.example/"]);
        // At most MAX_URLS of each kind: a certificate cannot make us fetch more.
        assert_eq!(
            aia_urls(&c, Nid::AD_CA_ISSUERS),
            ["http://c.example/i.p7c", "http://c2.example/i.der"]
        );
        // ldap URLs (AD CS lists one first) are passed over, not tried.
        assert_eq!(
            crl_urls(&c),
            ["http://crl.example/a.crl", "HTTP://crl2.example/a.crl"]
        );
        assert!(Online::has_issuer_url(&c));
        let plain = cert_with(&[]);
        assert!(aia_urls(&plain, Nid::AD_OCSP).is_empty());
        assert!(crl_urls(&plain).is_empty());
        assert!(!Online::has_issuer_url(&plain));
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
