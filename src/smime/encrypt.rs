//! S/MIME encryption (RFC 8551 §3.3): a CMS EnvelopedData (CBC) or
//! AuthEnvelopedData (GCM, RFC 5083/5084) of the MIME entity for every
//! recipient certificate, as application/pkcs7-mime.

use crate::certstore::RecipientCert;
use crate::ffi::{
    CMS_RecipientInfo_get0_pkey_ctx, CMS_RecipientInfo_type, CMS_add1_recipient_cert,
    EVP_PKEY_CTX_set_ecdh_kdf_md,
};
use crate::mail::encoding::push_base64_lines;
use crate::pki::Cipher;
use crate::sign::Wrapped;
use foreign_types::ForeignType;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::X509;
use std::os::raw::c_int;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("CMS encryption failed: {0}")]
pub struct EncryptError(#[from] ErrorStack);

/// RecipientInfo type of key agreement (cms.h CMS_RECIPINFO_AGREE).
const RECIPINFO_AGREE: c_int = 1;

/// Encrypts a canonical MIME entity to the recipients' certificates.
/// Recipients are added one by one: an EC recipient's key agreement gets a
/// SHA-2 KDF matching its curve (RFC 5753 §7.1.4, RFC 8551 §2.7.1.2)
/// instead of OpenSSL's SHA-1 default.
pub fn encrypt_entity(
    recipients: &[Arc<RecipientCert>],
    entity: &[u8],
    cipher: Cipher,
) -> Result<Wrapped, EncryptError> {
    let flags = CMSOptions::BINARY | CMSOptions::PARTIAL;
    let none = Stack::<X509>::new()?;
    let cms = CmsContentInfo::encrypt(&none, &[], cipher.symm(), flags)?;
    // SAFETY: `cms` is a live partial EnvelopedData; each certificate
    // outlives its call (add1 takes its own reference), the returned
    // RecipientInfo and its key context belong to `cms`, and every result
    // is checked.
    unsafe {
        for r in recipients {
            let ri = CMS_add1_recipient_cert(cms.as_ptr(), r.cert.as_ptr(), flags.bits());
            if ri.is_null() {
                return Err(ErrorStack::get().into());
            }
            if CMS_RecipientInfo_type(ri) == RECIPINFO_AGREE {
                let md = kdf_digest(&r.cert);
                let pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
                if pctx.is_null() || EVP_PKEY_CTX_set_ecdh_kdf_md(pctx, md.as_ptr()) <= 0 {
                    return Err(ErrorStack::get().into());
                }
            }
        }
    }
    crate::sign::finish_over(&cms, entity, flags)?;
    let der = cms.to_der()?;
    let mut body = Vec::with_capacity(der.len() * 4 / 3 + 64);
    push_base64_lines(&mut body, &der);
    let smime_type = if cipher.authenticated() {
        "authEnveloped-data"
    } else {
        "enveloped-data"
    };
    Ok(Wrapped {
        content_type: format!(
            "application/pkcs7-mime; smime-type={smime_type}; name=\"smime.p7m\""
        ),
        transfer_encoding: Some("base64"),
        extra_fields: vec![(
            "Content-Disposition",
            "attachment; filename=\"smime.p7m\"".into(),
        )],
        body,
    })
}

/// The KDF digest for an EC recipient: as strong as its curve (SHA-256 for
/// P-256, SHA-384 for P-384, SHA-512 above).
fn kdf_digest(cert: &X509) -> MessageDigest {
    match cert.public_key().map(|k| k.bits()).unwrap_or(256) {
        0..=256 => MessageDigest::sha256(),
        257..=384 => MessageDigest::sha384(),
        _ => MessageDigest::sha512(),
    }
}
