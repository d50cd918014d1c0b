//! S/MIME decryption at the gateway (RFC 8551 §3.3) with the keys we hold
//! for local recipients. All or nothing: a padding or tag failure is a
//! failure, never partial plaintext (EFAIL).

use crate::ffi::{
    CMS_RecipientEncryptedKey_cert_cmp, CMS_RecipientInfo_kari_get0_reks,
    CMS_RecipientInfo_ktri_cert_cmp, CMS_RecipientInfo_type, CMS_get0_RecipientInfos,
    CMS_get0_type,
};
use crate::keystore::SigningKey;
use openssl::cms::CmsContentInfo;
use openssl::nid::Nid;
use std::sync::Arc;

#[derive(Debug)]
pub enum Decryption {
    Decrypted {
        /// The plaintext MIME entity.
        plaintext: Vec<u8>,
        /// The key table entry that decrypted it.
        key: String,
        /// enveloped-data or authEnveloped-data.
        kind: &'static str,
    },
    /// No RecipientInfo is for a key we hold.
    NotForUs,
    Failed(String),
}

const CMS_RECIPINFO_TRANS: std::ffi::c_int = 0;
const CMS_RECIPINFO_AGREE: std::ffi::c_int = 1;

/// Whether a RecipientInfo names this certificate: key transport by issuer
/// and serial or by subjectKeyIdentifier, or key agreement (EC) likewise.
fn addressed_to(cms: &CmsContentInfo, cert: &openssl::x509::X509) -> bool {
    use foreign_types::ForeignType;
    // SAFETY: getters on a live ContentInfo and its recipient infos; every
    // pointer is checked for null and only read while `cms` lives.
    unsafe {
        let ris = CMS_get0_RecipientInfos(cms.as_ptr());
        if ris.is_null() {
            return false;
        }
        for i in 0..openssl_sys::OPENSSL_sk_num(ris) {
            let ri = openssl_sys::OPENSSL_sk_value(ris, i);
            match CMS_RecipientInfo_type(ri) {
                CMS_RECIPINFO_TRANS if CMS_RecipientInfo_ktri_cert_cmp(ri, cert.as_ptr()) == 0 => {
                    return true
                }
                CMS_RECIPINFO_AGREE => {
                    let reks = CMS_RecipientInfo_kari_get0_reks(ri);
                    if reks.is_null() {
                        continue;
                    }
                    for j in 0..openssl_sys::OPENSSL_sk_num(reks) {
                        if CMS_RecipientEncryptedKey_cert_cmp(
                            openssl_sys::OPENSSL_sk_value(reks, j),
                            cert.as_ptr(),
                        ) == 0
                        {
                            return true;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    false
}

/// NID_id_smime_ct_authEnvelopedData (RFC 5083).
const NID_AUTH_ENVELOPED: i32 = 1059;

/// The CMS content type of a DER ContentInfo, if it parses.
pub fn cms_type(der: &[u8]) -> Option<Nid> {
    use foreign_types::ForeignType;
    let cms = CmsContentInfo::from_der(der).ok()?;
    // SAFETY: a getter on a live ContentInfo; the object is read while `cms`
    // lives, after the null check.
    let obj = unsafe { CMS_get0_type(cms.as_ptr()) };
    (!obj.is_null()).then(|| Nid::from_raw(unsafe { openssl_sys::OBJ_obj2nid(obj) }))
}

/// AEAD content-encryption algorithms (DER of their OIDs): AES-GCM
/// (RFC 5084), AES-CCM (RFC 5084), ChaCha20-Poly1305 (RFC 8103).
const AEAD_OIDS: [&[u8]; 7] = [
    &[
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x06,
    ],
    &[
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x1a,
    ],
    &[
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2e,
    ],
    &[
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x07,
    ],
    &[
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x1b,
    ],
    &[
        0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2f,
    ],
    &[
        0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x03, 0x12,
    ],
];

/// Whether an AuthEnvelopedData (RFC 5083) really authenticates: an AEAD
/// content-encryption algorithm and a mac of at least 12 octets. OpenSSL
/// 3.0 decrypts one labelled with AES-CBC and ignores its mac, which would
/// let CBC gadgets (EFAIL) pass for authenticated plaintext.
fn authenticates(der: &[u8]) -> bool {
    use crate::signed_data::{children, tlv};
    let check = || -> Option<bool> {
        let ci = tlv(der, 0, der.len(), 0)?;
        let [_, explicit] = children(der, &ci)?[..] else {
            return None;
        };
        let [aed] = children(der, &explicit)?[..] else {
            return None;
        };
        let fields = children(der, &aed)?;
        let set = fields.iter().position(|f| f.tag == 0x31)?;
        let eci = fields.get(set + 1).filter(|f| f.tag == 0x30)?;
        let alg = *children(der, eci)?.get(1).filter(|f| f.tag == 0x30)?;
        let oid = *children(der, &alg)?.first()?;
        let mac = fields[set + 2..].iter().find(|f| f.tag == 0x04)?;
        Some(AEAD_OIDS.contains(&&der[oid.start..oid.end]) && mac.content_end - mac.content >= 12)
    };
    check().unwrap_or(false)
}

pub fn is_enveloped(nid: Nid) -> bool {
    nid == Nid::PKCS7_ENVELOPED || nid.as_raw() == NID_AUTH_ENVELOPED
}

/// Whether the EnvelopedData has a RecipientInfo for this certificate.
pub fn is_addressed(der: &[u8], cert: &openssl::x509::X509) -> bool {
    CmsContentInfo::from_der(der).is_ok_and(|cms| addressed_to(&cms, cert))
}

/// Tries each key; OpenSSL matches the RecipientInfos against the key's
/// certificate (issuer and serial, or subjectKeyIdentifier).
pub fn decrypt(der: &[u8], keys: &[Arc<SigningKey>]) -> Decryption {
    let Ok(cms) = CmsContentInfo::from_der(der) else {
        return Decryption::Failed("not DER".into());
    };
    let kind = match cms_type(der) {
        Some(n) if n == Nid::PKCS7_ENVELOPED => "enveloped-data",
        Some(n) if n.as_raw() == NID_AUTH_ENVELOPED => {
            if !authenticates(der) {
                return Decryption::Failed(
                    "AuthEnvelopedData without an authenticated cipher or with a short tag".into(),
                );
            }
            "authEnveloped-data"
        }
        _ => return Decryption::Failed("not enveloped data".into()),
    };
    let Some(key) = keys.iter().find(|k| addressed_to(&cms, &k.cert)) else {
        return Decryption::NotForUs;
    };
    match key.with_key(|pkey| cms.decrypt(pkey, &key.cert)) {
        Ok(plaintext) => Decryption::Decrypted {
            plaintext,
            key: key.name.clone(),
            kind,
        },
        Err(e) => {
            // Addressed to us, but the content does not decrypt: a wrong tag,
            // bad padding, a damaged key transport.
            let reasons: Vec<String> = e
                .errors()
                .iter()
                .filter_map(|x| x.reason().map(str::to_string))
                .collect();
            Decryption::Failed(if reasons.is_empty() {
                "content does not decrypt".to_string()
            } else {
                reasons.join(", ")
            })
        }
    }
}
