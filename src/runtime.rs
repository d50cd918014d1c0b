//! What a configuration names, loaded: the PKCS#11 token opened and logged
//! in, the signing keys, the trust store, the recipient certificate store
//! with its directory client. This is the one place that opens files and
//! tokens for the configuration; it runs at start and on reload, never per
//! message. A failure names the file, line and key that asked for it.

use crate::certstore::{CertStore, LocalError, RecipientCert};
use crate::config::{
    AdditionalRecipient, Config, ConfigError, Encryption, LdapConfig, Located, PinSource, Pkcs11,
};
use crate::harvest_ldap::{DirectoryStore, EntryClass};
use crate::keystore::{read_secret_line, KeyStore};
use crate::ldap::{Ldap, LdapSettings};
use crate::online::Online;
use crate::pkcs11::{Pin, Token};
use crate::truststore::{TrustError, TrustStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The configuration with everything it names loaded.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub keys: KeyStore,
    /// `Some` when inbound verification is on.
    pub verify: Option<Verifier>,
    /// `Some` when an encryption policy is configured.
    pub certs: Option<CertStore>,
    /// `additional_recipients` given as certificate files.
    pub escrow: Vec<Arc<RecipientCert>>,
    /// OCSP, CRL and AIA fetches, when `[online]` asks for any.
    pub online: Option<Arc<Online>>,
    /// Harvesting into the directory (`[harvest] store = "ldap"`).
    pub harvest_ldap: Option<DirectoryStore>,
}

/// Inbound verification: the trust store and the checks' settings.
#[derive(Debug)]
pub struct Verifier {
    pub trust: TrustStore,
    pub settings: crate::verify::Settings,
}

impl Runtime {
    /// Reads the file and loads what it names.
    pub fn load(path: &Path) -> Result<Runtime, ConfigError> {
        Self::new(Config::load(path)?)
    }

    pub fn new(config: Config) -> Result<Runtime, ConfigError> {
        let insecure = config.allow_insecure_key_files;
        let token = config
            .pkcs11
            .as_ref()
            .map(|p| open_token(p, insecure))
            .transpose()?;
        let keys = KeyStore::load(token.as_ref(), &config.signing.keys, insecure)?;
        let verify = match &config.verify {
            None => None,
            Some(v) => Some(Verifier {
                trust: trust_store(&config.path, &v.trust_anchors, &v.trust_dir, &v.crl_dir)?,
                settings: crate::verify::Settings {
                    min_rsa_bits: v.min_rsa_bits,
                    allow_sha1: v.allow_sha1,
                    max_date_skew: v.max_date_skew,
                    max_depth: config.max_mime_depth,
                    max_parts: config.max_mime_parts,
                },
            }),
        };
        let online = config
            .online
            .fetches()
            .then(|| Arc::new(Online::new(config.online.clone())));
        let certs = config
            .encrypt
            .as_ref()
            .map(|e| {
                let store = cert_store(&config.path, e, config.harvest_dir.clone(), insecure)?;
                Ok::<_, ConfigError>(store.with_online(online.clone()))
            })
            .transpose()?;
        let anchors = verify.as_ref().map(|v| &v.trust);
        let escrow = match &config.encrypt {
            Some(e) => escrow_certs(e, anchors.filter(|_| e.require_trusted))?,
            None => Vec::new(),
        };
        let harvest_ldap = match &config.harvest_ldap {
            Some(h) => {
                let mut settings = ldap_settings(&h.ldap, insecure)?;
                settings.base_dn = h.base_dn.clone();
                let class = if h.contact {
                    EntryClass::Contact
                } else {
                    EntryClass::InetOrgPerson
                };
                Some(DirectoryStore::new(settings, class, h.max_pending))
            }
            None => None,
        };
        Ok(Runtime {
            config,
            keys,
            verify,
            certs,
            escrow,
            online,
            harvest_ldap,
        })
    }

    /// The trust anchors, when verification is on.
    pub fn trust(&self) -> Option<&TrustStore> {
        self.verify.as_ref().map(|v| &v.trust)
    }

    /// The trust anchors recipient certificates must chain to, if the
    /// policy asks for that (`require_trusted_recipient_certs`).
    pub fn recipient_trust(&self) -> Option<&TrustStore> {
        let required = self.config.encrypt.as_ref()?.require_trusted;
        self.trust().filter(|_| required)
    }
}

fn path_of(p: &Option<Located<PathBuf>>) -> Option<&Path> {
    p.as_ref().map(|l| l.value.as_path())
}

/// An error at the key that named `at`; at the file when it is not set
/// (OpenSSL failing before any path was read).
fn error_at(file: &Path, at: &Option<Located<PathBuf>>, what: String) -> ConfigError {
    match at {
        Some(l) => l.error(what),
        None => ConfigError {
            file: file.display().to_string(),
            line: 0,
            what,
        },
    }
}

fn trust_store(
    file: &Path,
    anchors: &Option<Located<PathBuf>>,
    dir: &Option<Located<PathBuf>>,
    crls: &Option<Located<PathBuf>>,
) -> Result<TrustStore, ConfigError> {
    TrustStore::load(path_of(anchors), path_of(dir), path_of(crls)).map_err(|e| {
        let (at, what) = match e {
            TrustError::Anchors(w) => (anchors, w),
            TrustError::Dir(w) => (dir, w),
            TrustError::Crls(w) => (crls, w),
        };
        error_at(file, at, what)
    })
}

fn cert_store(
    file: &Path,
    e: &Encryption,
    harvest_dir: Option<PathBuf>,
    insecure: bool,
) -> Result<CertStore, ConfigError> {
    let local = crate::certstore::load_local(path_of(&e.certs_dir), path_of(&e.certs_map))
        .map_err(|err| {
            let (at, what) = match err {
                LocalError::Dir(w) => (&e.certs_dir, w),
                LocalError::Map(w) => (&e.certs_map, w),
            };
            error_at(file, at, what)
        })?;
    let ldap = e
        .ldap
        .as_ref()
        .map(|l| ldap_settings(l, insecure).map(Ldap::new))
        .transpose()?;
    Ok(CertStore::new(
        local,
        harvest_dir,
        ldap,
        e.lookup_order.clone(),
        e.cache.clone(),
    ))
}

/// How to reach a directory: the CA file read, the password from its file.
fn ldap_settings(l: &LdapConfig, insecure: bool) -> Result<LdapSettings, ConfigError> {
    let ca_pem = match &l.ca_file {
        Some(p) => Some(
            std::fs::read(&p.value)
                .map_err(|err| p.error(format!("cannot read {}: {err}", p.value.display())))?,
        ),
        None => None,
    };
    let bind_password = match &l.bind_password_file {
        Some(p) => Some(secret_text(p, insecure)?),
        None => None,
    };
    Ok(LdapSettings {
        uris: l.uris.clone(),
        starttls: l.starttls,
        ca_pem,
        bind_dn: l.bind_dn.clone(),
        bind_password,
        base_dn: l.base_dn.clone(),
        filter: l.filter.clone(),
        connect_timeout: l.connect_timeout,
        search_timeout: l.search_timeout,
        max_connections: l.max_connections,
        retry_after: l.retry_after,
    })
}

/// The `additional_recipients` certificate files: each must hold one
/// certificate we can encrypt to (the first; any others are its chain),
/// chaining to the anchors when recipient certificates must.
fn escrow_certs(
    e: &Encryption,
    trust: Option<&TrustStore>,
) -> Result<Vec<Arc<RecipientCert>>, ConfigError> {
    let mut out = Vec::new();
    for entry in &e.additional_recipients {
        let AdditionalRecipient::File(path) = &entry.value else {
            continue;
        };
        let certs = crate::truststore::certs_in(path).map_err(|w| entry.error(w))?;
        let Some(cert) = certs.first() else {
            return Err(entry.error(format!("no certificate in {}", path.display())));
        };
        if let Some(why) = crate::certstore::unusable_key(cert) {
            return Err(entry.error(format!(
                "the certificate in {} cannot be encrypted to: {why}",
                path.display()
            )));
        }
        if trust.is_some_and(|t| !crate::pki::chain_ok(&t.store, cert, &certs)) {
            return Err(entry.error(format!(
                "the certificate in {} does not chain to the trust anchors",
                path.display()
            )));
        }
        out.push(Arc::new(RecipientCert {
            cert: cert.clone(),
            ciphers: Vec::new(),
        }));
    }
    Ok(out)
}

/// A PIN or password from a file only the milter may read.
fn secret_text(p: &Located<PathBuf>, insecure: bool) -> Result<String, ConfigError> {
    let raw = read_secret_line(&p.value, insecure).map_err(|w| p.error(w))?;
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// Opens the token: the module loaded, logged in with the PIN from its file
/// (0600) or environment variable. The PIN is never printed.
fn open_token(p: &Pkcs11, insecure: bool) -> Result<Arc<Token>, ConfigError> {
    let pin = match &p.pin {
        PinSource::File(f) => secret_text(f, insecure)?,
        PinSource::Env(v) => std::env::var(&v.value)
            .map_err(|_| v.error(format!("environment variable {} is not set", v.value)))?,
    };
    Token::open_shared(&p.module.value, Pin::new(pin)).map_err(|e| p.module.error(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Runtime, ConfigError> {
        Runtime::new(Config::parse(Path::new("/etc/test.toml"), text)?)
    }

    #[test]
    fn missing_key_file_is_reported_at_its_line() {
        let text = "[[signing.key]]\nsender = \"a@example.com\"\ncertificate = \"/nonexistent/a.pem\"\nprivate_key = \"/nonexistent/a.key\"\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.what.contains("key 'certificate'") && e.what.contains("/nonexistent/a.pem"),
            "{e}"
        );
    }

    #[test]
    fn missing_trust_anchors_are_reported_at_their_line() {
        let e = load("[verify]\nallow_sha1 = true\ntrust_anchors = \"/nonexistent/roots.pem\"\n")
            .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.what.contains("key 'trust_anchors'") && e.what.contains("/nonexistent/roots.pem"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_configuration_loads_nothing() {
        let rt = load("").unwrap();
        assert!(rt.keys.is_empty() && rt.verify.is_none() && rt.certs.is_none());
        assert!(rt.trust().is_none() && rt.recipient_trust().is_none());
    }
}
