//! S/MIME signing (RFC 8551 §3.5): a CMS SignedData over the canonical MIME
//! entity, wrapped as multipart/signed (clear) or application/pkcs7-mime
//! (opaque).

use crate::config::{Capability, Digest, SignFormat, Signing, SigningTime};
use crate::ffi::{
    CMS_SignerInfo_get0_pkey_ctx, CMS_add1_signer, CMS_final, CMS_signed_add1_attr_by_NID,
};
use crate::keystore::SigningKey;
use crate::mail::encoding::push_base64_lines;
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
pub struct SignOptions<'a> {
    pub digest: Digest,
    pub include_chain: bool,
    /// RSASSA-PSS (salt as long as the digest) instead of PKCS#1 v1.5.
    pub rsa_pss: bool,
    /// The SMIMECapabilities attribute; empty: none.
    pub capabilities: &'a [Capability],
    /// signingTime as a Unix time; `None`: now.
    pub signing_time: Option<i64>,
}

impl<'a> From<&'a Signing> for SignOptions<'a> {
    fn from(s: &'a Signing) -> Self {
        SignOptions {
            digest: s.digest,
            include_chain: s.include_chain,
            rsa_pss: s.rsa_pss,
            capabilities: &s.capabilities,
            signing_time: None,
        }
    }
}

/// Clock skew tolerated in a Date ahead of ours.
const FUTURE_DATE_SLACK: i64 = 300;

/// The signingTime for a message (`None`: now). With `SigningTime::Date`,
/// the Date field when it lies between `window` seconds before now and a
/// little after, and the signing certificate and its chain were valid
/// then: a message held in an outbox is signed as of when its author sent
/// it, so that verifiers comparing Date with signingTime (ours,
/// Thunderbird's) see no gap that happened before us. Anything else (no
/// Date, a Date too old, in the future, or before a certificate's
/// validity) is signed as of now.
pub fn signing_time(
    policy: SigningTime,
    window: u64,
    date: Option<&str>,
    now: i64,
    cert: &X509,
    chain: &[X509],
) -> Option<i64> {
    if policy == SigningTime::Now {
        return None;
    }
    let t = crate::mail::date::parse_date(date?)?;
    let window = i64::try_from(window).unwrap_or(i64::MAX);
    if t > now + FUTURE_DATE_SLACK || now.saturating_sub(t) > window {
        return None;
    }
    let at = openssl::asn1::Asn1Time::from_unix(t).ok()?;
    let valid = std::iter::once(cert)
        .chain(chain)
        .all(|c| c.not_before() <= at && at <= c.not_after());
    valid.then_some(t.min(now))
}

// DER of the algorithm identifiers in our capabilities (RFC 4055 §3.1,
// §4.1; RFC 4056 §3): SHA-256 and MGF1-SHA-256, parameters absent.
const OID_RSAES_OAEP: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07,
];
const OID_RSASSA_PSS: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
];
const OID_MGF1: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
];
const OID_SHA256: &[u8] = &[
    0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
];

/// A DER element with a short or long length.
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![tag];
    crate::signed_data::push_len(&mut out, parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// SMIMECapabilities (RFC 8551 §2.5.2): a SEQUENCE OF SMIMECapability, in
/// the order given (the order is the preference). Ciphers carry no
/// parameters (RFC 3565 §5); OAEP and PSS name SHA-256 with MGF1-SHA-256.
pub fn capabilities_der(caps: &[Capability]) -> Vec<u8> {
    let sha256 = der(0x30, &[OID_SHA256]);
    let mgf1 = der(0x30, &[OID_MGF1, &sha256]);
    let hash_field = der(0xa0, &[&sha256]);
    let mgf_field = der(0xa1, &[&mgf1]);
    let items: Vec<Vec<u8>> = caps
        .iter()
        .map(|c| match c {
            Capability::Cipher(cipher) => der(0x30, &[cipher.oid_der()]),
            Capability::RsaesOaep => der(
                0x30,
                &[OID_RSAES_OAEP, &der(0x30, &[&hash_field, &mgf_field])],
            ),
            Capability::RsassaPss => {
                // saltLength 32, as we sign (salt as long as the digest).
                let salt = der(0xa2, &[&[0x02, 0x01, 0x20]]);
                der(
                    0x30,
                    &[
                        OID_RSASSA_PSS,
                        &der(0x30, &[&hash_field, &mgf_field, &salt]),
                    ],
                )
            }
        })
        .collect();
    let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
    der(0x30, &refs)
}

const RSA_PKCS1_PSS_PADDING: c_int = 6;
const RSA_PSS_SALTLEN_DIGEST: c_int = -1;

/// DER SignedData over `content`, which must already be in canonical form.
/// Signed attributes: contentType, messageDigest, signingTime and our
/// SMIMECapabilities. A key in a token that fails is reopened and tried
/// once more.
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
        // NOSMIMECAP: OpenSSL's built-in list names DES and 40-bit RC2; ours
        // is added below.
        let mut signer_flags = flags | CMSOptions::NOSMIMECAP;
        if pss {
            signer_flags |= CMSOptions::KEY_PARAM;
        }
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
        if !opts.capabilities.is_empty() {
            let caps = capabilities_der(opts.capabilities);
            let len = c_int::try_from(caps.len()).map_err(|_| ErrorStack::get())?;
            if CMS_signed_add1_attr_by_NID(
                si,
                openssl_sys::NID_SMIMECapabilities,
                openssl_sys::V_ASN1_SEQUENCE,
                caps.as_ptr().cast(),
                len,
            ) != 1
            {
                return Err(ErrorStack::get().into());
            }
        }
        if let Some(t) = opts.signing_time {
            // Added here, OpenSSL adds no signingTime of its own.
            let at = openssl::asn1::Asn1Time::from_unix(t)?;
            let p = at.as_ptr();
            if CMS_signed_add1_attr_by_NID(
                si,
                openssl_sys::NID_pkcs9_signingTime,
                openssl_sys::ASN1_STRING_type(p.cast()),
                p.cast(),
                -1,
            ) != 1
            {
                return Err(ErrorStack::get().into());
            }
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
    }
    finish_over(&cms, content, flags)?;
    Ok(cms.to_der()?)
}

/// `CMS_final` of a partial ContentInfo (signed or enveloped) over
/// `content`, read through a read-only memory BIO: no copy.
pub(crate) fn finish_over(
    cms: &CmsContentInfo,
    content: &[u8],
    flags: CMSOptions,
) -> Result<(), ErrorStack> {
    let len = c_int::try_from(content.len()).map_err(|_| ErrorStack::get())?;
    // SAFETY: the BIO reads `content`, which outlives it, and is freed
    // before returning; `cms` is live; the result is checked.
    unsafe {
        let data = openssl_sys::BIO_new_mem_buf(content.as_ptr().cast(), len);
        if data.is_null() {
            return Err(ErrorStack::get());
        }
        let ok = CMS_final(cms.as_ptr(), data, std::ptr::null_mut(), flags.bits());
        openssl_sys::BIO_free_all(data);
        if ok != 1 {
            return Err(ErrorStack::get());
        }
    }
    Ok(())
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
    use crate::pki::Cipher;

    fn cert_valid_from(not_before: i64) -> X509 {
        use openssl::asn1::Asn1Time;
        let g = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let key =
            openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&g).unwrap()).unwrap();
        let mut b = openssl::x509::X509Builder::new().unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::from_unix(not_before).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::from_unix(not_before + 400 * 86400).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn signing_time_follows_a_recent_date() {
        let now = 1_796_000_000; // 2026-11-30
        let old = cert_valid_from(now - 30 * 86400);
        let new = cert_valid_from(now - 3600);
        let date = |secs_ago: i64| {
            let t = openssl::asn1::Asn1Time::from_unix(now - secs_ago).unwrap();
            // "Nov 30 08:53:20 2026 GMT" -> "30 Nov 2026 08:53:20 +0000"
            let s = t.to_string();
            let f: Vec<&str> = s.split_whitespace().collect();
            format!("Mon, {} {} {} {} +0000", f[1], f[0], f[3], f[2])
        };
        let st = |policy, d: &str, cert: &X509, chain: &[X509]| {
            signing_time(policy, 7 * 86400, Some(d), now, cert, chain)
        };
        // Held ten hours: the Date.
        assert_eq!(
            st(SigningTime::Date, &date(36_000), &old, &[]),
            Some(now - 36_000)
        );
        // Policy now, a Date too old, before the certificate or its chain,
        // or well in the future: now.
        assert_eq!(st(SigningTime::Now, &date(36_000), &old, &[]), None);
        assert_eq!(st(SigningTime::Date, &date(8 * 86400), &old, &[]), None);
        assert_eq!(st(SigningTime::Date, &date(36_000), &new, &[]), None);
        assert_eq!(
            st(
                SigningTime::Date,
                &date(36_000),
                &old,
                std::slice::from_ref(&new)
            ),
            None
        );
        assert_eq!(st(SigningTime::Date, &date(-3600), &old, &[]), None);
        // A little ahead (clock skew): now, never later.
        assert_eq!(st(SigningTime::Date, &date(-60), &old, &[]), Some(now));
        assert_eq!(st(SigningTime::Date, "not a date", &old, &[]), None);
        assert_eq!(
            signing_time(SigningTime::Date, 86400, None, now, &old, &[]),
            None
        );
    }

    #[test]
    fn capabilities_are_ours_in_order() {
        let der = capabilities_der(&Capability::DEFAULT);
        // One SEQUENCE OF six; the ciphers read back in our order.
        assert_eq!(der[0], 0x30);
        assert_eq!(
            crate::harvest::announced_ciphers(&der),
            vec![
                Cipher::Aes256Gcm,
                Cipher::Aes128Gcm,
                Cipher::Aes256Cbc,
                Cipher::Aes128Cbc
            ]
        );
        let oaep = capabilities_der(&[Capability::RsaesOaep]);
        assert_eq!(
            oaep,
            [
                &[0x30, 0x3a, 0x30, 0x38][..],
                OID_RSAES_OAEP,
                &[0x30, 0x2b, 0xa0, 0x0d, 0x30, 0x0b],
                OID_SHA256,
                &[0xa1, 0x1a, 0x30, 0x18],
                OID_MGF1,
                &[0x30, 0x0b],
                OID_SHA256,
            ]
            .concat()
        );
        assert_eq!(capabilities_der(&[]), [0x30, 0x00]);
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
