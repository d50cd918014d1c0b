//! The value types with a syntax of their own; their parse errors land on
//! the value's line.

use crate::pki::Cipher;
use ipnet::IpNet;
use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

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

/// One entry of the SMIMECapabilities we sign (RFC 8551 §2.5.2): what we
/// accept from correspondents, in our order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Cipher(Cipher),
    /// RSAES-OAEP key transport (RFC 8017), SHA-256 and MGF1-SHA-256.
    RsaesOaep,
    /// RSASSA-PSS signatures (RFC 4056), SHA-256 and MGF1-SHA-256.
    RsassaPss,
}

impl Capability {
    /// What we announce unless told otherwise: strongest first.
    pub const DEFAULT: [Capability; 6] = [
        Capability::Cipher(Cipher::Aes256Gcm),
        Capability::Cipher(Cipher::Aes128Gcm),
        Capability::Cipher(Cipher::Aes256Cbc),
        Capability::Cipher(Cipher::Aes128Cbc),
        Capability::RsaesOaep,
        Capability::RsassaPss,
    ];
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rsaes-oaep" => Ok(Capability::RsaesOaep),
            "rsassa-pss" => Ok(Capability::RsassaPss),
            _ => s.parse().map(Capability::Cipher).map_err(|_| {
                format!("invalid capability '{s}' (expected aes-256-gcm, aes-128-gcm, aes-256-cbc, aes-128-cbc, rsaes-oaep or rsassa-pss)")
            }),
        }
    }
}

/// The signingTime we sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningTime {
    /// The message's Date when it lies within the window before now (a
    /// message held in an outbox), else now: the signature then says when
    /// the author sent it, as a client signing at send time would.
    Date,
    /// Always the gateway's clock.
    Now,
}

impl FromStr for SigningTime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "date" => Ok(SigningTime::Date),
            "now" => Ok(SigningTime::Now),
            _ => Err(format!("invalid signing_time '{s}' (expected date or now)")),
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
pub(super) fn from_str_de<'de, D, T>(d: D) -> Result<T, D::Error>
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
pub(super) fn quantity_de<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
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
/// What an unanswered revocation question makes of a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationMode {
    /// No OCSP or CRL fetches.
    Off,
    /// Unknown status: the certificate is used (inbound: pass with a comment).
    Soft,
    /// Unknown status: temperror inbound, not used outbound.
    Hard,
}

impl FromStr for RevocationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(RevocationMode::Off),
            "soft" => Ok(RevocationMode::Soft),
            "hard" => Ok(RevocationMode::Hard),
            _ => Err(format!(
                "invalid revocation '{s}' (expected off, soft or hard)"
            )),
        }
    }
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
    RevocationMode,
    FailAction,
    SignFormat,
    Digest,
    Cipher,
    EncryptMode,
    Capability,
    SigningTime
);

/// An address or CIDR network in `internal_hosts`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Net(pub IpNet);

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
