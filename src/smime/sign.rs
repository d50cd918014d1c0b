//! S/MIME signing (RFC 8551 §3.5): a CMS SignedData over the canonical MIME
//! entity, wrapped as multipart/signed (clear) or application/pkcs7-mime
//! (opaque).

use crate::config::{Digest, SignFormat, Signing};
use crate::ffi::{CMS_SignerInfo_get0_pkey_ctx, CMS_add1_signer, CMS_final};
use crate::keystore::SigningKey;
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::X509;
use std::os::raw::c_int;

#[derive(Debug, thiserror::Error)]
#[error("CMS signing failed: {0}")]
pub struct SignError(#[from] ErrorStack);

/// Signing works on our own content: a failure with a token key is the
/// token's.
impl crate::keystore::TokenFault for SignError {
    fn token_fault(&self) -> bool {
        true
    }
}

fn message_digest(d: Digest) -> MessageDigest {
    match d {
        Digest::Sha256 => MessageDigest::sha256(),
        Digest::Sha384 => MessageDigest::sha384(),
        Digest::Sha512 => MessageDigest::sha512(),
    }
}

/// How to sign, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct SignOptions {
    pub digest: Digest,
    pub include_chain: bool,
    /// RSASSA-PSS (salt as long as the digest) instead of PKCS#1 v1.5.
    pub rsa_pss: bool,
}

impl From<&Signing> for SignOptions {
    fn from(s: &Signing) -> Self {
        SignOptions {
            digest: s.digest,
            include_chain: s.include_chain,
            rsa_pss: s.rsa_pss,
        }
    }
}

const RSA_PKCS1_PSS_PADDING: c_int = 6;
const RSA_PSS_SALTLEN_DIGEST: c_int = -1;

/// DER SignedData over `content`, which must already be in canonical form.
/// Signed attributes: contentType, messageDigest, signingTime and
/// SMIMECapabilities (OpenSSL adds the last two by default). A key in a
/// token that fails is reopened and tried once more.
pub fn cms_sign(
    key: &SigningKey,
    content: &[u8],
    opts: &SignOptions,
    detached: bool,
) -> Result<Vec<u8>, SignError> {
    key.with_key(|pkey| cms_sign_with(key, pkey, content, opts, detached))
}

fn cms_sign_with(
    key: &SigningKey,
    pkey: &openssl::pkey::PKeyRef<openssl::pkey::Private>,
    content: &[u8],
    opts: &SignOptions,
    detached: bool,
) -> Result<Vec<u8>, SignError> {
    let digest = effective_digest(key, opts.digest);
    let include_chain = opts.include_chain;
    let pss = opts.rsa_pss && matches!(pkey.id(), openssl::pkey::Id::RSA);
    // BINARY: the content is canonical already; OpenSSL must not translate it.
    let mut flags = CMSOptions::BINARY | CMSOptions::PARTIAL;
    if detached {
        flags |= CMSOptions::DETACHED;
    }
    let mut certs = Stack::<X509>::new()?;
    if include_chain {
        for c in &key.chain {
            certs.push(c.clone())?;
        }
    }
    let cms =
        CmsContentInfo::sign::<openssl::pkey::Private>(None, None, Some(&certs), None, flags)?;
    // SAFETY: `cms` is a live partial SignedData; the certificate, key and
    // digest outlive the calls, whose results are checked.
    unsafe {
        // KEY_PARAM: the signer's key context stays open for the padding.
        let signer_flags = if pss {
            flags | CMSOptions::KEY_PARAM
        } else {
            flags
        };
        let si = CMS_add1_signer(
            cms.as_ptr(),
            key.cert.as_ptr(),
            pkey.as_ptr(),
            message_digest(digest).as_ptr(),
            signer_flags.bits(),
        );
        if si.is_null() {
            return Err(ErrorStack::get().into());
        }
        if pss {
            let pctx = CMS_SignerInfo_get0_pkey_ctx(si);
            if pctx.is_null()
                || openssl_sys::EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) <= 0
                || openssl_sys::EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) <= 0
            {
                return Err(ErrorStack::get().into());
            }
        }
        // A read-only memory BIO over the content: no copy.
        let len = c_int::try_from(content.len()).map_err(|_| ErrorStack::get())?;
        let data = openssl_sys::BIO_new_mem_buf(content.as_ptr().cast(), len);
        if data.is_null() {
            return Err(ErrorStack::get().into());
        }
        let ok = CMS_final(cms.as_ptr(), data, std::ptr::null_mut(), flags.bits());
        openssl_sys::BIO_free_all(data);
        if ok != 1 {
            return Err(ErrorStack::get().into());
        }
    }
    Ok(cms.to_der()?)
}

/// A message wrapped by signing or encryption, for the milter to apply.
pub struct Wrapped {
    /// New value of the top-level Content-Type field.
    pub content_type: String,
    /// New Content-Transfer-Encoding, if any (opaque form).
    pub transfer_encoding: Option<&'static str>,
    /// Extra top-level Content-* fields (opaque form: Content-Disposition).
    pub extra_fields: Vec<(&'static str, String)>,
    /// The new body, CRLF line ends.
    pub body: Vec<u8>,
}

impl Wrapped {
    /// The wrapped message as one MIME entity (to encrypt it in turn).
    pub fn to_entity(&self) -> Vec<u8> {
        let mut e = Vec::with_capacity(self.body.len() + 256);
        e.extend_from_slice(format!("Content-Type: {}\r\n", self.content_type).as_bytes());
        if let Some(cte) = self.transfer_encoding {
            e.extend_from_slice(format!("Content-Transfer-Encoding: {cte}\r\n").as_bytes());
        }
        for (n, v) in &self.extra_fields {
            e.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        e.extend_from_slice(b"\r\n");
        e.extend_from_slice(&self.body);
        e
    }
}

/// The digest to sign with: the configured one, raised to the strength of an
/// ECDSA key's curve (RFC 5480 §4; GnuPG refuses SHA-256 with P-384).
pub fn effective_digest(key: &SigningKey, configured: Digest) -> Digest {
    let Ok(pkey) = key.cert.public_key() else {
        return configured;
    };
    let curve_bits = match pkey.id() {
        openssl::pkey::Id::EC => pkey.bits(),
        _ => 0,
    };
    match configured {
        Digest::Sha256 if curve_bits > 256 => Digest::Sha384,
        d => d,
    }
}

/// Signs `entity` (canonical MIME entity: Content-* fields, empty line, body).
pub fn sign_entity(
    key: &SigningKey,
    entity: &[u8],
    format: SignFormat,
    opts: &SignOptions,
) -> Result<Wrapped, SignError> {
    match format {
        SignFormat::Clear => {
            let mut clear = ClearBody::new(entity.len());
            clear.buf_mut().extend_from_slice(entity);
            clear.finish(key, opts)
        }
        SignFormat::Opaque => {
            let der = cms_sign(key, entity, opts, false)?;
            let mut body = Vec::with_capacity(der.len() * 4 / 3 + 64);
            push_base64_lines(&mut body, &der);
            Ok(Wrapped {
                content_type: "application/pkcs7-mime; smime-type=signed-data; name=\"smime.p7m\""
                    .into(),
                transfer_encoding: Some("base64"),
                extra_fields: vec![(
                    "Content-Disposition",
                    "attachment; filename=\"smime.p7m\"".into(),
                )],
                body,
            })
        }
    }
}

/// A multipart/signed body built in one buffer: the preamble and first
/// delimiter, then the entity the caller writes in place, then the
/// signature. The entity is signed where it lies, so a large message costs
/// its size once more, not twice (once as the entity, once in the body).
pub struct ClearBody {
    buf: Vec<u8>,
    start: usize,
    boundary: String,
}

impl ClearBody {
    /// `capacity`: the expected size of the entity.
    pub fn new(capacity: usize) -> ClearBody {
        // Random, so it is chosen before the content is seen; checked
        // against the content in `finish`.
        let boundary = format!("----smime-{}", mail_builder::mime::make_boundary("_"));
        let mut buf = Vec::with_capacity(capacity + 8192);
        buf.extend_from_slice(b"This is an S/MIME signed message\r\n\r\n--");
        buf.extend_from_slice(boundary.as_bytes());
        buf.extend_from_slice(b"\r\n");
        let start = buf.len();
        ClearBody {
            buf,
            start,
            boundary,
        }
    }

    /// Where the entity goes: append to it, do not touch what is there.
    pub fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The buffer, where the entity starts, and the boundary, which does
    /// not occur in the entity: when the content holds the random one (or
    /// was made to), the body is rebuilt around one it does not hold.
    fn with_unique_boundary(self) -> (Vec<u8>, usize, String) {
        let ClearBody {
            mut buf,
            start,
            boundary,
        } = self;
        if memchr::memmem::find(&buf[start..], boundary.as_bytes()).is_none() {
            return (buf, start, boundary);
        }
        let entity = buf.split_off(start);
        let boundary = unique_boundary(&entity);
        buf.clear();
        buf.extend_from_slice(b"This is an S/MIME signed message\r\n\r\n--");
        buf.extend_from_slice(boundary.as_bytes());
        buf.extend_from_slice(b"\r\n");
        let start = buf.len();
        buf.extend_from_slice(&entity);
        (buf, start, boundary)
    }

    pub fn finish(self, key: &SigningKey, opts: &SignOptions) -> Result<Wrapped, SignError> {
        let (mut buf, start, boundary) = self.with_unique_boundary();
        let sig = cms_sign(key, &buf[start..], opts, true)?;
        buf.extend_from_slice(b"\r\n--");
        buf.extend_from_slice(boundary.as_bytes());
        buf.extend_from_slice(b"\r\n");
        write_smime_part(
            &mut buf,
            "application/pkcs7-signature",
            None,
            "smime.p7s",
            &sig,
        );
        buf.extend_from_slice(b"\r\n--");
        buf.extend_from_slice(boundary.as_bytes());
        buf.extend_from_slice(b"--\r\n");
        let digest = effective_digest(key, opts.digest);
        Ok(Wrapped {
            content_type: format!(
                "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg={}; boundary=\"{boundary}\"",
                digest.micalg()
            ),
            transfer_encoding: None,
            extra_fields: vec![],
            body: buf,
        })
    }
}

/// A signature or enveloped part, built by mail-builder (base64, 76 columns).
pub fn write_smime_part(
    out: &mut Vec<u8>,
    mime_type: &'static str,
    smime_type: Option<&'static str>,
    filename: &'static str,
    der: &[u8],
) {
    use mail_builder::headers::content_type::ContentType;
    use mail_builder::mime::MimePart;
    let mut ct = ContentType::new(mime_type);
    if let Some(t) = smime_type {
        ct = ct.attribute("smime-type", t);
    }
    let part = MimePart::new(ct.attribute("name", filename), der).attachment(filename);
    part.write_part(out);
}

/// Base64 in lines of 76 characters with CRLF (RFC 2045 §6.8).
pub fn push_base64_lines(out: &mut Vec<u8>, data: &[u8]) {
    out.reserve(data.len() / 57 * 78 + 80);
    // Encode many lines per call: one allocation per 1024 lines, not per line.
    for block in data.chunks(57 * 1024) {
        let text = openssl::base64::encode_block(block);
        for line in text.as_bytes().chunks(76) {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A boundary that does not occur in the content (RFC 2046 §5.1.1).
fn unique_boundary(content: &[u8]) -> String {
    loop {
        let b = format!("----smime-{}", mail_builder::mime::make_boundary("_"));
        if memchr::memmem::find(content, b.as_bytes()).is_none() {
            return b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_lines_are_76_columns() {
        let mut out = Vec::new();
        push_base64_lines(&mut out, &[7u8; 200]);
        let s = String::from_utf8(out).unwrap();
        assert!(s.lines().all(|l| l.len() <= 76));
        assert_eq!(s.lines().next().unwrap().len(), 76);
        let joined: String = s.split_whitespace().collect();
        assert_eq!(
            openssl::base64::decode_block(&joined).unwrap(),
            vec![7u8; 200]
        );
    }

    #[test]
    fn content_holding_the_boundary_gets_another_one() {
        let mut clear = ClearBody::new(100);
        let first = clear.boundary.clone();
        let entity = format!("Content-Type: text/plain\r\n\r\n--{first}\r\nforged part\r\n");
        clear.buf_mut().extend_from_slice(entity.as_bytes());
        let (buf, start, boundary) = clear.with_unique_boundary();
        assert_ne!(boundary, first);
        assert_eq!(
            &buf[start..],
            entity.as_bytes(),
            "exactly the entity is signed"
        );
        assert!(!entity.contains(&boundary));
        let prefix = format!("This is an S/MIME signed message\r\n\r\n--{boundary}\r\n");
        assert_eq!(&buf[..start], prefix.as_bytes());
        // Without a clash nothing moves.
        let mut clear = ClearBody::new(10);
        clear.buf_mut().extend_from_slice(b"plain");
        let before = clear.start;
        let (buf, start, _) = clear.with_unique_boundary();
        assert_eq!((start, &buf[start..]), (before, &b"plain"[..]));
    }

    #[test]
    fn boundary_avoids_content() {
        let b = unique_boundary(b"some content");
        assert!(b.starts_with("----smime-"));
        assert!(b.len() < 70, "RFC 2046 limits boundaries to 70 characters");
    }
}
