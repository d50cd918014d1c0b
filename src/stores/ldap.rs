//! Recipient certificates from a directory (Active Directory / OpenLDAP):
//! `userCertificate;binary` (DER) and `userSMIMECertificate` (a PKCS#7
//! certs-only blob, as Exchange publishes it).
//!
//! A slow directory must not stall the gateway: each server has a small
//! pool of connections (so lookups run side by side), every lookup ends by
//! the message's deadline, and a server that times out or refuses is
//! skipped for `retry_after` (logged once) while the next URI answers.

use ldap3::{LdapConn, LdapConnSettings, LdapError as Ldap3Error, Scope, SearchEntry};
use openssl::pkcs7::Pkcs7;
use openssl::x509::X509;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LdapSettings {
    pub uris: Vec<String>,
    pub starttls: bool,
    /// CA certificates (PEM) for ldaps:// and StartTLS.
    pub ca_pem: Option<Vec<u8>>,
    pub bind_dn: Option<String>,
    /// Read from `bind_password_file` at load; never logged.
    pub bind_password: Option<String>,
    pub base_dn: String,
    /// `%s` is replaced by the escaped address (RFC 4515).
    pub filter: String,
    pub connect_timeout: Duration,
    pub search_timeout: Duration,
    /// Connections kept open to each server, at most.
    pub max_connections: usize,
    /// How long a server that timed out or refused is skipped.
    pub retry_after: Duration,
}

const ATTRS: [&str; 3] = [
    "userSMIMECertificate",
    "userCertificate;binary",
    "userCertificate",
];

#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("no LDAP server reachable ({0})")]
    Unreachable(String),
    #[error("LDAP search failed: {0}")]
    Search(String),
    #[error("lookup time budget spent ({0})")]
    Budget(String),
}

/// One directory server: its idle connections and whether it is skipped.
struct Server {
    uri: String,
    state: Mutex<ServerState>,
    /// Signalled when a connection is returned or dropped.
    freed: Condvar,
}

#[derive(Default)]
struct ServerState {
    /// Kept connections, with when each was last used.
    idle: Vec<(LdapConn, Instant)>,
    /// Connections open, idle or in use.
    open: usize,
    /// Skipped until then, after a failure; once it has passed, one lookup
    /// tries the server again while the others still skip it.
    down_until: Option<Instant>,
}

impl ServerState {
    /// Closes the kept connections (their slots are free again).
    fn clear_idle(&mut self) {
        self.open -= self.idle.len();
        self.idle.clear();
    }
}

/// A kept connection unused for this long is not trusted: servers (Active
/// Directory: 15 minutes) and firewalls drop idle connections silently.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

pub struct Ldap {
    settings: LdapSettings,
    servers: Vec<Server>,
}

impl std::fmt::Debug for Ldap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ldap({:?})", self.settings.uris)
    }
}

/// Why a search failed, which decides whether the server is skipped.
enum Failure {
    /// Refused, broken, failed bind, or no answer within its full timeout:
    /// the server.
    Server(String),
    /// The search itself was refused (bad base, filter): the query.
    Query(String),
    /// The message's budget ran out (its timeout was cut to what was left,
    /// or every connection stayed busy): not the server's fault.
    Budget(String),
}

/// The search filter for an address: every `%s` is the address escaped per
/// RFC 4515, so `*)(mail=*` cannot widen the search.
pub fn filter_for(template: &str, address: &str) -> String {
    template.replace("%s", &ldap3::ldap_escape(address))
}

/// Certificates in a `userSMIMECertificate` value: a PKCS#7 SignedData
/// (certs-only), DER.
pub fn certs_from_pkcs7(der: &[u8]) -> Vec<X509> {
    let Ok(p7) = Pkcs7::from_der(der) else {
        return Vec::new();
    };
    p7.signed()
        .and_then(|s| s.certificates())
        .map(|certs| certs.iter().map(|c| c.to_owned()).collect())
        .unwrap_or_default()
}

impl Ldap {
    pub fn new(settings: LdapSettings) -> Ldap {
        let servers = settings
            .uris
            .iter()
            .map(|uri| Server {
                uri: uri.clone(),
                state: Mutex::new(ServerState::default()),
                freed: Condvar::new(),
            })
            .collect();
        Ldap { settings, servers }
    }

    /// Every certificate published for the address (all matching entries),
    /// asked of the first server that answers, by `deadline`. An error means
    /// "unknown", never "none".
    pub fn lookup(&self, address: &str, deadline: Instant) -> Result<Vec<X509>, LdapError> {
        let filter = filter_for(&self.settings.filter, address);
        let mut errors = Vec::new();
        for server in &self.servers {
            if !self.may_ask(server) {
                errors.push(format!("{}: skipped after a failure", server.uri));
                continue;
            }
            match self.search_on(server, &filter, deadline) {
                Ok(certs) => {
                    self.answers(server);
                    return Ok(certs);
                }
                Err(Failure::Query(e)) => {
                    // Refusing the query is answering.
                    self.answers(server);
                    return Err(LdapError::Search(e));
                }
                Err(Failure::Budget(e)) => {
                    return Err(LdapError::Budget(format!("{}: {e}", server.uri)))
                }
                Err(Failure::Server(e)) => {
                    self.mark_down(server, &e);
                    errors.push(format!("{}: {e}", server.uri));
                }
            }
        }
        Err(LdapError::Unreachable(errors.join("; ")))
    }

    fn answers(&self, server: &Server) {
        if server.lock().down_until.take().is_some() {
            log::info!("LDAP server {} answers again", server.uri);
        }
    }

    /// Whether a lookup may ask this server: it is up, or it was down long
    /// enough and this lookup is the one that tries it again.
    fn may_ask(&self, server: &Server) -> bool {
        let mut st = server.lock();
        match st.down_until {
            None => true,
            Some(until) if until > Instant::now() => false,
            Some(_) => {
                // The trial: the others skip it until this one has answered.
                st.down_until = Some(Instant::now() + self.settings.retry_after);
                true
            }
        }
    }

    /// A failed server is skipped for `retry_after`; said once, not per lookup.
    fn mark_down(&self, server: &Server, why: &str) {
        let mut st = server.lock();
        let was_down = st.down_until.is_some();
        st.down_until = Some(Instant::now() + self.settings.retry_after);
        // Its kept connections are as dead as the one that failed.
        st.clear_idle();
        drop(st);
        server.freed.notify_all();
        if !was_down {
            log::warn!(
                "LDAP server {} failed ({why}); skipped for {} s",
                server.uri,
                self.settings.retry_after.as_secs()
            );
        }
    }

    /// One search on a pooled connection. When a kept connection breaks,
    /// the server may have closed them all: the others are dropped and the
    /// search is made once more on a new connection, whose failure counts.
    fn search_on(
        &self,
        server: &Server,
        filter: &str,
        deadline: Instant,
    ) -> Result<Vec<X509>, Failure> {
        let mut fresh_only = false;
        loop {
            let (mut conn, kept) = self.take_connection(server, deadline, fresh_only)?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = self.settings.search_timeout.min(remaining);
            let result = conn
                .with_timeout(timeout)
                .search(
                    &self.settings.base_dn,
                    Scope::Subtree,
                    filter,
                    ATTRS.to_vec(),
                )
                .and_then(|r| r.success());
            match result {
                Ok((entries, _)) => {
                    server.give_back(conn);
                    return Ok(certs_in_entries(entries));
                }
                Err(e) => {
                    server.drop_connection();
                    if is_timeout(&e) && timeout < self.settings.search_timeout {
                        return Err(Failure::Budget(e.to_string()));
                    }
                    match classify(&e) {
                        Failure::Server(_) if kept && !fresh_only && !is_timeout(&e) => {
                            server.drop_idle();
                            fresh_only = true;
                        }
                        f => return Err(f),
                    }
                }
            }
        }
    }

    /// An idle connection (unless `fresh_only`), a new one while the pool
    /// has room, else the first one returned before `deadline`. Whether it
    /// was kept (idle).
    fn take_connection(
        &self,
        server: &Server,
        deadline: Instant,
        fresh_only: bool,
    ) -> Result<(LdapConn, bool), Failure> {
        let mut st = server.lock();
        let max = self.settings.max_connections.max(1);
        loop {
            while let Some((conn, since)) = (!fresh_only).then(|| st.idle.pop()).flatten() {
                if since.elapsed() < MAX_IDLE_AGE {
                    return Ok((conn, true));
                }
                st.open -= 1;
            }
            if fresh_only && st.open >= max && st.idle.pop().is_some() {
                // Room for the new connection this search needs.
                st.open -= 1;
            }
            if st.open < max {
                st.open += 1;
                drop(st);
                // The slot is given back if connecting fails (or panics).
                let slot = Slot(server);
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(Failure::Budget("no time left to connect".into()));
                }
                let connected = connect(&self.settings, &server.uri, remaining);
                return match connected {
                    Ok(conn) => {
                        std::mem::forget(slot);
                        Ok((conn, false))
                    }
                    Err((e, cut)) if cut => Err(Failure::Budget(e)),
                    Err((e, _)) => Err(Failure::Server(e)),
                };
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Failure::Budget("every connection busy".into()));
            }
            st = server
                .freed
                .wait_timeout(st, remaining)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A new connection, bound if configured. On failure, whether the
/// failure is a timeout cut short by the budget (`remaining`).
pub(crate) fn connect(
    settings: &LdapSettings,
    uri: &str,
    remaining: Duration,
) -> Result<LdapConn, (String, bool)> {
    let connect_timeout = settings.connect_timeout.min(remaining);
    let mut s = LdapConnSettings::new()
        .set_conn_timeout(connect_timeout)
        .set_starttls(settings.starttls && uri.starts_with("ldap://"));
    if let Some(pem) = &settings.ca_pem {
        let connector = native_tls::Certificate::from_pem(pem).and_then(|ca| {
            native_tls::TlsConnector::builder()
                .add_root_certificate(ca)
                .build()
        });
        match connector {
            Ok(c) => s = s.set_connector(c),
            Err(e) => return Err((format!("TLS set-up: {e}"), false)),
        }
    }
    let started = Instant::now();
    let mut conn = LdapConn::with_settings(s, uri).map_err(|e| {
        let cut = is_timeout(&e) && connect_timeout < settings.connect_timeout;
        (e.to_string(), cut)
    })?;
    if let (Some(dn), Some(pw)) = (&settings.bind_dn, &settings.bind_password) {
        let left = remaining.saturating_sub(started.elapsed());
        let bind_timeout = settings.search_timeout.min(left);
        conn.with_timeout(bind_timeout)
            .simple_bind(dn, pw)
            .and_then(|r| r.success())
            .map_err(|e| {
                let cut = is_timeout(&e) && bind_timeout < settings.search_timeout;
                (format!("bind as {dn} failed: {e}"), cut)
            })?;
    }
    Ok(conn)
}

/// A pool slot taken for a new connection: given back on drop unless the
/// connection was made.
struct Slot<'a>(&'a Server);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.drop_connection();
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn give_back(&self, conn: LdapConn) {
        self.lock().idle.push((conn, Instant::now()));
        self.freed.notify_one();
    }

    /// After a kept connection broke: the other kept ones likely are too.
    fn drop_idle(&self) {
        self.lock().clear_idle();
        self.freed.notify_all();
    }

    fn drop_connection(&self) {
        let mut st = self.lock();
        st.open = st.open.saturating_sub(1);
        drop(st);
        self.freed.notify_one();
    }
}

/// Whether `dn` is `base` or below it (RDNs compared without case or the
/// blanks around them; enough for configuration checks).
pub fn dn_within(dn: &str, base: &str) -> bool {
    fn rdns(dn: &str) -> Vec<String> {
        let mut out = vec![String::new()];
        let mut escaped = false;
        for c in dn.chars() {
            match c {
                ',' if !escaped => out.push(String::new()),
                c => {
                    escaped = c == '\\' && !escaped;
                    out.last_mut().expect("one").push(c);
                }
            }
        }
        out.iter()
            .map(|r| {
                r.split('=')
                    .map(|p| p.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join("=")
            })
            .collect()
    }
    let (d, b) = (rdns(dn), rdns(base));
    d.len() >= b.len() && d[d.len() - b.len()..] == b[..]
}

pub(crate) fn is_timeout(e: &Ldap3Error) -> bool {
    matches!(e, Ldap3Error::Timeout { .. })
}

/// A result code is the server answering: the query is at fault. Anything
/// else (timeout, I/O, a closed connection) is the server's.
fn classify(e: &Ldap3Error) -> Failure {
    match e {
        // busy, unavailable: the server asks to be left alone.
        Ldap3Error::LdapResult { result } if matches!(result.rc, 51 | 52) => {
            Failure::Server(e.to_string())
        }
        Ldap3Error::LdapResult { .. } | Ldap3Error::FilterParsing => Failure::Query(e.to_string()),
        _ => Failure::Server(e.to_string()),
    }
}

pub(crate) fn certs_in_entries(entries: Vec<ldap3::ResultEntry>) -> Vec<X509> {
    let mut certs = Vec::new();
    for e in entries {
        let e = SearchEntry::construct(e);
        let text = e.attrs.iter().map(|(n, v)| {
            (
                n,
                v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>(),
            )
        });
        for (name, values) in e.bin_attrs.iter().map(|(n, v)| (n, v.clone())).chain(text) {
            let lname = name.to_ascii_lowercase();
            for v in values {
                if lname.starts_with("usersmimecertificate") {
                    certs.extend(certs_from_pkcs7(&v));
                } else if lname.starts_with("usercertificate") {
                    if let Ok(c) = X509::from_der(&v) {
                        certs.push(c);
                    }
                }
            }
        }
    }
    certs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(
            filter_for(crate::config::DEFAULT_LDAP_FILTER, "a@example.com"),
            "(|(mail=a@example.com)(proxyAddresses=smtp:a@example.com))"
        );
        assert_eq!(
            filter_for("(mail=%s)", "*)(mail=*"),
            "(mail=\\2a\\29\\28mail=\\2a)"
        );
        assert_eq!(filter_for("(mail=%s)", "a\\b\0c"), "(mail=a\\5cb\\00c)");
    }

    #[test]
    fn dns_within_a_base() {
        assert!(dn_within(
            "ou=Contacts, DC=Example,dc=com",
            "dc=example,dc=com"
        ));
        assert!(dn_within("dc=example,dc=com", "dc=example, dc=com"));
        assert!(!dn_within("ou=x,dc=example,dc=org", "dc=example,dc=com"));
        assert!(!dn_within(
            "ou=a\\,dc=example,dc=com",
            "ou=a,dc=example,dc=com"
        ));
        assert!(!dn_within("dc=com", "dc=example,dc=com"));
    }
}
