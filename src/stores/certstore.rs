//! Recipient certificates for encryption: a local store (a directory of
//! certificate files and/or a map file), then LDAP, behind an LRU cache.
//! Among the candidates the usable certificate expiring last is chosen.

use crate::config::RevocationMode;
use crate::config::{CacheConfig, CertSource};
use crate::ldap::Ldap;
use crate::online::{self, ChainFailure, Online, Status};
use crate::pki;
use crate::truststore::TrustStore;
use lru::LruCache;
use openssl::pkey::Id;
use openssl::x509::{X509Ref, X509};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Directory lookups one message runs side by side, at most.
const PARALLEL_LOOKUPS: usize = 8;
/// `certs show` asks the directory with this much time.
const ADMIN_LOOKUP_TIME: Duration = Duration::from_secs(30);

/// Counters for the periodic stats line; they survive reloads.
#[derive(Debug, Default)]
pub struct Stats {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub ldap_searches: AtomicU64,
    pub ldap_errors: AtomicU64,
}

pub static STATS: Stats = Stats {
    cache_hits: AtomicU64::new(0),
    cache_misses: AtomicU64::new(0),
    ldap_searches: AtomicU64::new(0),
    ldap_errors: AtomicU64::new(0),
};

impl Stats {
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "stats: certificate cache hits={} misses={} ldap searches={} ldap errors={}",
            g(&self.cache_hits),
            g(&self.cache_misses),
            g(&self.ldap_searches),
            g(&self.ldap_errors)
        )
    }
}

/// A certificate to encrypt to, with the ciphers its owner announced.
#[derive(Debug)]
pub struct RecipientCert {
    pub cert: X509,
    /// From harvested SMIMECapabilities; empty when unknown.
    pub ciphers: Vec<pki::Cipher>,
}

/// The answer for one recipient.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<RecipientCert>),
    NotFound,
    /// The directory could not be asked: unknown, not "none".
    Error(String),
}

/// See `CertStore::forgetter`.
#[derive(Clone)]
pub struct Forget(std::sync::Weak<Mutex<LruCache<String, Cached>>>);

impl Forget {
    pub fn forget(&self, address: &str) {
        if let Some(cache) = self.0.upgrade() {
            cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop(&address.to_ascii_lowercase());
        }
    }
}

impl std::fmt::Debug for Forget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Forget")
    }
}

struct Cached {
    cert: Option<Arc<RecipientCert>>,
    expires: Instant,
}

pub struct CertStore {
    local: HashMap<String, Vec<X509>>,
    harvest_dir: Option<std::path::PathBuf>,
    ldap: Option<Ldap>,
    order: Vec<CertSource>,
    cache: Arc<Mutex<LruCache<String, Cached>>>,
    ttl: Duration,
    negative_ttl: Duration,
    /// Revocation checks of candidates that chain to the anchors.
    online: Option<Arc<Online>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CertStore({} local addresses, ldap: {:?}, order {:?})",
            self.local.len(),
            self.ldap,
            self.order
        )
    }
}

/// Which configured value failed, for the error's line and key.
pub enum LocalError {
    Dir(String),
    Map(String),
}

/// The local store: every certificate in `dir`, under each of its addresses;
/// and `map` lines `address path` (for certificates that name another address).
pub fn load_local(
    dir: Option<&Path>,
    map: Option<&Path>,
) -> Result<HashMap<String, Vec<X509>>, LocalError> {
    let mut out: HashMap<String, Vec<X509>> = HashMap::new();
    if let Some(d) = dir {
        let rd = std::fs::read_dir(d)
            .map_err(|e| LocalError::Dir(format!("cannot read directory {}: {e}", d.display())))?;
        let mut files: Vec<_> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            for c in crate::truststore::certs_in(&f).map_err(LocalError::Dir)? {
                for a in pki::cert_addresses(&c) {
                    out.entry(a.to_ascii_lowercase())
                        .or_default()
                        .push(c.clone());
                }
            }
        }
    }
    if let Some(m) = map {
        let text = std::fs::read_to_string(m)
            .map_err(|e| LocalError::Map(format!("cannot read {}: {e}", m.display())))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (addr, file) = line.split_once(char::is_whitespace).ok_or_else(|| {
                LocalError::Map(format!(
                    "{}:{}: expected 'address file'",
                    m.display(),
                    n + 1
                ))
            })?;
            let path = Path::new(file.trim());
            let path = if path.is_relative() {
                m.parent().unwrap_or(Path::new("/")).join(path)
            } else {
                path.to_path_buf()
            };
            let certs = crate::truststore::certs_in(&path)
                .map_err(|e| LocalError::Map(format!("{}:{}: {e}", m.display(), n + 1)))?;
            out.entry(addr.to_ascii_lowercase())
                .or_default()
                .extend(certs);
        }
    }
    Ok(out)
}

/// Whether a certificate can be encrypted to for `address` (RFC 8550):
/// valid now, key usage for key transport or agreement, email EKU, names the
/// address; and chains to the anchors when `trust` is given.
pub fn usable_for(
    cert: &X509Ref,
    address: &str,
    chain: &[X509],
    trust: Option<&TrustStore>,
) -> bool {
    if unusable_key(cert).is_some() {
        return false;
    }
    if !pki::cert_addresses(cert)
        .iter()
        .any(|a| a.eq_ignore_ascii_case(address))
    {
        return false;
    }
    match trust {
        Some(t) => pki::chain_ok(&t.store, cert, chain),
        None => true,
    }
}

/// Why a certificate cannot be encrypted to, whatever its address: not
/// valid now, a key type we do not encrypt to, or key usage or extended
/// key usage that forbid it.
pub fn unusable_key(cert: &X509Ref) -> Option<&'static str> {
    if !pki::valid_now(cert) {
        return Some("not valid now");
    }
    let Ok(pk) = cert.public_key() else {
        return Some("unreadable public key");
    };
    let needed = match pk.id() {
        Id::RSA => pki::KU_KEY_ENCIPHERMENT,
        Id::EC => pki::KU_KEY_AGREEMENT,
        _ => return Some("neither an RSA nor an EC key"),
    };
    let u = pki::usage(cert, needed);
    if !u.key_usage {
        return Some("key usage forbids encryption");
    }
    if !u.email {
        return Some("extended key usage lacks emailProtection");
    }
    None
}

/// The candidates usable for `address` (chains aside), in order of
/// preference: the one that expires last first (of equals, the later in
/// `candidates`).
fn by_preference<'a>(address: &str, candidates: &'a [X509]) -> Vec<&'a X509> {
    let mut usable: Vec<&X509> = candidates
        .iter()
        .filter(|c| usable_for(c, address, candidates, None))
        .collect();
    usable.sort_by(|a, b| {
        a.not_after()
            .compare(b.not_after())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    usable.reverse();
    usable
}

/// The usable candidate that expires last (and chains to the anchors,
/// when `trust` is given).
pub fn select(address: &str, candidates: &[X509], trust: Option<&TrustStore>) -> Option<X509> {
    by_preference(address, candidates)
        .into_iter()
        .find(|c| trust.is_none_or(|t| pki::chain_ok(&t.store, c, candidates)))
        .cloned()
}

impl CertStore {
    pub fn new(
        local: HashMap<String, Vec<X509>>,
        harvest_dir: Option<std::path::PathBuf>,
        ldap: Option<Ldap>,
        order: Vec<CertSource>,
        cache: CacheConfig,
    ) -> CertStore {
        let cap = NonZeroUsize::new(cache.capacity.max(1)).expect("at least 1");
        CertStore {
            local,
            harvest_dir,
            ldap,
            order,
            cache: Arc::new(Mutex::new(LruCache::new(cap))),
            ttl: cache.ttl,
            negative_ttl: cache.negative_ttl,
            online: None,
        }
    }

    /// Candidates that must chain to the anchors get missing intermediates
    /// from AIA and are checked for revocation, as configured.
    pub fn with_online(mut self, online: Option<Arc<Online>>) -> CertStore {
        self.online = online;
        self
    }

    /// The usable candidates, in `select`'s order of preference, with
    /// their chains completed online and asked for revocation: a revoked
    /// one is passed over for the next. In hard mode one whose status is
    /// unknown is too; when that, or an intermediate that could not be
    /// fetched now, leaves none, the answer is a temporary error, not "no
    /// certificate" (which could send in plaintext).
    fn choose(
        &self,
        address: &str,
        candidates: &[X509],
        trust: Option<&TrustStore>,
        deadline: Instant,
    ) -> Result<Option<X509>, String> {
        let (Some(online), Some(trust)) = (&self.online, trust) else {
            return Ok(select(address, candidates, trust));
        };
        let mut unknown = None;
        for c in by_preference(address, candidates) {
            let serial = pki::serial_hex(c).unwrap_or_default();
            let built =
                online::build_chain(Some(online), &trust.store, c, candidates, None, deadline);
            let chain = match built {
                Ok(chain) => chain,
                Err(ChainFailure::NotFetched(e)) if e.transient() => {
                    log::info!("certificate {serial} of {address} not used now: issuer certificate not fetched: {e}");
                    unknown.get_or_insert(format!("issuer certificate not fetched: {e}"));
                    continue;
                }
                Err(_) => continue,
            };
            match online.chain_status(&chain, &trust.store, deadline) {
                Status::Good => return Ok(Some(c.clone())),
                Status::Revoked(why) => {
                    log::info!("certificate {serial} of {address} not used: {why}")
                }
                Status::Unknown(why) if online.mode() == RevocationMode::Hard => {
                    log::info!("certificate {serial} of {address} not used: revocation status unknown: {why}");
                    unknown.get_or_insert(format!("revocation status unknown: {why}"));
                }
                Status::OutOfTime => {
                    unknown.get_or_insert("lookup time budget spent".to_string());
                }
                Status::Unknown(_) => return Ok(Some(c.clone())),
            }
        }
        match unknown {
            Some(why) => Err(why),
            None => Ok(None),
        }
    }

    /// The cached answer for `key`, if fresh.
    fn cached(&self, key: &str) -> Option<Lookup> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let c = cache.get(key).filter(|c| c.expires > Instant::now())?;
        STATS.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(match &c.cert {
            Some(cert) => Lookup::Found(Arc::clone(cert)),
            None => Lookup::NotFound,
        })
    }

    /// The certificates for every address, in order, looked up side by side
    /// (at most `PARALLEL_LOOKUPS` at once) and all ended by `deadline`.
    /// Once one is not found or fails, the message's answer is decided: the
    /// lookups not yet started are not made, and `None` stands for them.
    pub fn find_all(
        &self,
        addresses: &[String],
        trust: Option<&TrustStore>,
        deadline: Instant,
    ) -> Vec<Option<Lookup>> {
        let mut out: Vec<Option<Lookup>> = addresses
            .iter()
            .map(|a| self.cached(&a.to_ascii_lowercase()))
            .collect();
        if out.iter().flatten().any(|l| !matches!(l, Lookup::Found(_))) {
            return out;
        }
        let misses: Vec<usize> = (0..addresses.len()).filter(|&i| out[i].is_none()).collect();
        if misses.len() == 1 {
            let i = misses[0];
            out[i] = Some(self.find(&addresses[i], trust, deadline));
            return out;
        }
        let next = AtomicUsize::new(0);
        let decided = AtomicBool::new(false);
        let results: Mutex<Vec<(usize, Lookup)>> = Mutex::new(Vec::new());
        let work = || loop {
            let n = next.fetch_add(1, Ordering::SeqCst);
            if n >= misses.len() || decided.load(Ordering::SeqCst) {
                break;
            }
            let i = misses[n];
            let found = self.find(&addresses[i], trust, deadline);
            if !matches!(found, Lookup::Found(_)) {
                decided.store(true, Ordering::SeqCst);
            }
            results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((i, found));
        };
        std::thread::scope(|s| {
            for _ in 1..misses.len().min(PARALLEL_LOOKUPS) {
                // Out of threads: fewer helpers, never a panic.
                if std::thread::Builder::new().spawn_scoped(s, work).is_err() {
                    break;
                }
            }
            // This thread takes its share too (and all of it, alone).
            work();
        });
        for (i, l) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            out[i] = Some(l);
        }
        out
    }

    /// The certificate to encrypt to for `address`; a directory asked by
    /// `deadline` at the latest.
    pub fn find(&self, address: &str, trust: Option<&TrustStore>, deadline: Instant) -> Lookup {
        let key = address.to_ascii_lowercase();
        if let Some(hit) = self.cached(&key) {
            return hit;
        }
        STATS.cache_misses.fetch_add(1, Ordering::Relaxed);
        let mut found = None;
        for source in &self.order {
            let mut ciphers = Vec::new();
            let candidates = match source {
                CertSource::Local => self.local.get(&key).cloned().unwrap_or_default(),
                CertSource::Harvested => match self
                    .harvest_dir
                    .as_deref()
                    .and_then(|d| crate::harvest::load(d, &key))
                {
                    Some((certs, caps)) => {
                        ciphers = caps
                            .map(|c| crate::harvest::announced_ciphers(&c))
                            .unwrap_or_default();
                        certs
                    }
                    None => Vec::new(),
                },
                CertSource::Ldap => match &self.ldap {
                    Some(l) => {
                        STATS.ldap_searches.fetch_add(1, Ordering::Relaxed);
                        match crate::metrics::timed(
                            crate::metrics::Operation::DirectoryLookup,
                            || l.lookup(address, deadline),
                        ) {
                            Ok(c) => c,
                            Err(e) => {
                                // Not cached: the next message asks again.
                                STATS.ldap_errors.fetch_add(1, Ordering::Relaxed);
                                return Lookup::Error(e.to_string());
                            }
                        }
                    }
                    None => Vec::new(),
                },
            };
            match self.choose(&key, &candidates, trust, deadline) {
                Ok(Some(cert)) => {
                    found = Some(Arc::new(RecipientCert { cert, ciphers }));
                    break;
                }
                Ok(None) => {}
                // Not cached: the next message asks again.
                Err(e) => return Lookup::Error(e),
            }
        }
        let expires = Instant::now()
            + if found.is_some() {
                self.ttl
            } else {
                self.negative_ttl
            };
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
            key,
            Cached {
                cert: found.clone(),
                expires,
            },
        );
        match found {
            Some(c) => Lookup::Found(c),
            None => Lookup::NotFound,
        }
    }

    /// Every candidate for an address from every source, unfiltered and
    /// uncached (for the admin command). LDAP errors are returned as such.
    pub fn candidates(&self, address: &str) -> Vec<(CertSource, Result<X509, String>)> {
        let key = address.to_ascii_lowercase();
        let mut out = Vec::new();
        for c in self.local.get(&key).into_iter().flatten() {
            out.push((CertSource::Local, Ok(c.clone())));
        }
        if let Some((certs, _)) = self
            .harvest_dir
            .as_deref()
            .and_then(|d| crate::harvest::load(d, &key))
        {
            out.extend(
                certs
                    .into_iter()
                    .take(1)
                    .map(|c| (CertSource::Harvested, Ok(c))),
            );
        }
        if let Some(l) = &self.ldap {
            match l.lookup(address, Instant::now() + ADMIN_LOOKUP_TIME) {
                Ok(certs) => out.extend(certs.into_iter().map(|c| (CertSource::Ldap, Ok(c)))),
                Err(e) => out.push((CertSource::Ldap, Err(e.to_string()))),
            }
        }
        out
    }

    /// The local store's addresses and certificates.
    pub fn local_entries(&self) -> Vec<(String, X509)> {
        let mut v: Vec<(String, X509)> = self
            .local
            .iter()
            .flat_map(|(a, cs)| cs.iter().map(move |c| (a.clone(), c.clone())))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Drops one address from the cache (after harvesting a certificate for it).
    pub fn forget(&self, address: &str) {
        self.forgetter().forget(address);
    }

    /// A handle that drops addresses from this cache later (after a write
    /// made in the background), and does nothing once the store is gone.
    pub fn forgetter(&self) -> Forget {
        Forget(Arc::downgrade(&self.cache))
    }

    pub fn harvest_dir(&self) -> Option<&Path> {
        self.harvest_dir.as_deref()
    }

    pub fn flush(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn local_addresses(&self) -> usize {
        self.local.len()
    }
}
