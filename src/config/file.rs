//! The file as written: the serde structs that read it (unknown keys are
//! errors), and the validation that turns them into a `Config`.

use super::model::{
    Actions, AdditionalRecipient, CacheConfig, CertSource, Config, ConfigError, DirectoryHarvest,
    Display, EncryptRule, Encryption, HeaderProtection, KeySpec, LdapConfig, Located, Metrics,
    Online, PinSource, Pkcs11, Place, Signing, Verification, DEFAULT_HARVEST_DIR,
    DEFAULT_LDAP_FILTER, DEFAULT_METRICS_PORT,
};
use super::values::{
    quantity_de, ByteSize, Capability, Digest, EncryptMode, FailAction, Net, RevocationMode,
    Seconds, SignFormat, SigningTime, SocketSpec,
};
use crate::pki::Cipher;
use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

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
    max_mta_connections: Option<Spanned<usize>>,
    #[serde(default, deserialize_with = "quantity_de")]
    lookup_budget: Option<Seconds>,
    allow_insecure_key_files: Option<bool>,
    authserv_id: Option<Spanned<String>>,
    #[serde(default)]
    signing: RawSigning,
    pkcs11: Option<RawPkcs11>,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    online: RawOnline,
    #[serde(default)]
    encrypt: RawEncrypt,
    #[serde(default)]
    decrypt: RawDecrypt,
    #[serde(default)]
    harvest: RawHarvest,
    ldap: Option<Spanned<RawLdap>>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    header_protection: RawHeaderProtection,
    #[serde(default)]
    display: RawDisplay,
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
    capabilities: Option<Spanned<Vec<Capability>>>,
    signing_time: Option<SigningTime>,
    #[serde(default, deserialize_with = "quantity_de")]
    signing_time_window: Option<Seconds>,
    #[serde(default)]
    key: Vec<Spanned<RawKey>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    sender: Spanned<String>,
    certificate: Option<Spanned<PathBuf>>,
    private_key: Option<Spanned<PathBuf>>,
    pkcs12: Option<Spanned<PathBuf>>,
    passphrase_file: Option<Spanned<PathBuf>>,
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
struct RawOnline {
    revocation: Option<RevocationMode>,
    ocsp: Option<bool>,
    crl_distribution_points: Option<bool>,
    aia_issuers: Option<bool>,
    ocsp_nonce: Option<bool>,
    #[serde(default, deserialize_with = "quantity_de")]
    timeout: Option<Seconds>,
    #[serde(default, deserialize_with = "quantity_de")]
    max_response_size: Option<ByteSize>,
    cache_entries: Option<usize>,
    #[serde(default, deserialize_with = "quantity_de")]
    max_cache_age: Option<Seconds>,
    #[serde(default, deserialize_with = "quantity_de")]
    retry_after: Option<Seconds>,
    allow_networks: Option<Vec<Net>>,
    deny_networks: Option<Vec<Net>>,
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
    store: Option<Spanned<String>>,
    ldap_base: Option<Spanned<String>>,
    ldap_uris: Option<Spanned<Vec<String>>>,
    ldap_bind_dn: Option<String>,
    ldap_bind_password_file: Option<Spanned<PathBuf>>,
    ldap_object_class: Option<Spanned<String>>,
    max_pending: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaderProtection {
    enabled: Option<bool>,
    policy: Option<crate::mail::protected::Policy>,
    legacy_display: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDisplay {
    subject_tag_pass: Option<Spanned<String>>,
    subject_tag_fail: Option<Spanned<String>>,
    subject_tag_other: Option<Spanned<String>>,
    subject_tag_decrypted: Option<Spanned<String>>,
    info_header: Option<Spanned<String>>,
    info_value: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<bool>,
    listen: Option<Spanned<String>>,
}

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
    additional_recipients: Vec<Spanned<String>>,
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
    max_connections: Option<Spanned<usize>>,
    #[serde(default, deserialize_with = "quantity_de")]
    retry_after: Option<Seconds>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPkcs11 {
    module: Spanned<PathBuf>,
    pin_file: Option<Spanned<PathBuf>>,
    pin_env: Option<Spanned<String>>,
}

impl Config {
    /// Reads, parses and validates the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            what: format!("cannot read configuration: {e}"),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        parse(path, text)
    }
}

/// Maps byte offsets in the file to line numbers and key names for messages.
struct Locator<'a> {
    file: Arc<str>,
    text: &'a str,
    /// Where each line starts: every value is located, so a lookup must not
    /// scan the file (a key table may have thousands of entries).
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    fn new(file: &str, text: &'a str) -> Locator<'a> {
        let line_starts = std::iter::once(0)
            .chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1))
            .collect();
        Locator {
            file: Arc::from(file),
            text,
            line_starts,
        }
    }

    /// The line of `span` and its key, read back from the line itself.
    fn place(&self, span: Range<usize>) -> Place {
        let line = self
            .line_starts
            .partition_point(|&s| s <= span.start)
            .max(1);
        let start = self.line_starts[line - 1];
        let end = self.line_starts.get(line).map_or(self.text.len(), |&e| e);
        let text = self.text[start..end].trim_end_matches(['\r', '\n']);
        let key = text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"'))
            .filter(|k| !k.is_empty() && !k.contains(['[', ' ']));
        Place {
            file: self.file.clone(),
            line,
            key: key.map(str::to_string),
        }
    }

    /// `file:line: key 'k': what` for a top-level key whose value carries no
    /// place (a quantity): the line is the first that sets it.
    fn key_error(&self, key: &str, what: impl fmt::Display) -> ConfigError {
        let line = self
            .text
            .lines()
            .position(|l| l.trim_start().starts_with(key))
            .map_or(0, |n| n + 1);
        ConfigError {
            file: self.file.to_string(),
            line,
            what: format!("key '{key}': {what}"),
        }
    }

    /// `file:line: key 'k': what`.
    fn error(&self, span: Range<usize>, what: impl fmt::Display) -> ConfigError {
        self.place(span).error(what)
    }

    fn located<T>(&self, s: Spanned<T>) -> Located<T> {
        Located {
            place: self.place(s.span()),
            value: s.into_inner(),
        }
    }

    fn located_opt<T>(&self, s: Option<Spanned<T>>) -> Option<Located<T>> {
        s.map(|s| self.located(s))
    }
}

fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let loc = Locator::new(&file, text);
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
                    format!("invalid log level '{other}' (expected error, warning, info or debug)"),
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

    let pkcs11 = raw.pkcs11.map(|p| pkcs11(&loc, p)).transpose()?;
    let keys: Vec<KeySpec> = raw
        .signing
        .key
        .into_iter()
        .map(|k| {
            let k = k.into_inner();
            KeySpec {
                sender: loc.located(k.sender),
                certificate: loc.located_opt(k.certificate),
                private_key: loc.located_opt(k.private_key),
                pkcs12: loc.located_opt(k.pkcs12),
                passphrase_file: loc.located_opt(k.passphrase_file),
            }
        })
        .collect();

    let capabilities = match raw.signing.capabilities {
        None => Capability::DEFAULT.to_vec(),
        Some(list) => {
            let span = list.span();
            let list = list.into_inner();
            let twice = (1..list.len()).find(|&i| list[..i].contains(&list[i]));
            if let Some(i) = twice {
                let what = format!("capability {:?} listed twice", list[i]);
                return Err(loc.error(span, what));
            }
            list
        }
    };
    if let Some(w) = raw.signing.signing_time_window {
        if w.0 > 30 * 86400 {
            return Err(loc.key_error(
                "signing_time_window",
                "signing_time_window is at most 30 days",
            ));
        }
    }

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
        return Err(loc.key_error(
            "memory_limit",
            format!(
                "{memory_limit} bytes is less than twice max_message_size \
                 ({max_message_size} bytes); a message of the largest size counts twice"
            ),
        ));
    }
    let max_mta_connections = match raw.max_mta_connections {
        Some(n) if *n.get_ref() == 0 => return Err(loc.error(n.span(), "must be at least 1")),
        Some(n) => n.into_inner(),
        None => 2000,
    };
    let lookup_budget = Duration::from_secs(raw.lookup_budget.map_or(8, |s| s.0));
    if lookup_budget.is_zero() || lookup_budget > Duration::from_secs(3600) {
        return Err(loc.key_error("lookup_budget", "must be from 1 s to 1 h"));
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
    let verify = (v.enabled.unwrap_or(true) && has_anchors).then(|| Verification {
        trust_anchors: loc.located_opt(v.trust_anchors),
        trust_dir: loc.located_opt(v.trust_dir),
        crl_dir: loc.located_opt(v.crl_dir),
        min_rsa_bits: v.min_rsa_bits.unwrap_or(2048),
        allow_sha1: v.allow_sha1.unwrap_or(false),
        max_date_skew: v.max_date_skew.map_or(3600, |s| s.0) as i64,
    });

    let online = online(&loc, raw.online, lookup_budget)?;

    let ldap = raw.ldap.map(|l| ldap_config(&loc, l)).transpose()?;
    let (harvest_dir, harvest_ldap) = harvest(&loc, raw.harvest, ldap.as_ref())?;
    let metrics = metrics(&loc, raw.metrics)?;
    let display = display(&loc, raw.display)?;
    let header_protection = HeaderProtection {
        enabled: raw.header_protection.enabled.unwrap_or(true),
        policy: raw
            .header_protection
            .policy
            .unwrap_or(crate::mail::protected::Policy::Baseline),
        legacy_display: raw.header_protection.legacy_display.unwrap_or(true),
    };
    let encrypt = encryption(
        &loc,
        raw.encrypt,
        ldap,
        raw.cache,
        verify.is_some(),
        harvest_dir.is_some(),
    )?;

    let a = raw.actions;
    Ok(Config {
        path: path.to_path_buf(),
        allow_insecure_key_files: raw.allow_insecure_key_files.unwrap_or(false),
        pkcs11,
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
        lookup_budget,
        max_mta_connections,
        verify,
        online,
        encrypt,
        decrypt: raw.decrypt.enabled.unwrap_or(false),
        release_unauthenticated: raw.decrypt.release_unauthenticated.unwrap_or(false),
        harvest_dir,
        harvest_ldap,
        harvest_writes: true,
        metrics,
        header_protection,
        display,
        stats_interval: std::time::Duration::from_secs(raw.stats_interval.map_or(3600, |s| s.0)),
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
            capabilities,
            signing_time: raw.signing.signing_time.unwrap_or(SigningTime::Date),
            signing_time_window: raw.signing.signing_time_window.map_or(86400, |s| s.0),
            keys,
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
    })
}

fn online(loc: &Locator<'_>, o: RawOnline, budget: Duration) -> Result<Online, ConfigError> {
    let secs = |v: Option<Seconds>, default: u64| Duration::from_secs(v.map_or(default, |s| s.0));
    // The default fits any budget; a value set must fit the one set.
    let timeout = o.timeout.map_or(budget.min(Duration::from_secs(3)), |s| {
        Duration::from_secs(s.0)
    });
    if timeout.is_zero() || timeout > budget {
        return Err(loc.key_error(
            "timeout",
            format!("must be from 1 s to lookup_budget ({} s)", budget.as_secs()),
        ));
    }
    let max_response_size = o.max_response_size.map_or(10 << 20, |b| b.0);
    if !(1024..=(256 << 20)).contains(&max_response_size) {
        return Err(loc.key_error("max_response_size", "must be from 1K to 256M"));
    }
    let cache_entries = o.cache_entries.unwrap_or(10_000);
    if cache_entries == 0 {
        return Err(loc.key_error("cache_entries", "must be at least 1"));
    }
    let max_cache_age = secs(o.max_cache_age, 86_400);
    if max_cache_age.is_zero() || max_cache_age > Duration::from_secs(7 * 86_400) {
        return Err(loc.key_error("max_cache_age", "must be from 1 s to 7 d"));
    }
    let retry_after = secs(o.retry_after, 30);
    if retry_after.is_zero() || retry_after > Duration::from_secs(86_400) {
        return Err(loc.key_error("retry_after", "must be from 1 s to 1 d"));
    }
    let nets = |v: Option<Vec<Net>>| v.unwrap_or_default().into_iter().map(|n| n.0).collect();
    Ok(Online {
        revocation: o.revocation.unwrap_or(RevocationMode::Soft),
        ocsp: o.ocsp.unwrap_or(true),
        crl: o.crl_distribution_points.unwrap_or(true),
        aia: o.aia_issuers.unwrap_or(true),
        ocsp_nonce: o.ocsp_nonce.unwrap_or(false),
        timeout,
        max_response_size,
        cache_entries,
        max_cache_age,
        retry_after,
        allow_networks: nets(o.allow_networks),
        deny_networks: nets(o.deny_networks),
    })
}

fn rule_pattern(s: Option<String>) -> Option<String> {
    s.map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v != "*" && !v.is_empty())
}

fn encryption(
    loc: &Locator<'_>,
    e: RawEncrypt,
    ldap: Option<LdapConfig>,
    cache: RawCache,
    have_anchors: bool,
    harvesting: bool,
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
        Some(r) if *r.get_ref() && !have_anchors => {
            return Err(loc.error(
                r.span(),
                "needs trust anchors: set [verify] trust_anchors or trust_dir",
            ))
        }
        Some(r) => *r.get_ref(),
        None => false,
    };
    let lookup_order = match &e.lookup_order {
        None => {
            let mut o = vec![CertSource::Local];
            if harvesting {
                o.push(CertSource::Harvested);
            }
            if ldap.is_some() {
                o.push(CertSource::Ldap);
            }
            o
        }
        Some(list) => {
            let mut o = Vec::new();
            for s in list.get_ref() {
                o.push(match s.as_str() {
                    "local" => CertSource::Local,
                    "harvested" => CertSource::Harvested,
                    "ldap" if ldap.is_some() => CertSource::Ldap,
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
    let mut additional_recipients = Vec::new();
    for entry in e.additional_recipients {
        let v = entry.get_ref().trim();
        let value = if v.contains('/') {
            AdditionalRecipient::File(PathBuf::from(v))
        } else if crate::address::single_address(v).is_some_and(|a| a.eq_ignore_ascii_case(v)) {
            AdditionalRecipient::Address(v.to_ascii_lowercase())
        } else {
            return Err(loc.error(
                entry.span(),
                format!("invalid additional recipient '{v}' (expected a certificate file path or an address)"),
            ));
        };
        additional_recipients.push(Located {
            value,
            place: loc.place(entry.span()),
        });
    }
    Ok(Some(Encryption {
        cipher: e.cipher.unwrap_or(Cipher::Aes256Cbc),
        additional_recipients,
        default_mode,
        rules,
        missing_cert,
        refuse_at_rcpt: e.refuse_at_rcpt.unwrap_or(false),
        require_trusted,
        lookup_order,
        certs_dir: loc.located_opt(e.certs_dir),
        certs_map: loc.located_opt(e.certs_map),
        ldap,
        cache: CacheConfig {
            capacity: cache.capacity.unwrap_or(10_000),
            ttl: Duration::from_secs(cache.ttl.map_or(3600, |s| s.0)),
            negative_ttl: Duration::from_secs(cache.negative_ttl.map_or(300, |s| s.0)),
        },
    }))
}

/// Where verified signers' certificates go: a folder (one node), or the
/// directory (a fleet: every node's lookups find them).
fn harvest(
    loc: &Locator<'_>,
    h: RawHarvest,
    ldap: Option<&LdapConfig>,
) -> Result<(Option<PathBuf>, Option<DirectoryHarvest>), ConfigError> {
    let to_directory = match &h.store {
        None => false,
        Some(s) => match s.get_ref().as_str() {
            "folder" => false,
            "ldap" => true,
            other => {
                return Err(loc.error(
                    s.span(),
                    format!("unknown store '{other}' (expected folder or ldap)"),
                ))
            }
        },
    };
    if !h.enabled.unwrap_or(true) {
        return Ok((None, None));
    }
    if !to_directory {
        // A directory key without store = "ldap" would be silently unused.
        let directory_key = [
            h.ldap_base.as_ref().map(|s| s.span()),
            h.ldap_uris.as_ref().map(|s| s.span()),
            h.ldap_bind_password_file.as_ref().map(|s| s.span()),
            h.ldap_object_class.as_ref().map(|s| s.span()),
            h.max_pending.as_ref().map(|s| s.span()),
        ]
        .into_iter()
        .flatten()
        .next();
        if let Some(span) = directory_key {
            return Err(loc.error(span, "used with store = \"ldap\" only"));
        }
        if h.ldap_bind_dn.is_some() {
            return Err(loc.key_error("ldap_bind_dn", "used with store = \"ldap\" only"));
        }
        let dir = match h.dir {
            Some(d) => {
                if !d.get_ref().is_dir() {
                    return Err(loc.error(
                        d.span(),
                        format!("{} is not a directory", d.get_ref().display()),
                    ));
                }
                Some(d.into_inner())
            }
            // The default place is used when it exists (the packages create it).
            None => Some(PathBuf::from(DEFAULT_HARVEST_DIR)).filter(|d| d.is_dir()),
        };
        return Ok((dir, None));
    }
    let span = h.store.as_ref().map_or(0..0, |s| s.span());
    let Some(ldap) = ldap else {
        return Err(loc.error(
            span,
            "store = \"ldap\" needs an [ldap] section (where every node looks certificates up)",
        ));
    };
    let Some(base) = h.ldap_base else {
        return Err(loc.error(span, "store = \"ldap\" needs ldap_base"));
    };
    let base_dn = base.get_ref().trim().to_string();
    if !crate::ldap::dn_within(&base_dn, &ldap.base_dn) {
        return Err(loc.error(
            base.span(),
            format!(
                "{base_dn} is not within [ldap] base_dn {}: lookups would never find what is harvested",
                ldap.base_dn
            ),
        ));
    }
    let mut target = ldap.clone();
    if let Some(u) = h.ldap_uris {
        if !ldap_uris_valid(u.get_ref()) {
            return Err(loc.error(u.span(), "must list ldap:// or ldaps:// URIs"));
        }
        target.uris = u.into_inner();
    }
    match (h.ldap_bind_dn, h.ldap_bind_password_file) {
        (None, None) => {}
        (Some(dn), Some(pw)) => {
            target.bind_dn = Some(dn);
            target.bind_password_file = Some(loc.located(pw));
        }
        (Some(_), None) => {
            return Err(loc.key_error(
                "ldap_bind_dn",
                "needs ldap_bind_password_file (else the bind would be anonymous)",
            ))
        }
        (None, Some(pw)) => return Err(loc.error(pw.span(), "needs ldap_bind_dn")),
    }
    let max_pending = match h.max_pending {
        Some(n) if !(1..=100_000).contains(n.get_ref()) => {
            return Err(loc.error(n.span(), "must be 1 to 100000"))
        }
        Some(n) => n.into_inner(),
        None => 1000,
    };
    let contact = match &h.ldap_object_class {
        None => false,
        Some(c) => match c.get_ref().as_str() {
            "inetOrgPerson" => false,
            "contact" => true,
            other => {
                return Err(loc.error(
                    c.span(),
                    format!("unknown object class '{other}' (expected inetOrgPerson or contact)"),
                ))
            }
        },
    };
    Ok((
        None,
        Some(DirectoryHarvest {
            ldap: target,
            base_dn,
            max_pending,
            contact,
        }),
    ))
}

/// Fields a sender writes or a reader relies on: never our info header.
const NOT_INFO_HEADERS: [&str; 16] = [
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "received",
    "return-path",
    "authentication-results",
    "dkim-signature",
    "x-smime-decrypted",
    "hp-outer",
];

fn display(loc: &Locator<'_>, d: RawDisplay) -> Result<Display, ConfigError> {
    let template = |t: Option<Spanned<String>>| -> Result<Option<String>, ConfigError> {
        let Some(t) = t else { return Ok(None) };
        let v = t.get_ref();
        if v.is_empty() {
            return Ok(None);
        }
        if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(loc.error(
                t.span(),
                "printable ASCII only (no control characters, no line breaks)",
            ));
        }
        let mut rest = v.as_str();
        while let Some(i) = rest.find("%{") {
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                return Err(loc.error(t.span(), "unclosed %{"));
            };
            if !matches!(&after[..end], "result" | "signer") {
                return Err(loc.error(
                    t.span(),
                    format!(
                        "unknown placeholder %{{{}}} (known: %{{result}}, %{{signer}})",
                        &after[..end]
                    ),
                ));
            }
            rest = &after[end + 1..];
        }
        // The text around the placeholders is what finds a sender's copies:
        // with too little, any Subject would look like one.
        let literal = v
            .split("%{")
            .enumerate()
            .map(|(i, piece)| {
                if i == 0 {
                    piece
                } else {
                    piece.split_once('}').map_or("", |(_, r)| r)
                }
            })
            .flat_map(str::chars)
            .filter(|c| !c.is_whitespace())
            .count();
        if literal < 3 {
            return Err(loc.error(
                t.span(),
                "needs at least 3 characters of its own besides the placeholders",
            ));
        }
        Ok(Some(t.into_inner()))
    };
    let info = match (d.info_header, d.info_value) {
        (None, None) => None,
        (Some(n), v) => {
            let name = n.get_ref().trim();
            if name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
                || NOT_INFO_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                || crate::mime::is_content_field(name)
            {
                return Err(loc.error(
                    n.span(),
                    format!("'{name}' cannot be the info header (a field name of our own, e.g. X-SMIME-Verdict)"),
                ));
            }
            let value = template(v)?.unwrap_or_else(|| "%{result}".into());
            Some((name.to_string(), value))
        }
        (None, Some(v)) => return Err(loc.error(v.span(), "info_value needs info_header")),
    };
    Ok(Display {
        tag_pass: template(d.subject_tag_pass)?,
        tag_fail: template(d.subject_tag_fail)?,
        tag_other: template(d.subject_tag_other)?,
        tag_decrypted: template(d.subject_tag_decrypted)?,
        info,
    })
}

fn metrics(loc: &Locator<'_>, m: RawMetrics) -> Result<Option<Metrics>, ConfigError> {
    if !m.enabled.unwrap_or(false) {
        return Ok(None);
    }
    let listen = match m.listen {
        None => std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_METRICS_PORT)),
        Some(l) => l.get_ref().parse().map_err(|_| {
            loc.error(
                l.span(),
                format!(
                    "invalid address '{}' (expected IP:port, e.g. 127.0.0.1:{DEFAULT_METRICS_PORT} or [::1]:{DEFAULT_METRICS_PORT})",
                    l.get_ref()
                ),
            )
        })?,
    };
    Ok(Some(Metrics { listen }))
}

/// At least one URI, each ldap:// or ldaps://.
fn ldap_uris_valid(uris: &[String]) -> bool {
    !uris.is_empty()
        && uris
            .iter()
            .all(|u| u.starts_with("ldap://") || u.starts_with("ldaps://"))
}

fn ldap_config(loc: &Locator<'_>, l: Spanned<RawLdap>) -> Result<LdapConfig, ConfigError> {
    let span = l.span();
    let l = l.into_inner();
    if !ldap_uris_valid(&l.uris) {
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
    Ok(LdapConfig {
        uris: l.uris,
        starttls: l.starttls.unwrap_or(false),
        ca_file: loc.located_opt(l.ca_file),
        bind_dn: l.bind_dn,
        bind_password_file: loc.located_opt(l.bind_password_file),
        base_dn: l.base_dn,
        filter: l
            .filter
            .map(|f| f.into_inner())
            .unwrap_or_else(|| DEFAULT_LDAP_FILTER.to_string()),
        connect_timeout: Duration::from_secs(l.connect_timeout.map_or(5, |s| s.0)),
        search_timeout: Duration::from_secs(l.search_timeout.map_or(5, |s| s.0)),
        max_connections: match l.max_connections {
            Some(n) if *n.get_ref() == 0 => return Err(loc.error(n.span(), "must be at least 1")),
            Some(n) => n.into_inner(),
            None => 8,
        },
        // At most a day: added to every failure time.
        retry_after: Duration::from_secs(l.retry_after.map_or(30, |s| s.0).min(86_400)),
    })
}

fn pkcs11(loc: &Locator<'_>, p: RawPkcs11) -> Result<Pkcs11, ConfigError> {
    let pin = match (p.pin_file, p.pin_env) {
        (Some(f), None) => PinSource::File(loc.located(f)),
        (None, Some(v)) => PinSource::Env(loc.located(v)),
        _ => {
            return Err(loc.error(
                p.module.span(),
                "[pkcs11] needs exactly one of pin_file and pin_env",
            ))
        }
    };
    Ok(Pkcs11 {
        module: loc.located(p.module),
        pin,
    })
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

/// Every key the file accepts, as `table.key`, read from the structs that
/// parse it (serde lists each struct's fields): the man page and the
/// sample configuration are checked against it by tests.
pub fn known_keys() -> Vec<String> {
    // Tables, by the name they are written under, with their fields.
    let tables: [(&str, &[&str]); 15] = [
        ("signing", fields::<RawSigning>()),
        ("signing.key", fields::<RawKey>()),
        ("pkcs11", fields::<RawPkcs11>()),
        ("verify", fields::<RawVerify>()),
        ("online", fields::<RawOnline>()),
        ("decrypt", fields::<RawDecrypt>()),
        ("harvest", fields::<RawHarvest>()),
        ("encrypt", fields::<RawEncrypt>()),
        ("encrypt.policy", fields::<RawRule>()),
        ("ldap", fields::<RawLdap>()),
        ("cache", fields::<RawCache>()),
        ("actions", fields::<RawActions>()),
        ("metrics", fields::<RawMetrics>()),
        ("header_protection", fields::<RawHeaderProtection>()),
        ("display", fields::<RawDisplay>()),
    ];
    let is_table = |name: &str| tables.iter().any(|(t, _)| *t == name);
    let mut keys: Vec<String> = fields::<RawConfig>()
        .iter()
        .filter(|f| !is_table(f))
        .map(|f| f.to_string())
        .collect();
    for (table, fields) in tables {
        for f in fields {
            let key = format!("{table}.{f}");
            if !is_table(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// The field names serde's derive gives `deserialize_struct` for `T`.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

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
    fn directory_harvest_and_metrics_are_checked() {
        let ldap = "[ldap]\nuris = [\"ldap://127.0.0.1\"]\nbase_dn = \"dc=example,dc=com\"\n";
        let c = parse(&format!(
            "[harvest]\nstore = \"ldap\"\nldap_base = \"ou=Contacts, DC=example,dc=com\"\nldap_uris = [\"ldap://10.0.0.1\"]\n{ldap}"
        ))
        .unwrap();
        let h = c.harvest_ldap.expect("directory harvest");
        assert_eq!(
            (h.base_dn.as_str(), h.ldap.uris[0].as_str(), h.max_pending),
            ("ou=Contacts, DC=example,dc=com", "ldap://10.0.0.1", 1000)
        );
        assert!(c.harvest_dir.is_none() && c.metrics.is_none());
        let cases = [
            ("[harvest]\nstore = \"ldap\"\nldap_base = \"ou=c,dc=x\"\n", 2, "needs an [ldap] section"),
            (&format!("{ldap}[harvest]\nstore = \"ldap\"\n"), 5, "needs ldap_base"),
            (&format!("{ldap}[harvest]\nstore = \"ldap\"\nldap_base = \"ou=c,dc=example,dc=org\"\n"), 6, "not within [ldap] base_dn"),
            (&format!("{ldap}[harvest]\nstore = \"ldap\"\nldap_base = \"ou=c,dc=example,dc=com\"\nmax_pending = 0\n"), 7, "1 to 100000"),
            (&format!("{ldap}[harvest]\nstore = \"ldap\"\nldap_base = \"ou=c,dc=example,dc=com\"\nldap_uris = [\"http://x\"]\n"), 7, "ldap:// or ldaps://"),
            ("[harvest]\nstore = \"nfs\"\n", 2, "expected folder or ldap"),
            ("[harvest]\nldap_base = \"ou=c\"\n", 2, "store = \"ldap\" only"),
            ("[harvest]\nmax_pending = 5\n", 2, "store = \"ldap\" only"),
            (&format!("{ldap}[harvest]\nstore = \"ldap\"\nldap_base = \"ou=c,dc=example,dc=com\"\nldap_bind_dn = \"cn=x\"\n"), 7, "needs ldap_bind_password_file"),
            (&format!("{ldap}[harvest]\nstore = \"ldap\"\nldap_base = \"ou=c,dc=example,dc=com\"\nldap_object_class = \"person\"\n"), 7, "expected inetOrgPerson or contact"),
            (&format!("{ldap}[harvest]\nstore = \"ldap\"\nldap_base = \"ou=c,dc=example,dc=com\"\nmax_pending = 1000000\n"), 7, "1 to 100000"),
            ("[metrics]\nenabled = true\nlisten = \"localhost:9465\"\n", 3, "expected IP:port"),
        ];
        for (text, line, what) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.line == line && e.what.contains(what), "{text}: {e}");
        }
        let m = parse("[metrics]\nenabled = true\n")
            .unwrap()
            .metrics
            .unwrap();
        assert_eq!(m.listen.to_string(), "127.0.0.1:9465");
        let m = parse("[metrics]\nenabled = true\nlisten = \"[::1]:9100\"\n")
            .unwrap()
            .metrics
            .unwrap();
        assert_eq!(m.listen.to_string(), "[::1]:9100");
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
    fn places_are_found_in_crlf_files_and_at_the_last_line() {
        let e = parse("user = \"milter\"\r\n\r\nlog_level = \"loud\"").unwrap_err();
        assert_eq!(
            (e.line, e.what.contains("key 'log_level'")),
            (3, true),
            "{e}"
        );
        let c = parse("[verify]\r\ntrust_dir = \"/etc/ssl/certs\"\r\n").unwrap();
        let place = &c.verify.unwrap().trust_dir.unwrap().place;
        assert_eq!((place.line, place.key.as_deref()), (2, Some("trust_dir")));
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
    fn outbound_encoding_choices() {
        let c = parse("").unwrap();
        assert_eq!(c.signing.capabilities, Capability::DEFAULT.to_vec());
        assert_eq!(c.signing.signing_time, SigningTime::Date);
        assert_eq!(c.signing.signing_time_window, 86400);
        let c = parse("[signing]\ncapabilities = [\"aes-128-cbc\", \"rsaes-oaep\"]\nsigning_time = \"now\"\nsigning_time_window = \"2d\"\n").unwrap();
        assert_eq!(
            c.signing.capabilities,
            vec![Capability::Cipher(Cipher::Aes128Cbc), Capability::RsaesOaep]
        );
        assert_eq!(c.signing.signing_time, SigningTime::Now);
        assert_eq!(c.signing.signing_time_window, 2 * 86400);
        assert!(parse("[signing]\ncapabilities = []\n")
            .unwrap()
            .signing
            .capabilities
            .is_empty());
        for (text, line, what) in [
            (
                "[signing]\ncapabilities = [\"des-cbc\"]\n",
                2,
                "invalid capability 'des-cbc'",
            ),
            (
                "[signing]\n\ncapabilities = [\"aes-128-cbc\", \"aes-128-cbc\"]\n",
                3,
                "listed twice",
            ),
            (
                "[signing]\nsigning_time = \"later\"\n",
                2,
                "expected date or now",
            ),
            (
                "[signing]\nsigning_time_window = \"31d\"\n",
                2,
                "at most 30 days",
            ),
            (
                "[encrypt]\ndefault_policy = \"required\"\nadditional_recipients = [\"archive\"]\n",
                3,
                "invalid additional recipient 'archive'",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.what.contains(what), "{text}: {e}");
        }
        let c = parse("[encrypt]\ndefault_policy = \"required\"\nadditional_recipients = [\"/etc/escrow.pem\", \"Archive@Example.com\"]\n").unwrap();
        let got: Vec<AdditionalRecipient> = c
            .encrypt
            .unwrap()
            .additional_recipients
            .into_iter()
            .map(|a| a.value)
            .collect();
        assert_eq!(
            got,
            vec![
                AdditionalRecipient::File("/etc/escrow.pem".into()),
                AdditionalRecipient::Address("archive@example.com".into())
            ]
        );
    }

    #[test]
    fn online_checks_default_to_soft_and_public_networks_only() {
        let o = parse("").unwrap().online;
        assert_eq!(o.revocation, RevocationMode::Soft);
        assert!(o.ocsp && o.crl && o.aia && !o.ocsp_nonce && o.fetches());
        assert!(o.allow_networks.is_empty() && o.deny_networks.is_empty());
        assert_eq!(o.timeout, Duration::from_secs(3));
        let c = parse("lookup_budget = \"2s\"\n").unwrap();
        assert_eq!(c.online.timeout, Duration::from_secs(2));
        let o = parse(
            "[online]\nrevocation = \"off\"\naia_issuers = false\n\
             allow_networks = [\"127.0.0.1\", \"10.0.0.0/8\"]\nmax_response_size = \"2M\"\n",
        )
        .unwrap()
        .online;
        assert!(!o.fetches());
        assert_eq!(o.allow_networks.len(), 2);
        assert_eq!(o.max_response_size, 2 << 20);
        for (text, line, what) in [
            (
                "[online]\nrevocation = \"strict\"\n",
                2,
                "expected off, soft or hard",
            ),
            (
                "lookup_budget = \"5s\"\n[online]\ntimeout = \"6s\"\n",
                3,
                "lookup_budget (5 s)",
            ),
            ("[online]\nmax_response_size = 10\n", 2, "from 1K to 256M"),
            ("[online]\nmax_cache_age = \"30d\"\n", 2, "from 1 s to 7 d"),
            (
                "[online]\nallow_networks = [\"everywhere\"]\n",
                2,
                "invalid network",
            ),
            ("[online]\ncache_entries = 0\n", 2, "at least 1"),
            ("[online]\nretry_after = \"2d\"\n", 2, "from 1 s to 1 d"),
            ("[online]\nretry_after = 0\n", 2, "from 1 s to 1 d"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.what.contains(what), "{text}: {e}");
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
    fn verification_is_on_only_with_trust_anchors() {
        let c = parse("").unwrap();
        assert!(c.verify.is_none());
        let e = parse("[verify]\nenabled = true\n").unwrap_err();
        assert!(e.what.contains("needs trust_anchors or trust_dir"), "{e}");
        let c = parse("[verify]\nallow_sha1 = true\ntrust_anchors = \"/etc/roots.pem\"\n").unwrap();
        let v = c.verify.unwrap();
        assert!(v.allow_sha1);
        assert_eq!(v.trust_anchors.unwrap().place.line, 3);
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
    fn the_key_list_is_what_the_parser_accepts() {
        let keys = known_keys();
        assert!(keys.len() > 60 && keys.iter().any(|k| k == "encrypt.policy.mode"));
        assert!(!keys.iter().any(|k| k == "signing" || k == "signing.key"));
        for key in &keys {
            // Set alone to a value of the wrong type: the parser must name a
            // type problem, never an unknown key.
            let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            let text = match table {
                "" => format!("{leaf} = []\n"),
                "signing.key" | "encrypt.policy" => format!("[[{table}]]\n{leaf} = []\n"),
                _ => format!("[{table}]\n{leaf} = []\n"),
            };
            if let Err(e) = toml::from_str::<RawConfig>(&text) {
                assert!(!e.message().contains("unknown field"), "{key}: {e}");
            }
        }
        let e = toml::from_str::<RawConfig>("[verify]\nbogus = []\n")
            .err()
            .unwrap();
        assert!(e.message().contains("unknown field"), "{e}");
    }

    #[test]
    fn every_known_key_is_in_the_sample_config() {
        let sample = include_str!("../../contrib/smime-milter.toml");
        for key in known_keys() {
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
