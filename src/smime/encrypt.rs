//! S/MIME encryption (RFC 8551 §3.3): a CMS EnvelopedData (CBC) or
//! AuthEnvelopedData (GCM, RFC 5083/5084) of the MIME entity for every
//! recipient certificate, as application/pkcs7-mime.

use crate::certstore::RecipientCert;
use crate::sign::{push_base64_lines, Wrapped};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::stack::Stack;
use openssl::symm;
use openssl::x509::X509;
use std::str::FromStr;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aes128Cbc,
    Aes256Cbc,
    Aes128Gcm,
    Aes256Gcm,
}

impl Cipher {
    fn symm(self) -> symm::Cipher {
        match self {
            Cipher::Aes128Cbc => symm::Cipher::aes_128_cbc(),
            Cipher::Aes256Cbc => symm::Cipher::aes_256_cbc(),
            Cipher::Aes128Gcm => symm::Cipher::aes_128_gcm(),
            Cipher::Aes256Gcm => symm::Cipher::aes_256_gcm(),
        }
    }

    fn authenticated(self) -> bool {
        matches!(self, Cipher::Aes128Gcm | Cipher::Aes256Gcm)
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
