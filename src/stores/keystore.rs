//! The key table: a sender address or `@domain` mapped to a certificate chain
//! and a private key, from files (PEM, PKCS#12) or a PKCS#11 token
//! (`pkcs11:` URIs). Everything is loaded once, at start and reload. The
//! same keys decrypt inbound mail for those addresses.

use crate::config::{ConfigError, KeySpec, Located};
use crate::pkcs11::{self, Token};
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{Id, PKey, PKeyRef, Private};
use openssl::x509::X509;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// A key ready to sign with: certificate, intermediates (no root) and key.
pub struct SigningKey {
    /// The table entry it was loaded for (`alice@example.com` or `@example.com`).
    pub name: String,
    pub cert: X509,
    pub chain: Vec<X509>,
    key: KeyRef,
}

/// Where the private key is.
enum KeyRef {
    File(PKey<Private>),
    /// In a token, by URI; the token holds the handle (so it can restart).
    Token(Arc<Token>, String),
}

impl std::fmt::Debug for SigningKey {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.name)
    }
}

impl SigningKey {
    pub fn new(name: String, cert: X509, chain: Vec<X509>, pkey: PKey<Private>) -> SigningKey {
        SigningKey {
            name,
            cert,
            chain,
            key: KeyRef::File(pkey),
        }
    }

    pub fn in_token(&self) -> bool {
        matches!(self.key, KeyRef::Token(..))
    }

    /// Runs `op` with the private key. When a token key fails for the
    /// token's sake (or is not loaded), the PKCS#11 module is
    /// restarted, the keys reloaded, and `op` tried once more (a token put
    /// back into its reader is found again). Failing that, the caller's
    /// failure action applies (tempfail by default).
    pub fn with_key<T, E: From<ErrorStack> + TokenFault>(
        &self,
        op: impl Fn(&PKeyRef<Private>) -> Result<T, E>,
    ) -> Result<T, E> {
        let (token, uri) = match &self.key {
            KeyRef::File(k) => return op(k),
            KeyRef::Token(t, u) => (t, u),
        };
        let first = match token.with_key(uri, |k| op(k)) {
            Some(Ok(v)) => return Ok(v),
            // The input was at fault (a broken message), not the token: no
            // restart, or any sender could keep the token restarting.
            Some(Err(e)) if !e.token_fault() => return Err(e),
            other => other,
        };
        let retried = match token.reopen() {
            Ok(()) => {
                log::warn!(
                    "token key for '{}' failed; restarted the PKCS#11 module and reloaded the keys",
                    self.name
                );
                token.with_key(uri, |k| op(k))
            }
            // Another message restarted it a moment ago: use its keys, if
            // this one found none.
            Err(pkcs11::Pkcs11Error::Busy(_)) if first.is_none() => token.with_key(uri, |k| op(k)),
            Err(pkcs11::Pkcs11Error::Busy(_)) => None,
            Err(e) => {
                log::error!("token key for '{}' unusable: {e}", self.name);
                None
            }
        };
        match (retried, first) {
            (Some(r), _) | (None, Some(r)) => r,
            (None, None) => Err(ErrorStack::get().into()),
        }
    }

    /// A short description for logs: the entry and the certificate serial.
    pub fn label(&self) -> String {
        let serial = crate::pki::serial_hex(&self.cert).unwrap_or_default();
        format!("{} (serial {serial})", self.name)
    }
}

/// Whether a failed key operation points at the token (gone, reset,
/// logged out) rather than at the data it was given.
pub trait TokenFault {
    fn token_fault(&self) -> bool;
}

/// OpenSSL's error queue after a token operation: libp11 reports the
/// PKCS#11 return codes by these names; a queue with no reason at all is
/// taken for the token too (a vanished SoftHSM2 token gives none).
impl TokenFault for ErrorStack {
    fn token_fault(&self) -> bool {
        const TOKEN: &[&str] = &[
            "session handle invalid",
            "session closed",
            "device removed",
            "device error",
            "token not present",
            "token not recognized",
            "slot id invalid",
            "not logged in",
            "not initialized",
        ];
        let reasons: Vec<String> = self
            .errors()
            .iter()
            .filter_map(|e| e.reason().map(str::to_ascii_lowercase))
            .collect();
        reasons.is_empty() || reasons.iter().any(|r| TOKEN.iter().any(|t| r.contains(t)))
    }
}

#[derive(Debug, Default)]
pub struct KeyStore {
    keys: HashMap<String, Arc<SigningKey>>,
}

fn at<T>(s: &Located<T>, what: impl Into<String>) -> ConfigError {
    s.error(what.into())
}

impl KeyStore {
    pub(crate) fn load(
        token: Option<&Arc<Token>>,
        entries: &[KeySpec],
        allow_insecure: bool,
    ) -> Result<Self, ConfigError> {
        let mut keys = HashMap::new();
        for raw in entries {
            let name = raw.sender.get_ref().trim().to_ascii_lowercase();
            if !valid_sender_entry(&name) {
                return Err(at(
                    &raw.sender,
                    format!("'{name}' is not an address or @domain"),
                ));
            }
            if keys.contains_key(&name) {
                return Err(at(&raw.sender, format!("duplicate key entry for '{name}'")));
            }
            let key = load_entry(token, raw, name.clone(), allow_insecure)?;
            keys.insert(name, Arc::new(key));
        }
        Ok(KeyStore { keys })
    }

    /// The key for a From address: the address itself, else its `@domain`.
    pub fn find(&self, address: &str) -> Option<&Arc<SigningKey>> {
        let address = address.to_ascii_lowercase();
        self.keys.get(&address).or_else(|| {
            let domain = address.rsplit_once('@')?.1;
            self.keys.get(&format!("@{domain}"))
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// `local@domain` or `@domain`.
fn valid_sender_entry(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !domain.is_empty() && !local.contains('@') && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// Reads a file holding a secret (key, PKCS#12, passphrase, password),
/// refusing one that group or others can access unless allowed.
pub(crate) fn read_secret(p: &std::path::Path, allow_insecure: bool) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    if !allow_insecure && meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {:04o}); chmod 600 it, or set allow_insecure_key_files = true",
            p.display(),
            meta.mode() & 0o7777
        ));
    }
    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// A passphrase, PIN or password: a secret file's text without the line
/// end an editor adds.
pub(crate) fn read_secret_line(
    p: &std::path::Path,
    allow_insecure: bool,
) -> Result<Vec<u8>, String> {
    let mut s = read_secret(p, allow_insecure)?;
    while matches!(s.last(), Some(b'\n' | b'\r')) {
        s.pop();
    }
    Ok(s)
}

fn read_secret_file(
    path: &Located<std::path::PathBuf>,
    allow_insecure: bool,
) -> Result<Vec<u8>, ConfigError> {
    read_secret(path.get_ref(), allow_insecure).map_err(|what| at(path, what))
}

fn read_file(path: &Located<std::path::PathBuf>) -> Result<Vec<u8>, ConfigError> {
    let p = path.get_ref();
    std::fs::read(p).map_err(|e| at(path, format!("cannot read {}: {e}", p.display())))
}

/// A key (and certificate) addressed by `pkcs11:` URIs.
fn load_token_entry(
    token: Option<&Arc<Token>>,
    raw: &KeySpec,
    name: String,
) -> Result<SigningKey, ConfigError> {
    let key_uri = raw.private_key.as_ref().expect("checked by the caller");
    let Some(token) = token else {
        return Err(at(
            key_uri,
            "a pkcs11: URI needs a [pkcs11] section (module and PIN)",
        ));
    };
    let Some(cert_ref) = &raw.certificate else {
        return Err(at(
            &raw.sender,
            format!("key entry '{name}' needs a certificate (file or pkcs11: URI)"),
        ));
    };
    let uri = key_uri.get_ref().display().to_string();
    let pkey = token
        .load_key(&uri)
        .map_err(|e| at(key_uri, e.to_string()))?;
    let cert_s = cert_ref.get_ref().display().to_string();
    let (cert, chain) = if pkcs11::is_uri(&cert_s) {
        (
            token
                .load_cert(&cert_s)
                .map_err(|e| at(cert_ref, e.to_string()))?,
            Vec::new(),
        )
    } else {
        let pem = read_file(cert_ref)?;
        let mut certs = X509::stack_from_pem(&pem).map_err(|_| {
            at(
                cert_ref,
                format!("cannot parse PEM certificates in {cert_s}"),
            )
        })?;
        if certs.is_empty() {
            return Err(at(cert_ref, format!("no certificate in {cert_s}")));
        }
        let cert = certs.remove(0);
        (cert, certs)
    };
    let mut key = finish_entry(cert_ref, name, cert, chain, pkey)?;
    key.key = KeyRef::Token(Arc::clone(token), uri);
    Ok(key)
}

fn load_entry(
    token: Option<&Arc<Token>>,
    raw: &KeySpec,
    name: String,
    allow_insecure: bool,
) -> Result<SigningKey, ConfigError> {
    if raw
        .private_key
        .as_ref()
        .is_some_and(|k| pkcs11::is_uri(&k.get_ref().display().to_string()))
    {
        return load_token_entry(token, raw, name);
    }
    let passphrase = match &raw.passphrase_file {
        Some(p) => Some(read_secret_line(&p.value, allow_insecure).map_err(|w| at(p, w))?),
        None => None,
    };

    let (cert, chain, pkey) = match (&raw.pkcs12, &raw.certificate, &raw.private_key) {
        (Some(p12), None, None) => {
            let der = read_secret_file(p12, allow_insecure)?;
            let pass = passphrase
                .as_deref()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            let parsed = Pkcs12::from_der(&der)
                .and_then(|p| p.parse2(&pass))
                .map_err(|_| {
                    at(
                        p12,
                        format!(
                            "cannot parse PKCS#12 file {} (wrong passphrase?)",
                            p12.get_ref().display()
                        ),
                    )
                })?;
            let cert = parsed
                .cert
                .ok_or_else(|| at(p12, "PKCS#12 file holds no certificate"))?;
            let pkey = parsed
                .pkey
                .ok_or_else(|| at(p12, "PKCS#12 file holds no private key"))?;
            let chain = parsed
                .ca
                .map(|s| s.into_iter().collect())
                .unwrap_or_default();
            (cert, chain, pkey)
        }
        (None, Some(cert_path), Some(key_path)) => {
            let pem = read_file(cert_path)?;
            let mut certs = X509::stack_from_pem(&pem).map_err(|_| {
                at(
                    cert_path,
                    format!(
                        "cannot parse PEM certificates in {}",
                        cert_path.get_ref().display()
                    ),
                )
            })?;
            if certs.is_empty() {
                return Err(at(
                    cert_path,
                    format!("no certificate in {}", cert_path.get_ref().display()),
                ));
            }
            let cert = certs.remove(0);
            let key_pem = read_secret_file(key_path, allow_insecure)?;
            let pkey = match &passphrase {
                Some(pass) => PKey::private_key_from_pem_passphrase(&key_pem, pass),
                None => PKey::private_key_from_pem(&key_pem),
            }
            .map_err(|_| {
                at(
                    key_path,
                    format!(
                        "cannot read private key {}{}",
                        key_path.get_ref().display(),
                        if passphrase.is_some() {
                            " (wrong passphrase?)"
                        } else {
                            " (encrypted? set passphrase_file)"
                        }
                    ),
                )
            })?;
            (cert, certs, pkey)
        }
        _ => {
            return Err(at(
                &raw.sender,
                format!("key entry '{name}' needs either pkcs12, or certificate and private_key"),
            ))
        }
    };

    let where_ = raw
        .certificate
        .as_ref()
        .or(raw.pkcs12.as_ref())
        .expect("checked above");
    finish_entry(where_, name, cert, chain, pkey)
}

/// Checks the key and that it belongs to the certificate; drops the root.
fn finish_entry(
    where_: &Located<std::path::PathBuf>,
    name: String,
    cert: X509,
    chain: Vec<X509>,
    pkey: PKey<Private>,
) -> Result<SigningKey, ConfigError> {
    check_key(&pkey).map_err(|what| at(where_, what))?;
    let matches = cert
        .public_key()
        .map(|pk| pk.public_eq(&pkey))
        .unwrap_or(false);
    if !matches {
        return Err(at(
            where_,
            format!("the certificate for '{name}' does not match its private key"),
        ));
    }
    // The root is left out of what we send: recipients must have it already.
    let chain = chain.into_iter().filter(|c| !is_self_signed(c)).collect();
    let key = SigningKey::new(name, cert, chain, pkey);
    if let Some(days) = days_left(&key.cert) {
        if days < 0 {
            log::warn!("signing certificate for '{}' has expired", key.name);
        } else if days < 30 {
            log::warn!(
                "signing certificate for '{}' expires in {days} days",
                key.name
            );
        }
    }
    Ok(key)
}

/// RSA of 2048 bits or more, ECDSA on P-256 or P-384.
fn check_key(pkey: &PKey<Private>) -> Result<(), String> {
    match pkey.id() {
        Id::RSA | Id::RSA_PSS => {
            if pkey.bits() < 2048 {
                return Err(format!(
                    "RSA key of {} bits is too weak (2048 at least)",
                    pkey.bits()
                ));
            }
            Ok(())
        }
        Id::EC => {
            let nid = pkey.ec_key().ok().and_then(|k| k.group().curve_name());
            match nid {
                Some(Nid::X9_62_PRIME256V1) | Some(Nid::SECP384R1) => Ok(()),
                _ => Err("EC key on an unsupported curve (P-256 or P-384 expected)".into()),
            }
        }
        _ => Err("unsupported key type (RSA or ECDSA expected)".into()),
    }
}

fn is_self_signed(cert: &X509) -> bool {
    cert.issuer_name_hash() == cert.subject_name_hash()
        && cert
            .public_key()
            .map(|k| cert.verify(&k).unwrap_or(false))
            .unwrap_or(false)
}

/// Days until the certificate expires (negative once it has).
pub fn days_left(cert: &X509) -> Option<i32> {
    let now = openssl::asn1::Asn1Time::days_from_now(0).ok()?;
    let diff = now.diff(cert.not_after()).ok()?;
    Some(diff.days)
}
