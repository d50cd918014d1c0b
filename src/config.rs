//! The configuration file: TOML, parsed once at start (and on reload) into a
//! typed `Config`. Every error names the file, the line and the key.

use crate::certstore::{CacheSettings, CertStore, LocalError, Source};
use crate::keystore::{KeyStore, KeyStoreError};
use crate::ldap::{Ldap, LdapSettings};
use crate::pki::Cipher;
use crate::truststore::{TrustError, TrustStore};
use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use toml::Spanned;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/smime-milter/smime-milter.toml";

/// A configuration error with its location, printed as `file:line: key: what`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {what}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub what: String,
}

// ---------------------------------------------------------------------------
// Value types with their own parsers (their errors land on the value's line).

/// A milter socket in Sendmail's notation: `unix:/path`, `local:/path`,
/// `inet:PORT@HOST`, `inet6:PORT@HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    Unix(PathBuf),
    Inet { port: u16, host: String },
    Inet6 { port: u16, host: String },
}

impl SocketSpec {
    /// The socket in the notation it was configured in.
    pub fn notation(&self) -> String {
        match self {
            SocketSpec::Unix(p) => format!("unix:{}", p.display()),
            SocketSpec::Inet { port, host } => format!("inet:{port}@{host}"),
            SocketSpec::Inet6 { port, host } => format!("inet6:{port}@{host}"),
        }
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.notation())
    }
}

impl FromStr for SocketSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid socket '{s}' (expected unix:/path, inet:PORT@HOST or inet6:PORT@HOST)")
        };
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "unix" | "local" => {
                if !rest.starts_with('/') {
                    return Err(format!("socket path in '{s}' must be absolute"));
                }
                Ok(SocketSpec::Unix(PathBuf::from(rest)))
            }
            "inet" | "inet6" => {
                let (port, host) = rest.split_once('@').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                if port == 0 || host.is_empty() {
                    return Err(bad());
                }
                let host = host.to_string();
                Ok(if kind == "inet" {
                    SocketSpec::Inet { port, host }
                } else {
                    SocketSpec::Inet6 { port, host }
                })
            }
            _ => Err(bad()),
        }
    }
}

/// What to do with a message when a given condition arises (OpenDKIM's On-*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAction {
    /// Deliver the message unchanged.
    Accept,
    /// 4xx: the MTA keeps the message queued and retries.
    Tempfail,
    /// 5xx: the client gets a permanent error.
    Reject,
}

impl FromStr for FailAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "accept" => Ok(FailAction::Accept),
            "tempfail" => Ok(FailAction::Tempfail),
            "reject" => Ok(FailAction::Reject),
            _ => Err(format!(
                "invalid action '{s}' (expected accept, tempfail or reject)"
            )),
        }
    }
}

impl FailAction {
    /// The stricter of two actions (accept < tempfail < reject).
    pub fn stricter(self, other: FailAction) -> FailAction {
        let rank = |a: FailAction| match a {
            FailAction::Accept => 0,
            FailAction::Tempfail => 1,
            FailAction::Reject => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for FailAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailAction::Accept => "accept",
            FailAction::Tempfail => "tempfail",
            FailAction::Reject => "reject",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignFormat {
    /// multipart/signed, readable by clients without S/MIME.
    Clear,
    /// application/pkcs7-mime; smime-type=signed-data.
    Opaque,
}

impl FromStr for SignFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "clear" => Ok(SignFormat::Clear),
            "opaque" => Ok(SignFormat::Opaque),
            _ => Err(format!("invalid format '{s}' (expected clear or opaque)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest {
    Sha256,
    Sha384,
    Sha512,
}

impl Digest {
    /// The `micalg` parameter value (RFC 8551 §3.5.3.2).
    pub fn micalg(self) -> &'static str {
        match self {
            Digest::Sha256 => "sha-256",
            Digest::Sha384 => "sha-384",
            Digest::Sha512 => "sha-512",
        }
    }
}

impl FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" | "sha-256" => Ok(Digest::Sha256),
            "sha384" | "sha-384" => Ok(Digest::Sha384),
            "sha512" | "sha-512" => Ok(Digest::Sha512),
            _ => Err(format!(
                "invalid digest '{s}' (expected sha256, sha384 or sha512)"
            )),
        }
    }
}

/// A byte count written as an integer or with a K/M/G suffix ("25M").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
            Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
            Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
            _ => (t, 1),
        };
        num.trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .map(ByteSize)
            .ok_or_else(|| {
                format!("invalid size '{s}' (expected bytes, or a number with K, M or G)")
            })
    }
}

/// Seconds, written as an integer or with an s/m/h/d suffix ("1h").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().last() {
            Some((i, 's')) => (&t[..i], 1u64),
            Some((i, 'm')) => (&t[..i], 60),
            Some((i, 'h')) => (&t[..i], 3600),
            Some((i, 'd')) => (&t[..i], 86400),
            _ => (t, 1),
        };
        num.trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .map(Seconds)
            .ok_or_else(|| {
                format!("invalid duration '{s}' (expected seconds, or a number with s, m, h or d)")
            })
    }
}

/// Deserializes any `FromStr` type from a TOML string, so its error carries the
/// value's span.
fn from_str_de<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

impl From<u64> for Seconds {
    fn from(n: u64) -> Self {
        Seconds(n)
    }
}

impl From<u64> for ByteSize {
    fn from(n: u64) -> Self {
        ByteSize(n)
    }
}

/// A quantity written as a plain integer or as a string with a unit suffix.
fn quantity_de<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String> + From<u64>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Str(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(Some(T::from(n))),
        Raw::Str(s) => s.parse().map(Some).map_err(de::Error::custom),
    }
}

macro_rules! from_str_deserialize {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                from_str_de(d)
            }
        }
    )*};
}
/// Per recipient: whether mail to it is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptMode {
    Never,
    /// When every recipient has a usable certificate.
    Opportunistic,
    /// Always; without a certificate the message is refused.
    Required,
}

impl FromStr for EncryptMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "never" => Ok(EncryptMode::Never),
            "opportunistic" => Ok(EncryptMode::Opportunistic),
            "required" => Ok(EncryptMode::Required),
            _ => Err(format!(
                "invalid policy '{s}' (expected never, opportunistic or required)"
            )),
        }
    }
}

from_str_deserialize!(
    SocketSpec,
    FailAction,
    SignFormat,
    Digest,
    Cipher,
    EncryptMode
);

#[derive(Debug, Clone, Copy)]
struct Net(IpNet);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(Net(n));
        }
        s.parse::<IpAddr>()
            .map(|a| Net(IpNet::from(a)))
            .map_err(|_| {
                de::Error::custom(format!(
                    "invalid network '{s}' (expected an address or CIDR, e.g. 10.0.0.0/8)"
                ))
            })
    }
}

// ---------------------------------------------------------------------------
// The file as written (private), then the typed model the milter uses.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    socket: Option<SocketSpec>,
    socket_mode: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    run_as_root: Option<bool>,
    pid_file: Option<PathBuf>,
    log_level: Option<Spanned<String>>,
    internal_hosts: Option<Vec<Net>>,
    #[serde(default, deserialize_with = "quantity_de")]
    max_message_size: Option<ByteSize>,
    #[serde(default, deserialize_with = "quantity_de")]
    memory_limit: Option<ByteSize>,
    max_mime_depth: Option<usize>,
    max_recipients: Option<usize>,
    max_mime_parts: Option<usize>,
    allow_insecure_key_files: Option<bool>,
    authserv_id: Option<Spanned<String>>,
    #[serde(default)]
    signing: RawSigning,
    pkcs11: Option<RawPkcs11>,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    encrypt: RawEncrypt,
    #[serde(default)]
    decrypt: RawDecrypt,
    #[serde(default)]
    harvest: RawHarvest,
    ldap: Option<Spanned<RawLdap>>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default, deserialize_with = "quantity_de")]
    stats_interval: Option<Seconds>,
    #[serde(default)]
    senders: HashMap<String, Vec<String>>,
    #[serde(default)]
    actions: RawActions,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSigning {
    enabled: Option<bool>,
    format: Option<SignFormat>,
    digest: Option<Digest>,
    include_chain: Option<bool>,
    rsa_padding: Option<Spanned<String>>,
    #[serde(default)]
    key: Vec<Spanned<RawKey>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub sender: Spanned<String>,
    pub certificate: Option<Spanned<PathBuf>>,
    pub private_key: Option<Spanned<PathBuf>>,
    pub pkcs12: Option<Spanned<PathBuf>>,
    pub passphrase_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    enabled: Option<bool>,
    trust_anchors: Option<Spanned<PathBuf>>,
    trust_dir: Option<Spanned<PathBuf>>,
    crl_dir: Option<Spanned<PathBuf>>,
    min_rsa_bits: Option<u32>,
    allow_sha1: Option<bool>,
    #[serde(default, deserialize_with = "quantity_de")]
    max_date_skew: Option<Seconds>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDecrypt {
    enabled: Option<bool>,
    release_unauthenticated: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHarvest {
    enabled: Option<bool>,
    dir: Option<Spanned<PathBuf>>,
}

pub const DEFAULT_HARVEST_DIR: &str = "/var/lib/smime-milter/harvested";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEncrypt {
    cipher: Option<Cipher>,
    default_policy: Option<EncryptMode>,
    missing_cert: Option<Spanned<FailAction>>,
    refuse_at_rcpt: Option<bool>,
    require_trusted_recipient_certs: Option<Spanned<bool>>,
    certs_dir: Option<Spanned<PathBuf>>,
    certs_map: Option<Spanned<PathBuf>>,
    lookup_order: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    policy: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    recipient: Option<String>,
    sender: Option<String>,
    mode: EncryptMode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdap {
    uris: Vec<String>,
    starttls: Option<bool>,
    ca_file: Option<Spanned<PathBuf>>,
    bind_dn: Option<String>,
    bind_password_file: Option<Spanned<PathBuf>>,
    base_dn: String,
    filter: Option<Spanned<String>>,
    #[serde(default, deserialize_with = "quantity_de")]
    connect_timeout: Option<Seconds>,
    #[serde(default, deserialize_with = "quantity_de")]
    search_timeout: Option<Seconds>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCache {
    capacity: Option<usize>,
    #[serde(default, deserialize_with = "quantity_de")]
    ttl: Option<Seconds>,
    #[serde(default, deserialize_with = "quantity_de")]
    negative_ttl: Option<Seconds>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawActions {
    decrypt_failed: Option<FailAction>,
    lookup_error: Option<FailAction>,
    bad_signature: Option<FailAction>,
    key_not_found: Option<FailAction>,
    sender_not_authorized: Option<FailAction>,
    internal_error: Option<FailAction>,
    malformed: Option<FailAction>,
    oversized: Option<FailAction>,
}

/// Failure actions, one per failure class.
#[derive(Debug, Clone)]
pub struct Actions {
    /// Inbound: a message to one of our keys does not decrypt (damaged,
    /// wrong tag, bad padding); accept delivers it unchanged with a header.
    pub decrypt_failed: FailAction,
    /// A recipient certificate lookup failed (directory down): never plaintext
    /// for a required recipient, whatever this says.
    pub lookup_error: FailAction,
    /// Inbound: the smime result is fail or permerror.
    pub bad_signature: FailAction,
    /// The From address has no signing key.
    pub key_not_found: FailAction,
    /// An authenticated client's From is not an address it may send as.
    pub sender_not_authorized: FailAction,
    /// Anything unexpected on our side (OpenSSL failure, milter I/O, panic).
    pub internal_error: FailAction,
    /// The message cannot be parsed well enough to sign it safely.
    pub malformed: FailAction,
    /// The message exceeds `max_message_size` or `max_recipients`.
    pub oversized: FailAction,
}

#[derive(Debug)]
pub struct Signing {
    pub enabled: bool,
    pub format: SignFormat,
    pub digest: Digest,
    pub include_chain: bool,
    /// RSA keys sign with RSASSA-PSS instead of PKCS#1 v1.5.
    pub rsa_pss: bool,
}

impl Signing {
    pub fn options(&self) -> crate::sign::SignOptions {
        crate::sign::SignOptions {
            digest: self.digest,
            include_chain: self.include_chain,
            rsa_pss: self.rsa_pss,
        }
    }
}

/// The PKCS#11 token holding keys (`pkcs11:` URIs in the key table).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11 {
    module: Spanned<PathBuf>,
    pin_file: Option<Spanned<PathBuf>>,
    pin_env: Option<Spanned<String>>,
}

/// Inbound verification: the trust store and the checks' settings.
#[derive(Debug)]
pub struct Verification {
    pub trust: TrustStore,
    pub settings: crate::verify::Settings,
}

/// One encryption rule; the first that matches a recipient decides.
#[derive(Debug, Clone)]
pub struct EncryptRule {
    /// Address or `@domain`, lower case; `None` matches every recipient.
    pub recipient: Option<String>,
    /// Envelope sender address or `@domain`; `None` matches every sender.
    pub sender: Option<String>,
    pub mode: EncryptMode,
}

/// Outbound encryption: policy and where certificates come from.
#[derive(Debug)]
pub struct Encryption {
    pub cipher: Cipher,
    pub default_mode: EncryptMode,
    pub rules: Vec<EncryptRule>,
    /// Action when a required recipient has no certificate (never accept).
    pub missing_cert: FailAction,
    /// Refuse a required recipient without a certificate at RCPT time.
    pub refuse_at_rcpt: bool,
    /// Recipient certificates must chain to the [verify] trust anchors.
    pub require_trusted: bool,
    pub certs: CertStore,
}

/// The typed, validated configuration, with keys loaded.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub socket: Option<SocketSpec>,
    pub socket_mode: Option<u32>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub run_as_root: bool,
    /// Written once the milter runs (as `user`), removed at exit.
    pub pid_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub internal_hosts: Vec<IpNet>,
    pub max_message_size: u64,
    /// Memory for all messages in flight: each body byte kept counts twice
    /// (the body, and the copy made of it at end of message).
    pub memory_limit: u64,
    pub max_mime_depth: usize,
    pub max_recipients: usize,
    pub max_mime_parts: usize,
    /// Our name in Authentication-Results (RFC 8601 authserv-id).
    pub authserv_id: String,
    pub signing: Signing,
    /// `None` when inbound verification is off.
    pub verify: Option<Verification>,
    /// `None` when no encryption policy is configured.
    pub encrypt: Option<Encryption>,
    /// Inbound decryption with the key table's keys.
    pub decrypt: bool,
    /// Release decrypted CBC plaintext that no signature covers (EFAIL: off).
    pub release_unauthenticated: bool,
    /// Where harvested certificates are kept; `None` when harvesting is off.
    pub harvest_dir: Option<PathBuf>,
    /// Whether verified signers are stored there. The milter does; the
    /// test mode only when asked (`--harvest`): a test changes no state.
    pub harvest_writes: bool,
    /// How often the stats line is logged; zero: never.
    pub stats_interval: std::time::Duration,
    /// SMTP AUTH login -> From addresses or `@domain`s it may sign as (lower case).
    pub senders: HashMap<String, Vec<String>>,
    pub actions: Actions,
    pub keys: KeyStore,
}

/// Every key the configuration file accepts, as `table.key`; the man page and
/// the sample config are checked against this list by a test.
pub const KNOWN_KEYS: &[&str] = &[
    "socket",
    "socket_mode",
    "user",
    "group",
    "run_as_root",
    "pid_file",
    "log_level",
    "internal_hosts",
    "max_message_size",
    "memory_limit",
    "max_mime_depth",
    "max_recipients",
    "max_mime_parts",
    "allow_insecure_key_files",
    "authserv_id",
    "signing.enabled",
    "signing.format",
    "signing.digest",
    "signing.include_chain",
    "signing.rsa_padding",
    "pkcs11.module",
    "pkcs11.pin_file",
    "pkcs11.pin_env",
    "signing.key.sender",
    "signing.key.certificate",
    "signing.key.private_key",
    "signing.key.pkcs12",
    "signing.key.passphrase_file",
    "verify.enabled",
    "verify.trust_anchors",
    "verify.trust_dir",
    "verify.crl_dir",
    "verify.min_rsa_bits",
    "verify.allow_sha1",
    "verify.max_date_skew",
    "stats_interval",
    "decrypt.enabled",
    "decrypt.release_unauthenticated",
    "harvest.enabled",
    "harvest.dir",
    "encrypt.cipher",
    "encrypt.default_policy",
    "encrypt.missing_cert",
    "encrypt.refuse_at_rcpt",
    "encrypt.require_trusted_recipient_certs",
    "encrypt.certs_dir",
    "encrypt.certs_map",
    "encrypt.lookup_order",
    "encrypt.policy.recipient",
    "encrypt.policy.sender",
    "encrypt.policy.mode",
    "ldap.uris",
    "ldap.starttls",
    "ldap.ca_file",
    "ldap.bind_dn",
    "ldap.bind_password_file",
    "ldap.base_dn",
    "ldap.filter",
    "ldap.connect_timeout",
    "ldap.search_timeout",
    "cache.capacity",
    "cache.ttl",
    "cache.negative_ttl",
    "senders",
    "actions.decrypt_failed",
    "actions.lookup_error",
    "actions.bad_signature",
    "actions.key_not_found",
    "actions.sender_not_authorized",
    "actions.internal_error",
    "actions.malformed",
    "actions.oversized",
];

/// Maps byte offsets in the file to line numbers and key names for messages.
pub(crate) struct Locator<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Locator<'_> {
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// `file:line: key 'k': what`, the key read back from the line itself.
    pub fn error(&self, span: Range<usize>, what: impl fmt::Display) -> ConfigError {
        let line = self.line_of(span.start);
        let text = self.text.lines().nth(line - 1).unwrap_or("");
        let key = text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"'))
            .filter(|k| !k.is_empty() && !k.contains(['[', ' ']));
        ConfigError {
            file: self.file.to_string(),
            line,
            what: match key {
                Some(k) => format!("key '{k}': {what}"),
                None => what.to_string(),
            },
        }
    }
}

impl Config {
    /// Reads, parses and validates the file, loading every key it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            what: format!("cannot read configuration: {e}"),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let loc = Locator { file: &file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            loc.error(span, e.message().trim())
        })?;

        let socket_mode = match &raw.socket_mode {
            Some(m) => Some(
                u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        loc.error(
                            m.span(),
                            format!("invalid mode '{}' (expected octal, e.g. 0660)", m.get_ref()),
                        )
                    })?,
            ),
            None => None,
        };
        let log_level = match &raw.log_level {
            None => log::LevelFilter::Info,
            Some(l) => match l.get_ref().as_str() {
                "error" => log::LevelFilter::Error,
                "warning" | "warn" => log::LevelFilter::Warn,
                "info" => log::LevelFilter::Info,
                "debug" => log::LevelFilter::Debug,
                other => {
                    return Err(loc.error(
                        l.span(),
                        format!(
                            "invalid log level '{other}' (expected error, warning, info or debug)"
                        ),
                    ))
                }
            },
        };
        for name in [&raw.user, &raw.group].into_iter().flatten() {
            if name.get_ref().is_empty() {
                return Err(loc.error(name.span(), "must not be empty"));
            }
        }

        let mut senders = HashMap::new();
        for (login, addrs) in raw.senders {
            let addrs: Vec<String> = addrs.iter().map(|a| a.to_ascii_lowercase()).collect();
            senders.insert(login.to_ascii_lowercase(), addrs);
        }

        let allow_insecure = raw.allow_insecure_key_files.unwrap_or(false);
        let token = match &raw.pkcs11 {
            None => None,
            Some(p) => Some(open_token(&loc, p, allow_insecure)?),
        };
        let keys = KeyStore::load(token.as_ref(), &raw.signing.key, allow_insecure).map_err(
            |e| match e {
                KeyStoreError::At { span, what } => loc.error(span, what),
            },
        )?;

        let authserv_id = match &raw.authserv_id {
            Some(id) => {
                let v = id.get_ref().trim();
                if v.is_empty()
                    || !v
                        .bytes()
                        .all(|c| c.is_ascii_graphic() && !b"();\"\\".contains(&c))
                {
                    return Err(loc.error(
                        id.span(),
                        format!("invalid authserv-id '{v}' (a host name, no spaces)"),
                    ));
                }
                v.to_string()
            }
            None => host_name(),
        };

        // At most 1 GiB: a signed or encrypted body grows by a third, and
        // MTAs count milter lengths in a C int.
        let max_message_size = raw.max_message_size.map_or(64 << 20, |s| s.0.min(1 << 30));
        let memory_limit = raw.memory_limit.map_or(1 << 30, |s| s.0);
        if memory_limit < 2 * max_message_size {
            // Such a message would be deferred every time, then bounce.
            let at = text
                .lines()
                .position(|l| l.trim_start().starts_with("memory_limit"))
                .map_or(0, |n| n + 1);
            return Err(ConfigError {
                file: file.clone(),
                line: at,
                what: format!(
                    "key 'memory_limit': {memory_limit} bytes is less than twice max_message_size \
                     ({max_message_size} bytes); a message of the largest size counts twice"
                ),
            });
        }
        let max_mime_depth = raw.max_mime_depth.unwrap_or(32);
        let max_mime_parts = raw.max_mime_parts.unwrap_or(1000);
        let v = raw.verify;
        let has_anchors = v.trust_anchors.is_some() || v.trust_dir.is_some();
        if v.enabled == Some(true) && !has_anchors {
            return Err(ConfigError {
                file: file.clone(),
                line: 0,
                what: "[verify] enabled = true needs trust_anchors or trust_dir".into(),
            });
        }
        let verify = if v.enabled.unwrap_or(true) && has_anchors {
            let path = |p: &Option<Spanned<PathBuf>>| p.as_ref().map(|s| s.get_ref().clone());
            let (a, d, c) = (path(&v.trust_anchors), path(&v.trust_dir), path(&v.crl_dir));
            let trust = TrustStore::load(a.as_deref(), d.as_deref(), c.as_deref()).map_err(
                |e| match e {
                    TrustError::Anchors(w) => {
                        loc.error(v.trust_anchors.as_ref().map_or(0..0, |s| s.span()), w)
                    }
                    TrustError::Dir(w) => {
                        loc.error(v.trust_dir.as_ref().map_or(0..0, |s| s.span()), w)
                    }
                    TrustError::Crls(w) => {
                        loc.error(v.crl_dir.as_ref().map_or(0..0, |s| s.span()), w)
                    }
                },
            )?;
            Some(Verification {
                trust,
                settings: crate::verify::Settings {
                    min_rsa_bits: v.min_rsa_bits.unwrap_or(2048),
                    allow_sha1: v.allow_sha1.unwrap_or(false),
                    max_date_skew: v.max_date_skew.map_or(3600, |s| s.0) as i64,
                    max_depth: max_mime_depth,
                    max_parts: max_mime_parts,
                },
            })
        } else {
            None
        };

        let harvest_dir = match (raw.harvest.enabled.unwrap_or(true), raw.harvest.dir) {
            (false, _) => None,
            (true, Some(d)) => {
                if !d.get_ref().is_dir() {
                    return Err(loc.error(
                        d.span(),
                        format!("{} is not a directory", d.get_ref().display()),
                    ));
                }
                Some(d.into_inner())
            }
            // The default place is used when it exists (the packages create it).
            (true, None) => Some(PathBuf::from(DEFAULT_HARVEST_DIR)).filter(|d| d.is_dir()),
        };
        let encrypt = load_encryption(
            &loc,
            raw.encrypt,
            raw.ldap,
            raw.cache,
            verify.as_ref(),
            harvest_dir.clone(),
            allow_insecure,
        )?;

        let a = raw.actions;
        Ok(Config {
            path: path.to_path_buf(),
            socket: raw.socket,
            socket_mode,
            user: raw.user.map(|u| u.into_inner()),
            group: raw.group.map(|g| g.into_inner()),
            run_as_root: raw.run_as_root.unwrap_or(false),
            pid_file: raw.pid_file,
            log_level,
            internal_hosts: raw
                .internal_hosts
                .map(|v| v.into_iter().map(|n| n.0).collect())
                .unwrap_or_else(default_internal_hosts),
            max_message_size,
            memory_limit,
            max_mime_depth,
            max_recipients: raw.max_recipients.unwrap_or(1000),
            max_mime_parts,
            authserv_id,
            verify,
            encrypt,
            decrypt: raw.decrypt.enabled.unwrap_or(false),
            release_unauthenticated: raw.decrypt.release_unauthenticated.unwrap_or(false),
            harvest_dir,
            harvest_writes: true,
            stats_interval: std::time::Duration::from_secs(
                raw.stats_interval.map_or(3600, |s| s.0),
            ),
            signing: Signing {
                enabled: raw.signing.enabled.unwrap_or(true),
                format: raw.signing.format.unwrap_or(SignFormat::Clear),
                digest: raw.signing.digest.unwrap_or(Digest::Sha256),
                include_chain: raw.signing.include_chain.unwrap_or(true),
                rsa_pss: match raw
                    .signing
                    .rsa_padding
                    .as_ref()
                    .map(|s| s.get_ref().as_str())
                {
                    None | Some("pkcs1") => false,
                    Some("pss") => true,
                    Some(other) => {
                        let span = raw.signing.rsa_padding.as_ref().map_or(0..0, |s| s.span());
                        return Err(loc.error(
                            span,
                            format!("invalid rsa_padding '{other}' (expected pkcs1 or pss)"),
                        ));
                    }
                },
            },
            senders,
            actions: Actions {
                decrypt_failed: a.decrypt_failed.unwrap_or(FailAction::Accept),
                lookup_error: a.lookup_error.unwrap_or(FailAction::Tempfail),
                bad_signature: a.bad_signature.unwrap_or(FailAction::Accept),
                key_not_found: a.key_not_found.unwrap_or(FailAction::Accept),
                sender_not_authorized: a.sender_not_authorized.unwrap_or(FailAction::Accept),
                internal_error: a.internal_error.unwrap_or(FailAction::Tempfail),
                malformed: a.malformed.unwrap_or(FailAction::Accept),
                oversized: a.oversized.unwrap_or(FailAction::Accept),
            },
            keys,
        })
    }
}

fn rule_pattern(s: Option<String>) -> Option<String> {
    s.map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v != "*" && !v.is_empty())
}

fn load_encryption(
    loc: &Locator<'_>,
    e: RawEncrypt,
    ldap: Option<Spanned<RawLdap>>,
    cache: RawCache,
    verify: Option<&Verification>,
    harvest_dir: Option<PathBuf>,
    allow_insecure: bool,
) -> Result<Option<Encryption>, ConfigError> {
    let default_mode = e.default_policy.unwrap_or(EncryptMode::Never);
    let rules: Vec<EncryptRule> = e
        .policy
        .into_iter()
        .map(|r| EncryptRule {
            recipient: rule_pattern(r.recipient),
            sender: rule_pattern(r.sender),
            mode: r.mode,
        })
        .collect();
    if default_mode == EncryptMode::Never && rules.iter().all(|r| r.mode == EncryptMode::Never) {
        return Ok(None);
    }
    let missing_cert = match e.missing_cert {
        Some(a) if *a.get_ref() == FailAction::Accept => {
            return Err(loc.error(a.span(), "accept would send mail in plaintext that policy requires encrypted; use tempfail or reject"))
        }
        Some(a) => a.into_inner(),
        None => FailAction::Tempfail,
    };
    let require_trusted = match &e.require_trusted_recipient_certs {
        Some(r) if *r.get_ref() && verify.is_none() => {
            return Err(loc.error(
                r.span(),
                "needs trust anchors: set [verify] trust_anchors or trust_dir",
            ))
        }
        Some(r) => *r.get_ref(),
        None => false,
    };
    let path = |p: &Option<Spanned<PathBuf>>| p.as_ref().map(|s| s.get_ref().clone());
    let local =
        crate::certstore::load_local(path(&e.certs_dir).as_deref(), path(&e.certs_map).as_deref())
            .map_err(|err| match err {
                LocalError::Dir(w) => loc.error(e.certs_dir.as_ref().map_or(0..0, |s| s.span()), w),
                LocalError::Map(w) => loc.error(e.certs_map.as_ref().map_or(0..0, |s| s.span()), w),
            })?;

    let ldap = match ldap {
        None => None,
        Some(l) => {
            let span = l.span();
            let l = l.into_inner();
            if l.uris.is_empty()
                || l.uris
                    .iter()
                    .any(|u| !(u.starts_with("ldap://") || u.starts_with("ldaps://")))
            {
                return Err(loc.error(span, "[ldap] uris must list ldap:// or ldaps:// URIs"));
            }
            if let Some(f) = &l.filter {
                if !f.get_ref().contains("%s") || !f.get_ref().starts_with('(') {
                    return Err(loc.error(
                        f.span(),
                        "filter must be an LDAP filter with %s for the address",
                    ));
                }
            }
            let ca_pem = match &l.ca_file {
                Some(p) => Some(std::fs::read(p.get_ref()).map_err(|err| {
                    loc.error(
                        p.span(),
                        format!("cannot read {}: {err}", p.get_ref().display()),
                    )
                })?),
                None => None,
            };
            let bind_password = match &l.bind_password_file {
                Some(p) => {
                    let raw = crate::keystore::read_secret(p.get_ref(), allow_insecure)
                        .map_err(|w| loc.error(p.span(), w))?;
                    let text = String::from_utf8_lossy(&raw);
                    Some(text.trim_end_matches(['\r', '\n']).to_string())
                }
                None => None,
            };
            Some(Ldap::new(LdapSettings {
                uris: l.uris,
                starttls: l.starttls.unwrap_or(false),
                ca_pem,
                bind_dn: l.bind_dn,
                bind_password,
                base_dn: l.base_dn,
                filter: l
                    .filter
                    .map(|f| f.into_inner())
                    .unwrap_or_else(|| crate::ldap::DEFAULT_FILTER.to_string()),
                connect_timeout: std::time::Duration::from_secs(
                    l.connect_timeout.map_or(5, |s| s.0),
                ),
                search_timeout: std::time::Duration::from_secs(l.search_timeout.map_or(5, |s| s.0)),
            }))
        }
    };
    let order = match &e.lookup_order {
        None => {
            let mut o = vec![Source::Local];
            if harvest_dir.is_some() {
                o.push(Source::Harvested);
            }
            if ldap.is_some() {
                o.push(Source::Ldap);
            }
            o
        }
        Some(list) => {
            let mut o = Vec::new();
            for s in list.get_ref() {
                o.push(match s.as_str() {
                    "local" => Source::Local,
                    "harvested" => Source::Harvested,
                    "ldap" if ldap.is_some() => Source::Ldap,
                    "ldap" => {
                        return Err(loc.error(
                            list.span(),
                            "lookup_order names ldap but there is no [ldap] section",
                        ))
                    }
                    other => {
                        return Err(loc.error(
                            list.span(),
                            format!("unknown source '{other}' (expected local or ldap)"),
                        ))
                    }
                });
            }
            o
        }
    };
    let certs = CertStore::new(
        local,
        harvest_dir,
        ldap,
        order,
        CacheSettings {
            capacity: cache.capacity.unwrap_or(10_000),
            ttl: std::time::Duration::from_secs(cache.ttl.map_or(3600, |s| s.0)),
            negative_ttl: std::time::Duration::from_secs(cache.negative_ttl.map_or(300, |s| s.0)),
        },
    );
    Ok(Some(Encryption {
        cipher: e.cipher.unwrap_or(Cipher::Aes256Cbc),
        default_mode,
        rules,
        missing_cert,
        refuse_at_rcpt: e.refuse_at_rcpt.unwrap_or(false),
        require_trusted,
        certs,
    }))
}

/// Opens the token: the module loaded, logged in with the PIN from its file
/// (0600) or environment variable. The PIN is never printed.
fn open_token(
    loc: &Locator<'_>,
    p: &RawPkcs11,
    allow_insecure: bool,
) -> Result<std::sync::Arc<crate::pkcs11::Token>, ConfigError> {
    let pin = match (&p.pin_file, &p.pin_env) {
        (Some(f), None) => {
            let raw = crate::keystore::read_secret(f.get_ref(), allow_insecure)
                .map_err(|w| loc.error(f.span(), w))?;
            String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string()
        }
        (None, Some(v)) => std::env::var(v.get_ref()).map_err(|_| {
            loc.error(
                v.span(),
                format!("environment variable {} is not set", v.get_ref()),
            )
        })?,
        _ => {
            return Err(loc.error(
                p.module.span(),
                "[pkcs11] needs exactly one of pin_file and pin_env",
            ))
        }
    };
    crate::pkcs11::Token::open_shared(p.module.get_ref(), crate::pkcs11::Pin::new(pin))
        .map_err(|e| loc.error(p.module.span(), e.to_string()))
}

/// The host name, the default authserv-id.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if ok && !h.is_empty() => h.to_ascii_lowercase(),
        _ => "localhost".into(),
    }
}

fn default_internal_hosts() -> Vec<IpNet> {
    vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/test.toml"), text)
    }

    #[test]
    fn empty_config_gets_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.socket, None);
        assert_eq!(c.max_message_size, 64 << 20);
        assert_eq!(c.actions.internal_error, FailAction::Tempfail);
        assert_eq!(c.actions.key_not_found, FailAction::Accept);
        assert_eq!(c.signing.format, SignFormat::Clear);
        assert_eq!(c.signing.digest, Digest::Sha256);
        assert_eq!(c.internal_hosts.len(), 2);
    }

    #[test]
    fn unknown_key_reports_file_line_and_key() {
        let e = parse("socket = \"unix:/tmp/s\"\n\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().starts_with("/etc/test.toml:3:"), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_key_in_subtable_is_reported() {
        let e = parse("[signing]\nformat = \"clear\"\ndigets = \"sha256\"\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("digets"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        let cases = [
            ("socket = \"tcp:25\"\n", "socket"),
            ("\ninternal_hosts = [\"10.0.0.0/33\"]\n", "internal_hosts"),
            ("[actions]\nkey_not_found = \"discard\"\n", "key_not_found"),
            ("[signing]\ndigest = \"md5\"\n", "digest"),
            ("max_message_size = \"12X\"\n", "max_message_size"),
            ("socket_mode = \"0999\"\n", "socket_mode"),
            ("log_level = \"loud\"\n", "log_level"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            let line = text.lines().position(|l| l.contains(key)).unwrap() + 1;
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.what.contains(&format!("key '{key}'")), "{text}: {e}");
        }
    }

    #[test]
    fn discard_is_not_an_action() {
        // No configuration can make the milter drop mail.
        assert!("discard".parse::<FailAction>().is_err());
    }

    #[test]
    fn socket_notations() {
        assert_eq!(
            "unix:/run/s.sock".parse::<SocketSpec>().unwrap(),
            SocketSpec::Unix("/run/s.sock".into())
        );
        assert_eq!(
            "inet:8891@127.0.0.1".parse::<SocketSpec>().unwrap(),
            SocketSpec::Inet {
                port: 8891,
                host: "127.0.0.1".into()
            }
        );
        assert_eq!(
            "inet6:8891@[::1]".parse::<SocketSpec>().unwrap().notation(),
            "inet6:8891@[::1]"
        );
        for bad in [
            "unix:rel/path",
            "inet:0@x",
            "inet:70000@x",
            "inet:25",
            "inet:25@",
            "foo:1",
        ] {
            assert!(bad.parse::<SocketSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!("25M".parse::<ByteSize>().unwrap().0, 25 << 20);
        assert_eq!("512k".parse::<ByteSize>().unwrap().0, 512 << 10);
        assert_eq!("1000".parse::<ByteSize>().unwrap().0, 1000);
        assert!("M".parse::<ByteSize>().is_err());
        assert!("99999999999G".parse::<ByteSize>().is_err());
        let c = parse("max_message_size = 1234\n").unwrap();
        assert_eq!(c.max_message_size, 1234);
        // A limit that a message of the largest size could never fit.
        let e = parse("max_message_size = \"64M\"\nmemory_limit = \"100M\"\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.what.contains("twice max_message_size"), "{}", e.what);
        assert!(parse("max_message_size = \"16M\"\nmemory_limit = \"40M\"\n").is_ok());
    }

    #[test]
    fn internal_hosts_accept_addresses_and_cidrs() {
        let c =
            parse("internal_hosts = [\"192.0.2.7\", \"10.0.0.0/8\", \"2001:db8::/32\"]\n").unwrap();
        assert_eq!(c.internal_hosts.len(), 3);
        assert!(c.internal_hosts[0].contains(&"192.0.2.7".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn missing_key_file_is_reported_at_its_line() {
        let text = "[[signing.key]]\nsender = \"a@example.com\"\ncertificate = \"/nonexistent/a.pem\"\nprivate_key = \"/nonexistent/a.key\"\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.what.contains("certificate") && e.what.contains("/nonexistent/a.pem"),
            "{e}"
        );
    }

    #[test]
    fn verification_is_on_only_with_trust_anchors() {
        let c = parse("").unwrap();
        assert!(c.verify.is_none());
        let e = parse("[verify]\nenabled = true\n").unwrap_err();
        assert!(e.what.contains("needs trust_anchors or trust_dir"), "{e}");
        let e = parse("[verify]\nallow_sha1 = true\ntrust_anchors = \"/nonexistent/roots.pem\"\n")
            .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.what.contains("key 'trust_anchors'") && e.what.contains("/nonexistent/roots.pem"),
            "{e}"
        );
        let e = parse("[verify]\nmax_date_skew = \"1 week\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn authserv_id_defaults_to_the_host_name_and_is_checked() {
        assert!(!parse("").unwrap().authserv_id.is_empty());
        assert_eq!(
            parse("authserv_id = \"mx.example.com\"\n")
                .unwrap()
                .authserv_id,
            "mx.example.com"
        );
        let e = parse("authserv_id = \"mx example\"\n").unwrap_err();
        assert!(e.what.contains("key 'authserv_id'"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!("1h".parse::<Seconds>().unwrap().0, 3600);
        assert_eq!("90".parse::<Seconds>().unwrap().0, 90);
        assert_eq!("2d".parse::<Seconds>().unwrap().0, 172800);
        assert!("h".parse::<Seconds>().is_err());
    }

    #[test]
    fn senders_table_is_lowercased() {
        let c =
            parse("[senders]\nAlice = [\"Alice@Example.COM\", \"@Sales.example.com\"]\n").unwrap();
        assert_eq!(
            c.senders["alice"],
            vec![
                "alice@example.com".to_string(),
                "@sales.example.com".to_string()
            ]
        );
    }

    #[test]
    fn every_known_key_is_in_the_sample_config() {
        let sample = include_str!("../contrib/smime-milter.toml");
        for key in KNOWN_KEYS {
            let leaf = key.rsplit('.').next().unwrap();
            assert!(
                sample.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim();
                    l.starts_with(&format!("{leaf} =")) || l == format!("[{key}]")
                }),
                "key {key} is not documented in contrib/smime-milter.toml"
            );
        }
    }
}
