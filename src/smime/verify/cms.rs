//! The CMS side of a signature: the SignedData says one thing
//! (doc/inbound-verdicts.md §5), OpenSSL checks the signature over exactly
//! the given bytes, and the signer infos are read out.

use super::certpolicy::{evaluate_signer, identify_signer};
use super::verdict::{Context, SignerInfo, SmimeResult, Verdict};
use crate::ffi::{
    BIO_f_null, BIO_push, BIO_s_null, CMS_SignerInfo_get0_algs, CMS_get0_SignerInfos,
    CMS_get0_content, CMS_get0_eContentType, CMS_get0_type, CMS_get1_certs,
    CMS_signed_get0_data_by_OBJ, CMS_signed_get_attr, CMS_signed_get_attr_by_NID,
};
use crate::signed_data::{self, MAX_CERTS};
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::nid::Nid;
use openssl::stack::Stack;
use openssl::x509::{X509Ref, X509};
use std::os::raw::{c_int, c_void};

const MAX_SIGNERS: i32 = 8;

fn content_type_nid(cms: &CmsContentInfo) -> Option<Nid> {
    // SAFETY: a getter on a live ContentInfo; the object is borrowed.
    let obj = unsafe { CMS_get0_type(cms.as_ptr()) };
    if obj.is_null() {
        return None;
    }
    // SAFETY: `obj` is non-null and owned by `cms`.
    Some(Nid::from_raw(unsafe { openssl_sys::OBJ_obj2nid(obj) }))
}

/// Whether the SignedData has eContent of its own.
fn carries_content(cms: &CmsContentInfo) -> bool {
    // SAFETY: a getter on a live ContentInfo; the pointer is only read.
    unsafe {
        let pos = CMS_get0_content(cms.as_ptr());
        !pos.is_null() && !(*pos).is_null()
    }
}

pub(super) fn is_signed_data(cms: &CmsContentInfo) -> bool {
    content_type_nid(cms) == Some(Nid::PKCS7_SIGNED)
}

/// Whether the SignedData says one thing (RFC 8551 §3.1 uses id-data):
/// the content is where the form says (detached or inside), and its type,
/// also as each signer's content-type attribute, is id-data.
fn one_meaning(cms: &CmsContentInfo, detached: bool) -> Result<(), &'static str> {
    if !is_signed_data(cms) {
        return Err("not a SignedData");
    }
    // SAFETY: getters on a live SignedData ContentInfo; nothing returned
    // is kept beyond this function or freed here.
    unsafe {
        let ect = CMS_get0_eContentType(cms.as_ptr());
        if ect.is_null() || openssl_sys::OBJ_obj2nid(ect) != Nid::PKCS7_DATA.as_raw() {
            return Err("signed content type is not id-data");
        }
        // A detached signature that also carries content is refused after
        // the signature check: one that does not match the displayed part
        // is a plain `fail` (and names its signer).
        if !detached && !carries_content(cms) {
            return Err("signed-data without content");
        }
        let sis = CMS_get0_SignerInfos(cms.as_ptr());
        if !sis.is_null() {
            let oid = openssl_sys::OBJ_nid2obj(Nid::PKCS9_CONTENTTYPE.as_raw());
            for i in 0..openssl_sys::OPENSSL_sk_num(sis) {
                let si = openssl_sys::OPENSSL_sk_value(sis, i);
                let obj = CMS_signed_get0_data_by_OBJ(si, oid, -3, openssl_sys::V_ASN1_OBJECT);
                if !obj.is_null()
                    && openssl_sys::OBJ_obj2nid(obj as *const openssl_sys::ASN1_OBJECT)
                        != Nid::PKCS7_DATA.as_raw()
                {
                    return Err("content-type attribute is not id-data");
                }
            }
        }
    }
    Ok(())
}

fn signer_infos(cms: &CmsContentInfo) -> Vec<SignerInfo> {
    let mut out = Vec::new();
    // SAFETY: getters on the signer infos of a live SignedData; each pointer
    // is checked for null, and certificates are copied (to_owned) out.
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
// SAFETY (callers): `si` is a live CMS_SignerInfo.
unsafe fn smime_capabilities(si: *const c_void) -> Option<Vec<u8>> {
    let loc = CMS_signed_get_attr_by_NID(si, Nid::SMIMECAPABILITIES.as_raw(), -1);
    if loc < 0 {
        return None;
    }
    let attr = CMS_signed_get_attr(si, loc);
    let t = if attr.is_null() {
        std::ptr::null_mut()
    } else {
        openssl_sys::X509_ATTRIBUTE_get0_type(attr.cast(), 0)
    };
    if t.is_null() || (*t).type_ != openssl_sys::V_ASN1_SEQUENCE {
        return None;
    }
    let seq = (*t).value.sequence;
    let len = openssl_sys::ASN1_STRING_length(seq);
    let data = openssl_sys::ASN1_STRING_get0_data(seq);
    (!data.is_null() && len > 0).then(|| std::slice::from_raw_parts(data, len as usize).to_vec())
}

// SAFETY (callers): `si` is a live CMS_SignerInfo.
unsafe fn signing_time(si: *const c_void) -> Option<i64> {
    let loc = CMS_signed_get_attr_by_NID(si, Nid::PKCS9_SIGNINGTIME.as_raw(), -1);
    if loc < 0 {
        return None;
    }
    let attr = CMS_signed_get_attr(si, loc);
    if attr.is_null() {
        return None;
    }
    let t = openssl_sys::X509_ATTRIBUTE_get0_type(attr.cast(), 0);
    if t.is_null()
        || !matches!(
            (*t).type_,
            openssl_sys::V_ASN1_UTCTIME | openssl_sys::V_ASN1_GENERALIZEDTIME
        )
    {
        return None;
    }
    let time = (*t).value.utctime as *const openssl_sys::ASN1_TIME;
    crate::pki::unix_time(openssl::asn1::Asn1TimeRef::from_ptr(time as *mut _))
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
        // The verified content is kept only when asked for: a memory BIO
        // would grow by copies to the content's size and be wiped on free
        // (OPENSSL_clear_free), a cost per megabyte for nothing.
        let sink = openssl_sys::BIO_new(if out.is_some() {
            openssl_sys::BIO_s_mem()
        } else {
            BIO_s_null()
        });
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
pub(super) fn check_signed(
    ctx: &Context<'_>,
    parsed: &mut signed_data::Parsed,
    detached: Option<&[u8]>,
    out: Option<&mut Vec<u8>>,
    part: &str,
) -> Verdict {
    let cms = &mut parsed.cms;
    if let Err(why) = one_meaning(cms, detached.is_some()) {
        return Verdict::error(SmimeResult::Permerror, part, why);
    }
    let certs: Vec<X509> = match parsed.certs.take() {
        Some(c) => c,
        // SAFETY: CMS_get1_certs returns a new stack we own (or null).
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
    // SAFETY: a getter on a live SignedData; only the count is read.
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
            // The certificate was found (CMS_verify sets it before the
            // digest check): a failure names its signer.
            let mut v = Verdict::error(SmimeResult::Fail, part, "signature does not match content");
            if let Some(cert) = signer_infos(cms).into_iter().find_map(|si| si.cert) {
                let _ = identify_signer(ctx, &mut v, &cert);
            }
            v
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
    if detached.is_some() && carries_content(cms) {
        return Verdict::error(
            SmimeResult::Permerror,
            part,
            "detached signature also carries content",
        );
    }
    let signers = signer_infos(cms);
    signers
        .iter()
        .map(|si| evaluate_signer(ctx, si, &certs, part))
        .min_by_key(|v| v.result)
        .unwrap_or_else(|| Verdict::error(SmimeResult::Permerror, part, "no signer"))
}
