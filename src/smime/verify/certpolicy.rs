//! The signer certificate: chain to the trust anchors, validity now and at
//! signing time, key usage, weak crypto anywhere in the chain, and the
//! match with the From a reader sees.

use super::verdict::{Context, FromView, SignerInfo, SmimeResult, Verdict};
use crate::address;
use crate::config::RevocationMode;
use crate::online::{self, ChainFailure, Status};
use crate::pki::{
    cert_addresses, rfc4514, serial_hex, usage, SignerCert, KU_DIGITAL_SIGNATURE,
    KU_NON_REPUDIATION,
};
use openssl::nid::Nid;
use openssl::pkey::Id;
use openssl::x509::{X509Ref, X509};

/// Fills in who signed: the address matching From (or the first), serial
/// and issuer. A failure names its signer too. Whether the certificate
/// holds the From address.
pub(super) fn identify_signer(ctx: &Context<'_>, v: &mut Verdict, cert: &X509Ref) -> bool {
    let addresses = cert_addresses(cert);
    let matching = ctx
        .from
        .address()
        .and_then(|f| addresses.iter().find(|a| address::same_address(a, f)));
    v.identifier = matching.or(addresses.first()).cloned();
    v.serial = serial_hex(cert);
    v.issuer = Some(rfc4514(cert.issuer_name()));
    matching.is_some()
}

pub(super) fn evaluate_signer(
    ctx: &Context<'_>,
    si: &SignerInfo,
    certs: &[X509],
    part: &str,
) -> Verdict {
    let Some(cert) = &si.cert else {
        return Verdict::error(SmimeResult::Permerror, part, "signer certificate missing");
    };
    let mut v = Verdict {
        protected: None,
        result: SmimeResult::Pass,
        reason: None,
        identifier: None,
        part: part.to_string(),
        serial: None,
        issuer: None,
        signer: Some(SignerCert {
            cert: cert.clone(),
            chain: certs
                .iter()
                .filter(|c| c.to_der().ok() != cert.to_der().ok())
                .cloned()
                .collect(),
            caps: si.caps.clone(),
        }),
    };
    // Only an unambiguous From can be matched.
    let matches_from = identify_signer(ctx, &mut v, cert) && matches!(ctx.from, FromView::One(_));
    let mut set = |result: SmimeResult, reason: String| {
        v.result = result;
        v.reason = Some(reason);
    };
    let chain = match check_chain(ctx, cert, certs) {
        Ok(chain) => chain,
        Err((r, why)) => {
            set(r, why);
            return v;
        }
    };
    // Responders answer for the present: a check at a fixed time asks none.
    if let (Some(online), None) = (ctx.online, ctx.now) {
        match online.chain_status(&chain, &ctx.trust.store, ctx.deadline) {
            Status::Good => {}
            Status::Revoked(why) => {
                set(SmimeResult::Fail, why);
                return v;
            }
            Status::OutOfTime => {
                set(
                    SmimeResult::Temperror,
                    "lookup time budget spent before revocation was checked".into(),
                );
                return v;
            }
            Status::Unknown(_) if online.mode() == RevocationMode::Hard => {
                set(SmimeResult::Temperror, "revocation status unknown".into());
                return v;
            }
            // Soft: a pass says so (a later check's reason replaces it).
            Status::Unknown(_) => set(SmimeResult::Pass, "revocation status unknown".into()),
        }
    }
    // The chain that is valid now was valid at signing time too if every
    // certificate in it was within its validity then: no second path
    // building and no second round of signature checks.
    if let Some(t) = si.signing_time {
        if let Err(why) = valid_at(&chain, t) {
            set(SmimeResult::Fail, format!("{why} at signing time"));
            return v;
        }
    }
    if let Err(why) = check_usage(cert) {
        set(SmimeResult::Fail, why.into());
        return v;
    }
    if let Some(name) = weak_digest(si.digest, ctx.settings.allow_sha1) {
        set(SmimeResult::Policy, format!("weak digest {name}"));
        return v;
    }
    if let Some(why) = weak_chain(&chain, ctx.settings.min_rsa_bits, ctx.settings.allow_sha1) {
        set(SmimeResult::Policy, why);
        return v;
    }
    match ctx.from {
        FromView::Unusable { why, .. } => {
            set(SmimeResult::Policy, why.to_string());
            return v;
        }
        FromView::One(_) if !matches_from => {
            set(SmimeResult::Policy, "signer not From".into());
            return v;
        }
        FromView::One(_) => {}
    }
    if let (Some(date), Some(signed), skew) =
        (ctx.date, si.signing_time, ctx.settings.max_date_skew)
    {
        if skew > 0 && (date - signed).abs() > skew {
            set(SmimeResult::Policy, "signing time far from Date".into());
            return v;
        }
    }
    v
}

/// A digest no signature may rest on: MD5 and older, SHA-1 unless allowed.
fn weak_digest(digest: Nid, allow_sha1: bool) -> Option<String> {
    let weak = matches!(digest, Nid::MD5 | Nid::MD4 | Nid::MD2 | Nid::MD5_SHA1)
        || (digest == Nid::SHA1 && !allow_sha1);
    weak.then(|| digest.short_name().unwrap_or("?").to_ascii_lowercase())
}

/// Only the named curves S/MIME uses (RFC 8551 §2.2, RFC 5639): a
/// 256-bit curve outside them (secp256k1) is no floor either.
fn weak_curve(pk: &openssl::pkey::PKeyRef<openssl::pkey::Public>) -> Option<String> {
    let curve = pk.ec_key().ok().and_then(|k| k.group().curve_name());
    let ok = matches!(
        curve,
        Some(
            Nid::X9_62_PRIME256V1
                | Nid::SECP384R1
                | Nid::SECP521R1
                | Nid::BRAINPOOL_P256R1
                | Nid::BRAINPOOL_P320R1
                | Nid::BRAINPOOL_P384R1
                | Nid::BRAINPOOL_P512R1
        )
    );
    (!ok).then(|| match curve.and_then(|c| c.short_name().ok()) {
        Some(name) => format!("EC curve {name}"),
        None => "EC curve unnamed".into(),
    })
}

/// Weak crypto anywhere in a verified chain (leaf to anchor): every key
/// that signs (the anchor's included) and every certificate signature
/// but the anchor's own, which configuration trusts, not its signature.
fn weak_chain(chain: &[X509], min_rsa_bits: u32, allow_sha1: bool) -> Option<String> {
    for (i, c) in chain.iter().enumerate() {
        let Ok(pk) = c.public_key() else {
            return Some("unreadable public key".into());
        };
        let bits = pk.bits();
        let weak_key = match pk.id() {
            Id::RSA | Id::RSA_PSS => (bits < min_rsa_bits).then(|| format!("RSA {bits} bits")),
            Id::DSA => Some("DSA".into()),
            Id::EC => weak_curve(&pk),
            Id::ED25519 | Id::ED448 => None,
            _ => Some("unknown key type".into()),
        };
        if let Some(k) = weak_key {
            let whose = if i == 0 { "" } else { " in chain" };
            return Some(format!("weak key{whose}: {k}"));
        }
        if i + 1 < chain.len() {
            let digest = c
                .signature_algorithm()
                .object()
                .nid()
                .signature_algorithms()
                .map(|a| a.digest);
            if let Some(name) = digest.and_then(|d| weak_digest(d, allow_sha1)) {
                return Some(format!("weak certificate signature {name}"));
            }
        }
    }
    None
}

/// Whether every certificate of a verified chain was valid at `t`.
fn valid_at(chain: &[X509], t: i64) -> Result<(), &'static str> {
    let at = openssl::asn1::Asn1Time::from_unix(t as libc::time_t)
        .map_err(|_| "signing time out of range")?;
    for c in chain {
        if c.not_before() > at {
            return Err("certificate not yet valid");
        }
        if c.not_after() < at {
            return Err("certificate expired");
        }
    }
    Ok(())
}

/// Chain to a trust anchor, valid at the context's time; the verified
/// chain, leaf to anchor. A missing issuer is fetched from the caIssuers
/// URL of the certificate that names it, when that is configured.
fn check_chain(
    ctx: &Context<'_>,
    cert: &X509Ref,
    certs: &[X509],
) -> Result<Vec<X509>, (SmimeResult, String)> {
    let store = &ctx.trust.store;
    match online::build_chain(ctx.online, store, cert, certs, ctx.now, ctx.deadline) {
        Ok(chain) => Ok(chain),
        Err(ChainFailure::Internal(e)) => Err((SmimeResult::Temperror, e.to_string())),
        Err(ChainFailure::Invalid(result)) => Err(reason_for(result)),
        Err(ChainFailure::NotFetched(e)) => {
            let r = if e.transient() {
                SmimeResult::Temperror
            } else {
                SmimeResult::Fail
            };
            Err((r, format!("issuer certificate not fetched: {e}")))
        }
    }
}

/// The verdict for an invalid chain.
fn reason_for(result: openssl::x509::X509VerifyResult) -> (SmimeResult, String) {
    use openssl_sys as s;
    match result.as_raw() {
        s::X509_V_ERR_CERT_HAS_EXPIRED => (SmimeResult::Fail, "certificate expired".to_string()),
        s::X509_V_ERR_CERT_NOT_YET_VALID => {
            (SmimeResult::Fail, "certificate not yet valid".to_string())
        }
        s::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        | s::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        | s::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        | s::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        | s::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE => {
            (SmimeResult::Fail, "untrusted issuer".to_string())
        }
        s::X509_V_ERR_CERT_REVOKED => (SmimeResult::Fail, "certificate revoked".to_string()),
        s::X509_V_ERR_UNABLE_TO_GET_CRL => {
            (SmimeResult::Temperror, "no CRL for issuer".to_string())
        }
        s::X509_V_ERR_CRL_HAS_EXPIRED => (SmimeResult::Temperror, "CRL expired".to_string()),
        _ => (
            SmimeResult::Fail,
            format!("certificate invalid: {}", result.error_string()),
        ),
    }
}

/// keyUsage allows signing; extendedKeyUsage absent or allows email.
fn check_usage(cert: &X509Ref) -> Result<(), &'static str> {
    let u = usage(cert, KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION);
    if !u.key_usage {
        return Err("key usage does not allow signing");
    }
    if !u.email {
        return Err("certificate not for email protection");
    }
    Ok(())
}
