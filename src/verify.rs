//! S/MIME signature verification (RFC 8551 §3.5, RFC 8550): finds the signed
//! entity, checks the CMS signature over exactly the transmitted bytes, then
//! the signer certificate, and returns one RFC 7281 result.

use crate::address;
use crate::mime::{self, ContentType};
use crate::signed_data::{self, MAX_CERTS};
use crate::truststore::TrustStore;
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::nid::Nid;
use openssl::pkey::Id;
use openssl::stack::Stack;
use openssl::x509::store::X509StoreRef;
use openssl::x509::{X509Ref, X509StoreContext, X509VerifyResult, X509};
use std::borrow::Cow;
use std::fmt;
use std::os::raw::{c_int, c_void};

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

/// The signer of a verified layer, kept for harvesting.
#[derive(Debug, Clone)]
pub struct SignerCert {
    pub cert: X509,
    /// The other certificates the message carried (its chain).
    pub chain: Vec<X509>,
    /// The signed SMIMECapabilities attribute, DER, if present.
    pub caps: Option<Vec<u8>>,
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
}

impl Verdict {
    pub fn error(result: SmimeResult, part: &str, reason: impl Into<String>) -> Verdict {
        Verdict {
            signer: None,
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

/// What a verification looks at besides the signed bytes.
pub struct Context<'a> {
    pub trust: &'a TrustStore,
    pub settings: &'a Settings,
    /// The From: address, which the signer must match.
    pub from: Option<&'a str>,
    /// The Date: header as a Unix time.
    pub date: Option<i64>,
    /// "Now", as a Unix time (fixed in tests).
    pub now: Option<i64>,
}

/// How an entity is signed, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedForm {
    Clear,
    Opaque,
}

/// multipart/signed with an S/MIME protocol, or pkcs7-mime that is (or may
/// be, for a `.p7m` without smime-type) signed-data.
pub fn signed_form(ct: &ContentType) -> Option<SignedForm> {
    match ct.mime_type.as_str() {
        "multipart/signed" => {
            let p = ct.param("protocol")?.to_ascii_lowercase();
            (p == "application/pkcs7-signature" || p == "application/x-pkcs7-signature")
                .then_some(SignedForm::Clear)
        }
        "application/pkcs7-mime" | "application/x-pkcs7-mime" => {
            match ct.param("smime-type").map(str::to_ascii_lowercase) {
                Some(t) if t == "signed-data" => Some(SignedForm::Opaque),
                Some(_) => None,
                None => {
                    let name = ct.param("name").unwrap_or("").to_ascii_lowercase();
                    name.ends_with(".p7m").then_some(SignedForm::Opaque)
                }
            }
        }
        _ => None,
    }
}

/// Verifies the entity with this Content-Type and transfer encoding, and every
/// signed layer inside it. `None` when it is not signed.
pub fn verify_entity(
    ctx: &Context<'_>,
    ct: &ContentType,
    cte: Option<&str>,
    body: &[u8],
    part: &str,
    depth: usize,
) -> Option<Verdict> {
    let form = signed_form(ct)?;
    if depth > ctx.settings.max_depth {
        return Some(Verdict::error(
            SmimeResult::Neutral,
            part,
            format!("signatures nested deeper than {}", ctx.settings.max_depth),
        ));
    }
    let (verdict, content) = match form {
        SignedForm::Clear => verify_clear(ctx, ct, body, part),
        SignedForm::Opaque => verify_opaque(ctx, cte, body, part)?,
    };
    // A signed layer inside: each must hold (RFC 8551 §3.7 nesting).
    let Some(content) = content else {
        return Some(verdict);
    };
    let (h, b) = mime::split_entity(&content);
    let fields = mime::parse_fields(h);
    let inner_ct =
        mime::field_value(&fields, "Content-Type").and_then(|v| ContentType::parse(&v))?;
    let inner_cte = mime::field_value(&fields, "Content-Transfer-Encoding");
    let inner_part = if part == "1" {
        "1.1".to_string()
    } else {
        format!("{part}.1")
    };
    // An opaque layer inside an opaque one is shown by readers as an
    // attachment, not as signed content (Thunderbird does the same).
    if form == SignedForm::Opaque && signed_form(&inner_ct) == Some(SignedForm::Opaque) {
        return Some(verdict);
    }
    match verify_entity(
        ctx,
        &inner_ct,
        inner_cte.as_deref(),
        b,
        &inner_part,
        depth + 1,
    ) {
        Some(inner) if inner.result > verdict.result => {
            let reason = inner
                .reason
                .as_deref()
                .map(|r| format!("inner signature: {r}"));
            Some(Verdict { reason, ..inner })
        }
        _ => Some(verdict),
    }
}

/// The content a signed entity carries, without judging the signature (to
/// see what it wraps): the first part of a multipart/signed, the eContent of
/// an opaque signature.
pub fn signed_content(ct: &ContentType, cte: Option<&str>, body: &[u8]) -> Option<Vec<u8>> {
    match signed_form(ct)? {
        SignedForm::Clear => {
            let mp = mime::split_multipart(body, ct.param("boundary")?).ok()?;
            mp.parts.first().map(|p| canonical(p).into_owned())
        }
        SignedForm::Opaque => {
            let mut cms = CmsContentInfo::from_der(&decode_body(cte, body).ok()?).ok()?;
            let mut out = Vec::new();
            let flags = CMSOptions::NOSIGS
                | CMSOptions::NO_SIGNER_CERT_VERIFY
                | CMSOptions::NO_CONTENT_VERIFY
                | CMSOptions::BINARY;
            cms.verify(None, None, None, Some(&mut out), flags).ok()?;
            Some(out)
        }
    }
}

/// Decodes a body: base64 in any line length, or raw.
pub fn decode_body(cte: Option<&str>, body: &[u8]) -> Result<Vec<u8>, &'static str> {
    let is_b64 = cte.is_some_and(|c| c.trim().eq_ignore_ascii_case("base64"));
    if !is_b64 {
        return Ok(body.to_vec());
    }
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let text = std::str::from_utf8(&clean).map_err(|_| "signature not base64")?;
    if text.is_empty() {
        return Err("empty signature");
    }
    openssl::base64::decode_block(text).map_err(|_| "signature not base64")
}

fn verify_clear(
    ctx: &Context<'_>,
    ct: &ContentType,
    body: &[u8],
    part: &str,
) -> (Verdict, Option<Vec<u8>>) {
    let perm = |r: &str| (Verdict::error(SmimeResult::Permerror, part, r), None);
    let Some(boundary) = ct.param("boundary").filter(|b| !b.is_empty()) else {
        return perm("multipart/signed without boundary");
    };
    let mp = match mime::split_multipart(body, boundary) {
        Ok(m) => m,
        Err(_) => return perm("boundary not found"),
    };
    if mp.parts.len() > ctx.settings.max_parts {
        return (
            Verdict::error(SmimeResult::Neutral, part, "too many MIME parts"),
            None,
        );
    }
    if mp.parts.len() != 2 {
        return perm(&format!("multipart/signed with {} parts", mp.parts.len()));
    }
    let (sig_head, sig_body) = mime::split_entity(mp.parts[1]);
    let sig_fields = mime::parse_fields(sig_head);
    let sig_ct =
        mime::field_value(&sig_fields, "Content-Type").and_then(|v| ContentType::parse(&v));
    if !sig_ct.is_some_and(|c| {
        matches!(
            c.mime_type.as_str(),
            "application/pkcs7-signature" | "application/x-pkcs7-signature"
        )
    }) {
        return perm("second part is not a signature");
    }
    let der = match decode_body(
        mime::field_value(&sig_fields, "Content-Transfer-Encoding").as_deref(),
        sig_body,
    ) {
        Ok(d) => d,
        Err(e) => return perm(e),
    };
    let Some(mut parsed) = signed_data::parse(&der) else {
        return perm("signature not DER");
    };
    // The signed bytes are the first part exactly as sent, in CRLF form.
    let content: Cow<'_, [u8]> = canonical(mp.parts[0]);
    let verdict = check_signed(ctx, &mut parsed, Some(&content), None, part);
    (verdict, Some(content.into_owned()))
}

fn verify_opaque(
    ctx: &Context<'_>,
    cte: Option<&str>,
    body: &[u8],
    part: &str,
) -> Option<(Verdict, Option<Vec<u8>>)> {
    let perm = |r: &str| Some((Verdict::error(SmimeResult::Permerror, part, r), None));
    let der = match decode_body(cte, body) {
        Ok(d) => d,
        Err(e) => return perm(e),
    };
    let Some(mut parsed) = signed_data::parse(&der) else {
        return perm("signature not DER");
    };
    if content_type_nid(&parsed.cms) != Some(Nid::PKCS7_SIGNED) {
        // Enveloped or other CMS content: not a signature.
        return None;
    }
    let mut content = Vec::new();
    let verdict = check_signed(ctx, &mut parsed, None, Some(&mut content), part);
    let content =
        (verdict.result != SmimeResult::Permerror).then(|| canonical(&content).into_owned());
    Some((verdict, content))
}

fn canonical(bytes: &[u8]) -> Cow<'_, [u8]> {
    let bare_lf = memchr::memchr_iter(b'\n', bytes).any(|i| i == 0 || bytes[i - 1] != b'\r');
    if bare_lf {
        let mut v = Vec::with_capacity(bytes.len() + bytes.len() / 16);
        mime::push_crlf(&mut v, bytes);
        Cow::Owned(v)
    } else {
        Cow::Borrowed(bytes)
    }
}

// ---------------------------------------------------------------------------
// CMS internals the openssl crate does not expose.

extern "C" {
    fn BIO_f_null() -> *const openssl_sys::BIO_METHOD;
    fn BIO_push(b: *mut openssl_sys::BIO, append: *mut openssl_sys::BIO) -> *mut openssl_sys::BIO;
    fn CMS_get0_type(cms: *const openssl_sys::CMS_ContentInfo) -> *const openssl_sys::ASN1_OBJECT;
    fn CMS_get0_SignerInfos(
        cms: *mut openssl_sys::CMS_ContentInfo,
    ) -> *mut openssl_sys::OPENSSL_STACK;
    fn CMS_get1_certs(cms: *mut openssl_sys::CMS_ContentInfo) -> *mut openssl_sys::stack_st_X509;
    fn CMS_SignerInfo_get0_algs(
        si: *mut c_void,
        pk: *mut *mut openssl_sys::EVP_PKEY,
        signer: *mut *mut openssl_sys::X509,
        pdig: *mut *mut openssl_sys::X509_ALGOR,
        psig: *mut *mut openssl_sys::X509_ALGOR,
    );
    fn CMS_signed_get_attr_by_NID(si: *const c_void, nid: c_int, lastpos: c_int) -> c_int;
    fn CMS_signed_get_attr(si: *const c_void, loc: c_int) -> *mut c_void;
    fn X509_ATTRIBUTE_get0_type(attr: *mut c_void, idx: c_int) -> *mut openssl_sys::ASN1_TYPE;
    fn X509_STORE_CTX_get0_param(
        ctx: *mut openssl_sys::X509_STORE_CTX,
    ) -> *mut openssl_sys::X509_VERIFY_PARAM;
}

const MAX_SIGNERS: i32 = 8;

fn content_type_nid(cms: &CmsContentInfo) -> Option<Nid> {
    let obj = unsafe { CMS_get0_type(cms.as_ptr()) };
    if obj.is_null() {
        return None;
    }
    Some(Nid::from_raw(unsafe { openssl_sys::OBJ_obj2nid(obj) }))
}

struct SignerInfo {
    cert: Option<X509>,
    digest: Nid,
    signing_time: Option<i64>,
    caps: Option<Vec<u8>>,
}

fn signer_infos(cms: &CmsContentInfo) -> Vec<SignerInfo> {
    let mut out = Vec::new();
    unsafe {
        let sis = CMS_get0_SignerInfos(cms.as_ptr());
        if sis.is_null() {
            return out;
        }
        for i in 0..openssl_sys::OPENSSL_sk_num(sis) {
            let si = openssl_sys::OPENSSL_sk_value(sis, i);
            let (mut signer, mut dig): (*mut openssl_sys::X509, *mut openssl_sys::X509_ALGOR) =
                (std::ptr::null_mut(), std::ptr::null_mut());
            CMS_SignerInfo_get0_algs(
                si,
                std::ptr::null_mut(),
                &mut signer,
                &mut dig,
                std::ptr::null_mut(),
            );
            let cert = (!signer.is_null()).then(|| X509Ref::from_ptr(signer).to_owned());
            let digest = if dig.is_null() {
                Nid::UNDEF
            } else {
                let mut obj: *const openssl_sys::ASN1_OBJECT = std::ptr::null();
                openssl_sys::X509_ALGOR_get0(
                    &mut obj,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    dig,
                );
                Nid::from_raw(openssl_sys::OBJ_obj2nid(obj))
            };
            out.push(SignerInfo {
                cert,
                digest,
                signing_time: signing_time(si),
                caps: smime_capabilities(si),
            });
        }
    }
    out
}

/// The SMIMECapabilities signed attribute (RFC 8551 §2.5.2), DER contents.
unsafe fn smime_capabilities(si: *const c_void) -> Option<Vec<u8>> {
    let loc = CMS_signed_get_attr_by_NID(si, Nid::SMIMECAPABILITIES.as_raw(), -1);
    if loc < 0 {
        return None;
    }
    let attr = CMS_signed_get_attr(si, loc);
    let t = if attr.is_null() {
        std::ptr::null_mut()
    } else {
        X509_ATTRIBUTE_get0_type(attr, 0)
    };
    if t.is_null() || (*t).type_ != openssl_sys::V_ASN1_SEQUENCE {
        return None;
    }
    let seq = (*t).value.sequence;
    let len = openssl_sys::ASN1_STRING_length(seq);
    let data = openssl_sys::ASN1_STRING_get0_data(seq);
    (!data.is_null() && len > 0).then(|| std::slice::from_raw_parts(data, len as usize).to_vec())
}

unsafe fn signing_time(si: *const c_void) -> Option<i64> {
    let loc = CMS_signed_get_attr_by_NID(si, Nid::PKCS9_SIGNINGTIME.as_raw(), -1);
    if loc < 0 {
        return None;
    }
    let attr = CMS_signed_get_attr(si, loc);
    if attr.is_null() {
        return None;
    }
    let t = X509_ATTRIBUTE_get0_type(attr, 0);
    if t.is_null()
        || !matches!(
            (*t).type_,
            openssl_sys::V_ASN1_UTCTIME | openssl_sys::V_ASN1_GENERALIZEDTIME
        )
    {
        return None;
    }
    let time = (*t).value.utctime as *const openssl_sys::ASN1_TIME;
    asn1_to_unix(openssl::asn1::Asn1TimeRef::from_ptr(time as *mut _))
}

fn asn1_to_unix(t: &openssl::asn1::Asn1TimeRef) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    Some(d.days as i64 * 86400 + d.secs as i64)
}

/// `CMS_verify` of the signature over `detached` (clear-signed) or the
/// content inside (opaque, written to `out`). OpenSSL 3.0 leaks a BIO each
/// time it fails to set up the digests (an unknown digest algorithm, say)
/// when the detached content is a memory BIO, so it is handed over behind
/// a pass-through filter. Found by fuzzing: ~270 bytes per such message.
fn cms_verify(
    cms: &mut CmsContentInfo,
    certs: &openssl::stack::StackRef<X509>,
    detached: Option<&[u8]>,
    out: Option<&mut Vec<u8>>,
    flags: CMSOptions,
) -> Result<(), openssl::error::ErrorStack> {
    use openssl::error::ErrorStack;
    // SAFETY: every BIO made here is freed before returning; `detached`
    // outlives the read-only memory BIO over it.
    unsafe {
        let content = match detached {
            Some(data) => {
                let len = c_int::try_from(data.len()).map_err(|_| ErrorStack::get())?;
                let mem = openssl_sys::BIO_new_mem_buf(data.as_ptr().cast(), len);
                if mem.is_null() {
                    return Err(ErrorStack::get());
                }
                let filter = openssl_sys::BIO_new(BIO_f_null());
                if filter.is_null() {
                    openssl_sys::BIO_free_all(mem);
                    return Err(ErrorStack::get());
                }
                BIO_push(filter, mem)
            }
            None => std::ptr::null_mut(),
        };
        let sink = openssl_sys::BIO_new(openssl_sys::BIO_s_mem());
        let rc = if sink.is_null() {
            0
        } else {
            openssl_sys::CMS_verify(
                cms.as_ptr(),
                certs.as_ptr(),
                std::ptr::null_mut(),
                content,
                sink,
                flags.bits(),
            )
        };
        let result = if rc == 1 {
            Ok(())
        } else {
            Err(ErrorStack::get())
        };
        if let (Ok(()), Some(out)) = (&result, out) {
            let mut ptr: *mut std::os::raw::c_char = std::ptr::null_mut();
            let len = openssl_sys::BIO_ctrl(
                sink,
                openssl_sys::BIO_CTRL_INFO,
                0,
                (&mut ptr as *mut *mut std::os::raw::c_char).cast(),
            );
            out.clear();
            if !ptr.is_null() && len > 0 {
                out.extend_from_slice(std::slice::from_raw_parts(ptr.cast::<u8>(), len as usize));
            }
        }
        if !sink.is_null() {
            openssl_sys::BIO_free_all(sink);
        }
        if !content.is_null() {
            openssl_sys::BIO_free_all(content);
        }
        result
    }
}

/// Checks the CMS signature over the content, then every signer; the best
/// signer decides.
fn check_signed(
    ctx: &Context<'_>,
    parsed: &mut signed_data::Parsed,
    detached: Option<&[u8]>,
    out: Option<&mut Vec<u8>>,
    part: &str,
) -> Verdict {
    let cms = &mut parsed.cms;
    let certs: Vec<X509> = match parsed.certs.take() {
        Some(c) => c,
        None => unsafe {
            let sk = CMS_get1_certs(cms.as_ptr());
            if sk.is_null() {
                Vec::new()
            } else {
                Stack::<X509>::from_ptr(sk).into_iter().collect()
            }
        },
    };
    // Bounded work: a mail signature has one signer and a short chain.
    let signers = unsafe {
        let sis = CMS_get0_SignerInfos(cms.as_ptr());
        if sis.is_null() {
            0
        } else {
            openssl_sys::OPENSSL_sk_num(sis)
        }
    };
    if signers > MAX_SIGNERS || certs.len() > MAX_CERTS {
        return Verdict::error(
            SmimeResult::Permerror,
            part,
            format!(
                "{signers} signers and {} certificates exceed the limits",
                certs.len()
            ),
        );
    }
    let mut stack = match Stack::new() {
        Ok(s) => s,
        Err(e) => return Verdict::error(SmimeResult::Temperror, part, e.to_string()),
    };
    for c in &certs {
        if stack.push(c.clone()).is_err() {
            return Verdict::error(SmimeResult::Temperror, part, "out of memory");
        }
    }
    // The certificate checks are ours, with reasons; OpenSSL checks the
    // signature and the digest of exactly these bytes.
    let flags = CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::BINARY;
    if let Err(e) = cms_verify(cms, &stack, detached, out, flags) {
        let reasons: Vec<String> = e
            .errors()
            .iter()
            .filter_map(|x| x.reason().map(str::to_string))
            .collect();
        let joined = reasons.join(", ");
        let signer_missing = reasons
            .iter()
            .any(|r| r.contains("signer certificate not found"));
        let mismatch = reasons.iter().any(|r| {
            r.contains("verify error")
                || r.contains("verification failure")
                || r.contains("digest failure")
        });
        return if signer_missing {
            Verdict::error(SmimeResult::Permerror, part, "signer certificate missing")
        } else if mismatch {
            Verdict::error(SmimeResult::Fail, part, "signature does not match content")
        } else {
            Verdict::error(
                SmimeResult::Permerror,
                part,
                if joined.is_empty() {
                    "invalid signature".to_string()
                } else {
                    joined
                },
            )
        };
    }
    let signers = signer_infos(cms);
    signers
        .iter()
        .map(|si| evaluate_signer(ctx, si, &certs, part))
        .min_by_key(|v| v.result)
        .unwrap_or_else(|| Verdict::error(SmimeResult::Permerror, part, "no signer"))
}

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
                }
                esc.push(c);
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

fn serial_hex(cert: &X509Ref) -> Option<String> {
    cert.serial_number()
        .to_bn()
        .ok()
        .and_then(|b| b.to_hex_str().ok().map(|s| s.to_string()))
}

fn evaluate_signer(ctx: &Context<'_>, si: &SignerInfo, certs: &[X509], part: &str) -> Verdict {
    let Some(cert) = &si.cert else {
        return Verdict::error(SmimeResult::Permerror, part, "signer certificate missing");
    };
    let addresses = cert_addresses(cert);
    let matching = ctx
        .from
        .and_then(|f| addresses.iter().find(|a| address::same_address(a, f)));
    let mut v = Verdict {
        result: SmimeResult::Pass,
        reason: None,
        identifier: matching.or(addresses.first()).cloned(),
        part: part.to_string(),
        serial: serial_hex(cert),
        issuer: Some(rfc4514(cert.issuer_name())),
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
    let mut set = |result: SmimeResult, reason: String| {
        v.result = result;
        v.reason = Some(reason);
    };
    let chain = match check_chain(&ctx.trust.store, cert, certs, ctx.now) {
        Ok(chain) => chain,
        Err((r, why)) => {
            set(r, why);
            return v;
        }
    };
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
    if matches!(si.digest, Nid::SHA1 | Nid::MD5)
        && !(si.digest == Nid::SHA1 && ctx.settings.allow_sha1)
    {
        let name = si.digest.short_name().unwrap_or("?").to_ascii_lowercase();
        set(SmimeResult::Policy, format!("weak digest {name}"));
        return v;
    }
    if let Ok(pk) = cert.public_key() {
        if matches!(pk.id(), Id::RSA | Id::RSA_PSS) && pk.bits() < ctx.settings.min_rsa_bits {
            set(
                SmimeResult::Policy,
                format!("weak key: RSA {} bits", pk.bits()),
            );
            return v;
        }
    }
    if matching.is_none() {
        set(SmimeResult::Policy, "signer not From".into());
        return v;
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

/// Whether the certificate chains to the anchors now (intermediates from `certs`).
pub fn chain_ok(store: &X509StoreRef, cert: &X509Ref, certs: &[X509]) -> bool {
    check_chain(store, cert, certs, None).is_ok()
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

/// Chain to a trust anchor, valid at `at` (Unix time; None = now); the
/// verified chain, leaf to anchor.
fn check_chain(
    store: &X509StoreRef,
    cert: &X509Ref,
    certs: &[X509],
    at: Option<i64>,
) -> Result<Vec<X509>, (SmimeResult, String)> {
    let mut chain = Stack::new().map_err(|e| (SmimeResult::Temperror, e.to_string()))?;
    for c in certs {
        let _ = chain.push(c.clone());
    }
    let mut sctx = X509StoreContext::new().map_err(|e| (SmimeResult::Temperror, e.to_string()))?;
    let result = sctx
        .init(store, cert, &chain, |c| {
            if let Some(t) = at {
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
                (X509VerifyResult::OK, chain)
            } else {
                (c.error(), chain)
            })
        })
        .map_err(|e| (SmimeResult::Temperror, e.to_string()))?;
    let (result, chain) = result;
    if result == X509VerifyResult::OK {
        return Ok(chain);
    }
    use openssl_sys as s;
    let reason = match result.as_raw() {
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
    };
    Err(reason)
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

/// Parses an RFC 5322 date (obsolete forms included) to a Unix time.
pub fn parse_date(value: &str) -> Option<i64> {
    let v = value.split('(').next()?.trim();
    let v = match v.split_once(',') {
        Some((_, rest)) => rest.trim(),
        None => v,
    };
    let mut it = v.split_whitespace();
    let day: i64 = it.next()?.parse().ok()?;
    let month = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]
    .iter()
    .position(|m| {
        it.clone()
            .next()
            .is_some_and(|s| s.to_ascii_lowercase().starts_with(m))
    })? as i64
        + 1;
    it.next();
    let mut year: i64 = it.next()?.parse().ok()?;
    if year < 50 {
        year += 2000;
    } else if year < 1000 {
        year += 1900;
    }
    let mut hms = it.next()?.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let s: i64 = hms.next().map(|s| s.parse().unwrap_or(0)).unwrap_or(0);
    let zone = it.next().unwrap_or("+0000");
    let offset = match zone.as_bytes().first() {
        Some(b'+') | Some(b'-') if zone.len() == 5 => {
            let n: i64 = zone[1..].parse().ok()?;
            let secs = (n / 100) * 3600 + (n % 100) * 60;
            if zone.starts_with('-') {
                -secs
            } else {
                secs
            }
        }
        _ => match zone.to_ascii_uppercase().as_str() {
            "EDT" => -4 * 3600,
            "EST" | "CDT" => -5 * 3600,
            "CST" | "MDT" => -6 * 3600,
            "MST" | "PDT" => -7 * 3600,
            "PST" => -8 * 3600,
            _ => 0,
        },
    };
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("Thu, 01 Jan 1970 00:00:00 +0000"), Some(0));
        assert_eq!(
            parse_date("Mon, 26 Jan 2026 14:38:03 +0000"),
            Some(1769438283)
        );
        assert_eq!(
            parse_date("26 Jan 2026 15:38:03 +0100 (CET)"),
            Some(1769438283)
        );
        assert_eq!(
            parse_date("Mon, 26 Jan 2026 09:38:03 EST"),
            Some(1769438283)
        );
        assert_eq!(parse_date("garbage"), None);
        assert_eq!(parse_date("Mon, 45 Jan 2026 09:38:03 EST"), None);
    }

    #[test]
    fn signed_forms() {
        let p = |s: &str| signed_form(&ContentType::parse(s).unwrap());
        assert_eq!(p("multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=x"), Some(SignedForm::Clear));
        assert_eq!(
            p("multipart/signed; protocol=application/x-pkcs7-signature; boundary=x"),
            Some(SignedForm::Clear)
        );
        assert_eq!(
            p("multipart/signed; protocol=\"application/pgp-signature\"; boundary=x"),
            None
        );
        assert_eq!(
            p("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"),
            Some(SignedForm::Opaque)
        );
        assert_eq!(
            p("application/x-pkcs7-mime; name=\"smime.p7m\""),
            Some(SignedForm::Opaque)
        );
        assert_eq!(
            p("application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"),
            None
        );
        assert_eq!(p("text/plain"), None);
    }

    #[test]
    fn severity_order() {
        assert!(SmimeResult::Pass < SmimeResult::Policy);
        assert!(SmimeResult::Policy < SmimeResult::Fail);
        assert!(SmimeResult::Fail < SmimeResult::Permerror);
    }
}
