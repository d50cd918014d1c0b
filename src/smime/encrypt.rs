//! S/MIME encryption (RFC 8551 §3.3): a CMS EnvelopedData (CBC) or
//! AuthEnvelopedData (GCM, RFC 5083/5084) of the MIME entity for every
//! recipient certificate, as application/pkcs7-mime.

use crate::certstore::RecipientCert;
use crate::pki::Cipher;
use crate::sign::{push_base64_lines, Wrapped};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::stack::Stack;
use openssl::x509::X509;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("CMS encryption failed: {0}")]
pub struct EncryptError(#[from] ErrorStack);

/// Encrypts a canonical MIME entity to the recipients' certificates.
pub fn encrypt_entity(
    recipients: &[Arc<RecipientCert>],
    entity: &[u8],
    cipher: Cipher,
) -> Result<Wrapped, EncryptError> {
    let mut certs = Stack::<X509>::new()?;
    for r in recipients {
        certs.push(r.cert.clone())?;
    }
    let cms = CmsContentInfo::encrypt(&certs, entity, cipher.symm(), CMSOptions::BINARY)?;
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
