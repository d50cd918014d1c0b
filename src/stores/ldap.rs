//! Recipient certificates from a directory (Active Directory / OpenLDAP):
//! `userCertificate;binary` (DER) and `userSMIMECertificate` (a PKCS#7
//! certs-only blob, as Exchange publishes it). Servers are tried in order;
//! one connection is kept and reopened after an error.

use ldap3::{LdapConn, LdapConnSettings, Scope, SearchEntry};
use openssl::pkcs7::Pkcs7;
use openssl::x509::X509;
use std::sync::Mutex;
use std::time::Duration;

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
}

pub struct Ldap {
    settings: LdapSettings,
    conn: Mutex<Option<LdapConn>>,
}

impl std::fmt::Debug for Ldap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ldap({:?})", self.settings.uris)
    }
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
        Ldap {
            settings,
            conn: Mutex::new(None),
        }
    }

    fn connect(&self) -> Result<LdapConn, LdapError> {
        let mut errors = Vec::new();
        for uri in &self.settings.uris {
            let mut s = LdapConnSettings::new()
                .set_conn_timeout(self.settings.connect_timeout)
                .set_starttls(self.settings.starttls && uri.starts_with("ldap://"));
            if let Some(pem) = &self.settings.ca_pem {
                let connector = native_tls::Certificate::from_pem(pem).and_then(|ca| {
                    native_tls::TlsConnector::builder()
                        .add_root_certificate(ca)
                        .build()
                });
                match connector {
                    Ok(c) => s = s.set_connector(c),
                    Err(e) => return Err(LdapError::Unreachable(format!("TLS set-up: {e}"))),
                }
            }
            match LdapConn::with_settings(s, uri) {
                Ok(mut conn) => {
                    if let (Some(dn), Some(pw)) =
                        (&self.settings.bind_dn, &self.settings.bind_password)
                    {
                        match conn
                            .with_timeout(self.settings.search_timeout)
                            .simple_bind(dn, pw)
                            .and_then(|r| r.success())
                        {
                            Ok(_) => {}
                            Err(e) => {
                                errors.push(format!("{uri}: bind as {dn} failed: {e}"));
                                continue;
                            }
                        }
                    }
                    return Ok(conn);
                }
                Err(e) => errors.push(format!("{uri}: {e}")),
            }
        }
        Err(LdapError::Unreachable(errors.join("; ")))
    }

    /// Every certificate published for the address (all matching entries).
    /// An error means "unknown", never "none".
    pub fn lookup(&self, address: &str) -> Result<Vec<X509>, LdapError> {
        let filter = filter_for(&self.settings.filter, address);
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // One retry on a fresh connection: a kept one may have timed out.
        for attempt in 0..2 {
            if guard.is_none() {
                *guard = Some(self.connect()?);
            }
            let conn = guard.as_mut().expect("connected above");
            let result = conn
                .with_timeout(self.settings.search_timeout)
                .search(
                    &self.settings.base_dn,
                    Scope::Subtree,
                    &filter,
                    ATTRS.to_vec(),
                )
                .and_then(|r| r.success());
            match result {
                Ok((entries, _)) => {
                    let mut certs = Vec::new();
                    for e in entries {
                        let e = SearchEntry::construct(e);
                        for (name, values) in e.bin_attrs.iter().map(|(n, v)| (n, v.clone())).chain(
                            e.attrs.iter().map(|(n, v)| {
                                (
                                    n,
                                    v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>(),
                                )
                            }),
                        ) {
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
                    return Ok(certs);
                }
                Err(e) => {
                    *guard = None;
                    if attempt == 1 {
                        return Err(LdapError::Search(e.to_string()));
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }
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
}
