//! What the checks of a signed layer share: the result and verdict they
//! build, the settings and context they read, the signer they look at.

use crate::online::Online;
use crate::pki::SignerCert;
use crate::truststore::TrustStore;
use openssl::nid::Nid;
use openssl::x509::X509;
use std::fmt;

/// RFC 7281 / RFC 8601 result values, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SmimeResult {
    Pass,
    Neutral,
    Policy,
    Temperror,
    Fail,
    Permerror,
}

impl SmimeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            SmimeResult::Pass => "pass",
            SmimeResult::Neutral => "neutral",
            SmimeResult::Policy => "policy",
            SmimeResult::Temperror => "temperror",
            SmimeResult::Fail => "fail",
            SmimeResult::Permerror => "permerror",
        }
    }
}

impl fmt::Display for SmimeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one signed layer, with what the header reports.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub result: SmimeResult,
    /// Short reason, shown as the header comment.
    pub reason: Option<String>,
    /// The signer's address (body.smime-identifier).
    pub identifier: Option<String>,
    /// The MIME part the signature covers (body.smime-part).
    pub part: String,
    /// Serial number (hex) and issuer (RFC 4514) of the signer certificate.
    pub serial: Option<String>,
    pub issuer: Option<String>,
    pub signer: Option<SignerCert>,
    /// The protected header section of the signed payload (RFC 9788).
    pub protected: Option<crate::protected::Protected>,
}

impl Verdict {
    pub fn error(result: SmimeResult, part: &str, reason: impl Into<String>) -> Verdict {
        Verdict {
            signer: None,
            protected: None,
            result,
            reason: Some(reason.into()),
            identifier: None,
            part: part.to_string(),
            serial: None,
            issuer: None,
        }
    }
}

/// Verification settings from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub min_rsa_bits: u32,
    pub allow_sha1: bool,
    /// Largest accepted distance between Date: and signingTime, seconds; 0 = no check.
    pub max_date_skew: i64,
    pub max_depth: usize,
    pub max_parts: usize,
}

/// The From a reader sees, as far as the signer must match it.
#[derive(Debug, Clone, Copy)]
pub enum FromView<'a> {
    /// One mailbox, unambiguous: the signer must hold this address.
    One(&'a str),
    /// No identity a signer could match; the reason becomes the verdict's.
    Unusable {
        /// The mailbox address, when there is one (for the identifier).
        address: Option<&'a str>,
        why: &'a str,
    },
}

impl<'a> FromView<'a> {
    pub fn address(&self) -> Option<&'a str> {
        match *self {
            FromView::One(a) => Some(a),
            FromView::Unusable { address, .. } => address,
        }
    }
}

/// What a verification looks at besides the signed bytes.
pub struct Context<'a> {
    pub trust: &'a TrustStore,
    pub settings: &'a Settings,
    /// The outer From, which the signer must match.
    pub from: FromView<'a>,
    /// The Date: header as a Unix time.
    pub date: Option<i64>,
    /// "Now", as a Unix time (fixed in tests).
    pub now: Option<i64>,
    /// Revocation status and missing intermediates, when configured.
    pub online: Option<&'a Online>,
    /// When the message's lookups must have ended.
    pub deadline: std::time::Instant,
}

/// One SignerInfo, as the certificate checks need it.
pub(crate) struct SignerInfo {
    pub(crate) cert: Option<X509>,
    pub(crate) digest: Nid,
    pub(crate) signing_time: Option<i64>,
    pub(crate) caps: Option<Vec<u8>>,
}
