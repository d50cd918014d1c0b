//! S/MIME decryption at the gateway (RFC 8551 §3.3) with the keys we hold
//! for local recipients. All or nothing: a padding or tag failure is a
//! failure, never partial plaintext (EFAIL).

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

extern "C" {
    fn CMS_get0_type(cms: *const openssl_sys::CMS_ContentInfo) -> *const openssl_sys::ASN1_OBJECT;
}

/// NID_id_smime_ct_authEnvelopedData (RFC 5083).
const NID_AUTH_ENVELOPED: i32 = 1059;

/// The CMS content type of a DER ContentInfo, if it parses.
pub fn cms_type(der: &[u8]) -> Option<Nid> {
    use foreign_types::ForeignType;
    let cms = CmsContentInfo::from_der(der).ok()?;
    let obj = unsafe { CMS_get0_type(cms.as_ptr()) };
    (!obj.is_null()).then(|| Nid::from_raw(unsafe { openssl_sys::OBJ_obj2nid(obj) }))
}

pub fn is_enveloped(nid: Nid) -> bool {
    nid == Nid::PKCS7_ENVELOPED || nid.as_raw() == NID_AUTH_ENVELOPED
}

/// Tries each key; OpenSSL matches the RecipientInfos against the key's
/// certificate (issuer and serial, or subjectKeyIdentifier).
pub fn decrypt(der: &[u8], keys: &[Arc<SigningKey>]) -> Decryption {
    let Ok(cms) = CmsContentInfo::from_der(der) else {
        return Decryption::Failed("not DER".into());
    };
    let kind = match cms_type(der) {
        Some(n) if n == Nid::PKCS7_ENVELOPED => "enveloped-data",
        Some(n) if n.as_raw() == NID_AUTH_ENVELOPED => "authEnveloped-data",
        _ => return Decryption::Failed("not enveloped data".into()),
    };
    for key in keys {
        match cms.decrypt(&key.pkey, &key.cert) {
            Ok(plaintext) => return Decryption::Decrypted { plaintext, key: key.name.clone(), kind },
            Err(e) => {
                let reasons: Vec<String> = e.errors().iter().filter_map(|x| x.reason().map(str::to_string)).collect();
                if reasons.iter().any(|r| r.contains("no matching recipient")) {
                    continue;
                }
                // The key matched a RecipientInfo but the content did not
                // decrypt: a wrong tag, bad padding, a damaged key transport.
                let why = if reasons.is_empty() { "decryption failed".to_string() } else { reasons.join(", ") };
                return Decryption::Failed(why);
            }
        }
    }
    Decryption::NotForUs
}
