//! The typed configuration: plain data, with the place each value that
//! names a file was written, so that loading it later can say where.

use super::values::{
    Capability, Digest, EncryptMode, FailAction, RevocationMode, SignFormat, SigningTime,
    SocketSpec,
};
use crate::pki::Cipher;
use ipnet::IpNet;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/smime-milter/smime-milter.toml";
pub const DEFAULT_HARVEST_DIR: &str = "/var/lib/smime-milter/harvested";
/// The metrics endpoint's default port (on 127.0.0.1).
pub const DEFAULT_METRICS_PORT: u16 = 9465;
/// Finds a user by any of the addresses Exchange publishes for them.
pub const DEFAULT_LDAP_FILTER: &str = "(|(mail=%s)(proxyAddresses=smtp:%s))";

/// A configuration error with its location, printed as `file:line: key: what`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {what}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub what: String,
}

/// Where a value was written, so that loading it later (a key file that is
/// missing, a trust store that does not parse) still names file, line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: Arc<str>,
    pub line: usize,
    pub key: Option<String>,
}

impl Place {
    pub fn error(&self, what: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: self.line,
            what: match &self.key {
                Some(k) => format!("key '{k}': {what}"),
                None => what.to_string(),
            },
        }
    }
}

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub place: Place,
}

impl<T> Located<T> {
    pub fn get_ref(&self) -> &T {
        &self.value
    }

    pub fn error(&self, what: impl fmt::Display) -> ConfigError {
        self.place.error(what)
    }
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

#[derive(Debug, Clone)]
pub struct Signing {
    pub enabled: bool,
    pub format: SignFormat,
    pub digest: Digest,
    pub include_chain: bool,
    /// RSA keys sign with RSASSA-PSS instead of PKCS#1 v1.5.
    pub rsa_pss: bool,
    /// The SMIMECapabilities we sign, in order; empty: none.
    pub capabilities: Vec<Capability>,
    pub signing_time: SigningTime,
    /// How far back a Date may lie to be used as signingTime, seconds.
    pub signing_time_window: u64,
    /// Keys by sender address or `@domain`.
    pub keys: Vec<KeySpec>,
}

/// RFC 9788 header protection of what we sign or encrypt.
#[derive(Debug, Clone)]
pub struct HeaderProtection {
    pub enabled: bool,
    /// What an encrypted message shows outside.
    pub policy: crate::mail::protected::Policy,
    /// Encrypted messages whose policy hides a user-facing field get the
    /// Legacy Display Element.
    pub legacy_display: bool,
}

/// The visible verdict: subject tags and an info header on inbound mail,
/// each a template with `%{result}`, `%{signer}`; `None`: not used.
#[derive(Debug, Clone, Default)]
pub struct Display {
    pub tag_pass: Option<String>,
    /// fail and permerror.
    pub tag_fail: Option<String>,
    /// neutral, temperror, policy.
    pub tag_other: Option<String>,
    pub tag_decrypted: Option<String>,
    /// The info header's name and template.
    pub info: Option<(String, String)>,
}

impl Display {
    /// The subject tag templates configured.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        [
            &self.tag_pass,
            &self.tag_fail,
            &self.tag_other,
            &self.tag_decrypted,
        ]
        .into_iter()
        .filter_map(|t| t.as_deref())
    }
}

/// Inbound verification: where the trust anchors are, and the checks' settings.
#[derive(Debug, Clone)]
pub struct Verification {
    pub trust_anchors: Option<Located<PathBuf>>,
    pub trust_dir: Option<Located<PathBuf>>,
    pub crl_dir: Option<Located<PathBuf>>,
    pub min_rsa_bits: u32,
    pub allow_sha1: bool,
    /// Largest accepted distance between Date: and signingTime, seconds; 0 = no check.
    pub max_date_skew: i64,
}

/// Online checks: revocation by OCSP and CRL distribution points, missing
/// intermediates from AIA caIssuers, over plain HTTP.
#[derive(Debug, Clone)]
pub struct Online {
    pub revocation: RevocationMode,
    pub ocsp: bool,
    pub crl: bool,
    pub aia: bool,
    pub ocsp_nonce: bool,
    /// Per request, within the message's `lookup_budget`.
    pub timeout: Duration,
    pub max_response_size: u64,
    pub cache_entries: usize,
    /// Answers are kept until their nextUpdate, at most this long.
    pub max_cache_age: Duration,
    /// A URL that failed is not asked again for this long.
    pub retry_after: Duration,
    pub allow_networks: Vec<IpNet>,
    pub deny_networks: Vec<IpNet>,
}

impl Online {
    /// Whether anything is fetched at all.
    pub fn fetches(&self) -> bool {
        self.aia || (self.revocation != RevocationMode::Off && (self.ocsp || self.crl))
    }
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
#[derive(Debug, Clone)]
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
    /// Where recipient certificates are looked up, in this order.
    pub lookup_order: Vec<CertSource>,
    pub certs_dir: Option<Located<PathBuf>>,
    pub certs_map: Option<Located<PathBuf>>,
    pub ldap: Option<LdapConfig>,
    pub cache: CacheConfig,
    /// Every message we encrypt is encrypted to these too (escrow, archive).
    pub additional_recipients: Vec<Located<AdditionalRecipient>>,
}

/// An `additional_recipients` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdditionalRecipient {
    /// A certificate file, read at start and on reload.
    File(PathBuf),
    /// An address, looked up like any recipient (lower case).
    Address(String),
}

/// A place recipient certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `certs_dir` and `certs_map`.
    Local,
    /// Signer certificates kept by harvesting.
    Harvested,
    /// The `[ldap]` directory.
    Ldap,
}

/// The directory recipient certificates are looked up in.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    pub uris: Vec<String>,
    pub starttls: bool,
    pub ca_file: Option<Located<PathBuf>>,
    pub bind_dn: Option<String>,
    pub bind_password_file: Option<Located<PathBuf>>,
    pub base_dn: String,
    /// With `%s` for the (escaped) address.
    pub filter: String,
    pub connect_timeout: Duration,
    pub search_timeout: Duration,
    /// Connections kept open to each server, at most.
    pub max_connections: usize,
    /// How long a server that timed out or refused is skipped.
    pub retry_after: Duration,
}

/// Harvested certificates written into the directory, as contact entries
/// under `base_dn`, by the account `ldap` binds as.
#[derive(Debug, Clone)]
pub struct DirectoryHarvest {
    /// `[ldap]`, with the harvest's own URIs and account when given.
    pub ldap: LdapConfig,
    pub base_dn: String,
    /// Writes queued at most; more are dropped (and counted).
    pub max_pending: usize,
    /// Entries are Active Directory `contact`s, not `inetOrgPerson`s.
    pub contact: bool,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub listen: std::net::SocketAddr,
}

/// The recipient certificate cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub capacity: usize,
    pub ttl: Duration,
    pub negative_ttl: Duration,
}

/// One `[[signing.key]]` entry, as written.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub sender: Located<String>,
    pub certificate: Option<Located<PathBuf>>,
    pub private_key: Option<Located<PathBuf>>,
    pub pkcs12: Option<Located<PathBuf>>,
    pub passphrase_file: Option<Located<PathBuf>>,
}

/// The `[pkcs11]` token holding keys (`pkcs11:` URIs in the key table).
#[derive(Debug, Clone)]
pub struct Pkcs11 {
    pub module: Located<PathBuf>,
    pub pin: PinSource,
}

/// Where the token's PIN is read from (never the file itself).
#[derive(Debug, Clone)]
pub enum PinSource {
    /// A file readable by the milter alone.
    File(Located<PathBuf>),
    /// An environment variable.
    Env(Located<String>),
}

/// The typed, validated configuration: plain data, nothing opened or loaded.
#[derive(Debug, Clone)]
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
    /// MTA connections served at once; more are closed at once (the MTA
    /// applies its default action). Read at start only.
    pub max_mta_connections: usize,
    /// All directory work for one message (or one RCPT) ends within this:
    /// below the MTAs' milter timeouts (Sendmail's default is 10 s).
    pub lookup_budget: Duration,
    /// Our name in Authentication-Results (RFC 8601 authserv-id).
    pub authserv_id: String,
    pub signing: Signing,
    /// `None` when inbound verification is off.
    pub verify: Option<Verification>,
    pub online: Online,
    /// `None` when no encryption policy is configured.
    pub encrypt: Option<Encryption>,
    /// Inbound decryption with the key table's keys.
    pub decrypt: bool,
    /// Release decrypted CBC plaintext that no signature covers (EFAIL: off).
    pub release_unauthenticated: bool,
    /// Where harvested certificates are kept; `None` when harvesting is off.
    pub harvest_dir: Option<PathBuf>,
    /// Harvesting into the directory instead (`store = "ldap"`).
    pub harvest_ldap: Option<DirectoryHarvest>,
    /// Whether verified signers are stored there. The milter does; the
    /// test mode only when asked (`--harvest`): a test changes no state.
    pub harvest_writes: bool,
    pub header_protection: HeaderProtection,
    pub display: Display,
    /// The metrics endpoint, when on. Read at start only.
    pub metrics: Option<Metrics>,
    /// How often the stats line is logged; zero: never.
    pub stats_interval: std::time::Duration,
    /// SMTP AUTH login -> From addresses or `@domain`s it may sign as (lower case).
    pub senders: HashMap<String, Vec<String>>,
    pub actions: Actions,
    pub pkcs11: Option<Pkcs11>,
    /// Key and passphrase files readable by others are accepted.
    pub allow_insecure_key_files: bool,
}
