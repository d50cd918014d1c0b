//! Certificate facts that the stores and the S/MIME operations share: a
//! certificate's addresses, usages, validity and chain to the trust anchors,
//! how logs and headers name it, and the content ciphers S/MIME knows. It
//! sits below both, so neither has to reach into the other.

use crate::ffi::X509_STORE_CTX_get0_param;
use foreign_types::ForeignTypeRef;
use openssl::nid::Nid;
use openssl::stack::Stack;
use openssl::symm;
use openssl::x509::store::X509StoreRef;
use openssl::x509::{X509Ref, X509StoreContext, X509VerifyResult, X509};
use std::str::FromStr;

/// The signer's addresses: subjectAltName rfc822Names, else the subject's
/// emailAddress (RFC 8550 §3).
pub fn cert_addresses(cert: &X509Ref) -> Vec<String> {
    let mut v: Vec<String> = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.email().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if v.is_empty() {
        v = cert
            .subject_name()
            .entries_by_nid(Nid::PKCS9_EMAILADDRESS)
            .filter_map(|e| e.data().to_string().ok())
            .collect();
    }
    v
}

/// RFC 4514 form of a name, most significant last as written there.
pub fn rfc4514(name: &openssl::x509::X509NameRef) -> String {
    let mut parts: Vec<String> = name
        .entries()
        .map(|e| {
            let key = e
                .object()
                .nid()
                .short_name()
                .map(str::to_string)
                .unwrap_or_else(|_| e.object().to_string());
            let val = e.data().to_string().unwrap_or_default();
            let mut esc = String::with_capacity(val.len());
            for (i, c) in val.chars().enumerate() {
                if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
                    || (i == 0 && (c == '#' || c == ' '))
                {
                    esc.push('\\');
                    esc.push(c);
                } else if c.is_ascii_graphic() || c == ' ' {
                    esc.push(c);
                } else {
                    // RFC 4514 hexpairs: the name stays ASCII, and no
                    // certificate can put a line break into our header.
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        esc.push_str(&format!("\\{b:02X}"));
                    }
                }
            }
            if esc.ends_with(' ') {
                esc.insert(esc.len() - 1, '\\');
            }
            format!("{key}={esc}")
        })
        .collect();
    parts.reverse();
    parts.join(",")
}

/// A certificate's serial number in hex, as logs and headers show it.
pub fn serial_hex(cert: &X509Ref) -> Option<String> {
    cert.serial_number()
        .to_bn()
        .ok()
        .and_then(|b| b.to_hex_str().ok().map(|s| s.to_string()))
}

/// Whether the certificate is valid right now.
pub fn valid_now(cert: &openssl::x509::X509Ref) -> bool {
    let Ok(now) = openssl::asn1::Asn1Time::days_from_now(0) else {
        return false;
    };
    cert.not_before() <= now && cert.not_after() >= now
}

/// Why a chain did not verify.
pub enum ChainError {
    /// OpenSSL could not run the check (memory, say): no verdict.
    Internal(openssl::error::ErrorStack),
    /// The chain is invalid, for this reason, found at this certificate
    /// (for a missing issuer: the one whose issuer is missing).
    Invalid(X509VerifyResult, Option<X509>),
}

/// Chain to a trust anchor, valid at `at` (Unix time; None = now); the
/// verified chain, leaf to anchor.
pub fn verify_chain(
    store: &X509StoreRef,
    cert: &X509Ref,
    certs: &[X509],
    at: Option<i64>,
) -> Result<Vec<X509>, ChainError> {
    let mut chain = Stack::new().map_err(ChainError::Internal)?;
    for c in certs {
        chain.push(c.clone()).map_err(ChainError::Internal)?;
    }
    let mut sctx = X509StoreContext::new().map_err(ChainError::Internal)?;
    let (result, chain, at_cert) = sctx
        .init(store, cert, &chain, |c| {
            if let Some(t) = at {
                // SAFETY: the parameters of the live context, set before verifying.
                unsafe {
                    let param = X509_STORE_CTX_get0_param(c.as_ptr());
                    openssl_sys::X509_VERIFY_PARAM_set_time(param, t as libc::time_t);
                }
            }
            let ok = c.verify_cert()?;
            let chain: Vec<X509> = c
                .chain()
                .map(|s| s.iter().map(|x| x.to_owned()).collect())
                .unwrap_or_default();
            Ok(if ok {
                (X509VerifyResult::OK, chain, None)
            } else {
                (c.error(), chain, c.current_cert().map(|x| x.to_owned()))
            })
        })
        .map_err(ChainError::Internal)?;
    if result == X509VerifyResult::OK {
        Ok(chain)
    } else {
        Err(ChainError::Invalid(result, at_cert))
    }
}

/// Certificates in a file or HTTP answer: PEM certificates, one DER
/// certificate, or a PKCS#7 certs-only bundle (`.p7b`/`.p7c`, as AD CS,
/// Windows and CAs' AIA URLs give them) in DER or PEM.
pub fn certs_from_bytes(data: &[u8]) -> Result<Vec<X509>, &'static str> {
    use openssl::pkcs7::Pkcs7;
    let p7 = if memchr::memmem::find(data, b"-----BEGIN PKCS7-----").is_some() {
        Some(Pkcs7::from_pem(data).map_err(|_| "unreadable PEM PKCS#7 bundle")?)
    } else if memchr::memmem::find(data, b"-----BEGIN ").is_some() {
        return X509::stack_from_pem(data).map_err(|_| "unreadable PEM certificates");
    } else if let Ok(c) = X509::from_der(data) {
        return Ok(vec![c]);
    } else {
        Some(Pkcs7::from_der(data).map_err(|_| "neither a certificate nor a PKCS#7 bundle")?)
    };
    let certs = p7
        .as_ref()
        .and_then(|p| p.signed())
        .and_then(|s| s.certificates())
        .map(|st| st.iter().map(|c| c.to_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    Ok(certs)
}

/// An ASN.1 time as a Unix time.
pub fn unix_time(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(d.days as i64 * 86400 + d.secs as i64)
}

/// Whether the certificate chains to the anchors now (intermediates from `certs`).
pub fn chain_ok(store: &X509StoreRef, cert: &X509Ref, certs: &[X509]) -> bool {
    verify_chain(store, cert, certs, None).is_ok()
}

pub(crate) const KU_DIGITAL_SIGNATURE: u32 = 0x80;
pub(crate) const KU_NON_REPUDIATION: u32 = 0x40;
pub(crate) const KU_KEY_ENCIPHERMENT: u32 = 0x20;
pub(crate) const KU_KEY_AGREEMENT: u32 = 0x08;
const XKU_SMIME: u32 = 0x4;
const XKU_ANYEKU: u32 = 0x100;
const EXFLAG_KUSAGE: u32 = 0x2;
const EXFLAG_XKUSAGE: u32 = 0x4;

/// What a certificate's key usage extensions allow (RFC 5280 §4.2.1.3,
/// §4.2.1.12): an absent extension allows everything.
pub(crate) struct Usage {
    /// keyUsage allows one of the bits asked for.
    pub key_usage: bool,
    /// extendedKeyUsage allows email protection.
    pub email: bool,
}

pub(crate) fn usage(cert: &X509Ref, any_key_usage: u32) -> Usage {
    // SAFETY: getters on a live certificate (they cache its extensions).
    let (flags, ku, xku) = unsafe {
        let p = cert.as_ptr();
        (
            openssl_sys::X509_get_extension_flags(p),
            openssl_sys::X509_get_key_usage(p),
            openssl_sys::X509_get_extended_key_usage(p),
        )
    };
    Usage {
        key_usage: flags & EXFLAG_KUSAGE == 0 || ku & any_key_usage != 0,
        email: flags & EXFLAG_XKUSAGE == 0 || xku & (XKU_SMIME | XKU_ANYEKU) != 0,
    }
}

/// A PKCS#7 certs-only SignedData (DER) holding `certs`: the form of
/// `userSMIMECertificate` (and of a `.p7b`), built as RFC 2315 §9.1 and
/// RFC 5652 §5.1 describe a degenerate SignedData.
pub fn certs_only_pkcs7(certs: &[X509]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }
    // 1.2.840.113549.1.7.2 (signedData) and .1 (data).
    const SIGNED_DATA: &[u8] = &[
        0x06, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
    ];
    const DATA: &[u8] = &[
        0x06, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01,
    ];
    let mut der_certs = Vec::new();
    for c in certs {
        der_certs.extend(c.to_der()?);
    }
    let mut signed = vec![0x02, 1, 1];
    signed.extend(tlv(0x31, &[]));
    signed.extend(tlv(0x30, DATA));
    signed.extend(tlv(0xa0, &der_certs));
    signed.extend(tlv(0x31, &[]));
    let mut info = SIGNED_DATA.to_vec();
    info.extend(tlv(0xa0, &tlv(0x30, &signed)));
    Ok(tlv(0x30, &info))
}

/// The signer of a verified layer, kept for harvesting.
#[derive(Debug, Clone)]
pub struct SignerCert {
    pub cert: X509,
    /// The other certificates the message carried (its chain).
    pub chain: Vec<X509>,
    /// The signed SMIMECapabilities attribute, DER, if present.
    pub caps: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes128Cbc,
    Aes256Cbc,
    Aes128Gcm,
    Aes256Gcm,
}

impl Cipher {
    pub(crate) fn symm(self) -> symm::Cipher {
        match self {
            Cipher::Aes128Cbc => symm::Cipher::aes_128_cbc(),
            Cipher::Aes256Cbc => symm::Cipher::aes_256_cbc(),
            Cipher::Aes128Gcm => symm::Cipher::aes_128_gcm(),
            Cipher::Aes256Gcm => symm::Cipher::aes_256_gcm(),
        }
    }

    pub(crate) fn authenticated(self) -> bool {
        matches!(self, Cipher::Aes128Gcm | Cipher::Aes256Gcm)
    }

    /// The algorithm's OID as DER (tag, length, value): NIST's AES arc,
    /// 2.16.840.1.101.3.4.1 (RFC 3565, RFC 5084).
    pub fn oid_der(self) -> &'static [u8] {
        match self {
            Cipher::Aes128Cbc => &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02,
            ],
            Cipher::Aes256Cbc => &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a,
            ],
            Cipher::Aes128Gcm => &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x06,
            ],
            Cipher::Aes256Gcm => &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2e,
            ],
        }
    }
}

impl FromStr for Cipher {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aes-128-cbc" => Ok(Cipher::Aes128Cbc),
            "aes-256-cbc" => Ok(Cipher::Aes256Cbc),
            "aes-128-gcm" => Ok(Cipher::Aes128Gcm),
            "aes-256-gcm" => Ok(Cipher::Aes256Gcm),
            _ => Err(format!("invalid cipher '{s}' (expected aes-128-cbc, aes-256-cbc, aes-128-gcm or aes-256-gcm)")),
        }
    }
}

/// A self-signed EC P-256 certificate for `cn`, valid for a day, with its
/// key: what the unit tests need of a certificate.
#[cfg(test)]
pub(crate) fn test_self_signed(cn: &str) -> (X509, openssl::pkey::PKey<openssl::pkey::Private>) {
    use openssl::ec::{EcGroup, EcKey};
    let g = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = openssl::pkey::PKey::from_ec_key(EcKey::generate(&g).unwrap()).unwrap();
    let mut name = openssl::x509::X509Name::builder().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    (b.build(), key)
}
