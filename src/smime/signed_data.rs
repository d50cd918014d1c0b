//! A CMS SignedData with its certificates taken out and parsed through a
//! cache. OpenSSL 3.0 spends about 0.1 ms decoding each certificate's
//! public key, which made parsing a signature cost more than checking it;
//! a gateway sees the same signer and CA certificates again and again, so
//! each is decoded once. The structure is walked just far enough to find
//! `SignedData.certificates` (RFC 5652 §5.1), BER indefinite lengths
//! included; anything unexpected falls back to OpenSSL's own parse.

use lru::LruCache;
use openssl::cms::CmsContentInfo;
use openssl::x509::X509;
use std::num::NonZeroUsize;
use std::sync::{Mutex, OnceLock};

/// Distinct certificates kept parsed, and the largest one kept: a few MB
/// at most, whatever certificates senders make up.
const CACHE_ENTRIES: usize = 512;
const MAX_CACHED_DER: usize = 8192;
/// Certificates one SignedData may carry (more: permerror in verify).
pub const MAX_CERTS: usize = 64;
/// Nesting a walker follows inside one element before giving up.
const MAX_DEPTH: usize = 64;

/// A parsed SignedData and the certificates it carried.
pub struct Parsed {
    pub cms: CmsContentInfo,
    /// From the certificates field, in order; `None` when OpenSSL parsed
    /// them itself (fallback): read them from `cms` then.
    pub certs: Option<Vec<X509>>,
}

/// Parses a CMS ContentInfo, with certificates through the cache when it
/// is a SignedData whose structure we can follow. Bytes after the DER are
/// an error: a signature says one thing (doc/inbound-verdicts.md §5).
pub fn parse(der: &[u8]) -> Result<Parsed, &'static str> {
    // More certificates than a signature may carry are not worth caching:
    // OpenSSL parses them and the caller refuses the signature.
    if let Some((stripped, cert_ders)) = split(der).filter(|(_, c)| c.len() <= MAX_CERTS) {
        if let Ok(cms) = CmsContentInfo::from_der(&stripped) {
            let certs: Option<Vec<X509>> = cert_ders.into_iter().map(cached).collect();
            // A certificate we cannot parse: OpenSSL's own parse decides.
            if let Some(certs) = certs {
                return Ok(Parsed {
                    cms,
                    certs: Some(certs),
                });
            }
        }
    }
    let cms = parse_whole(der)?;
    Ok(Parsed { cms, certs: None })
}

/// OpenSSL's parse, which must use every byte.
fn parse_whole(der: &[u8]) -> Result<CmsContentInfo, &'static str> {
    use foreign_types::ForeignType;
    let len = std::os::raw::c_long::try_from(der.len()).map_err(|_| "signature too large")?;
    let mut p = der.as_ptr();
    // SAFETY: d2i reads at most `len` bytes from `p` and advances it; the
    // returned object is owned by the CmsContentInfo made from it.
    let (cms, used) = unsafe {
        let cms = openssl_sys::d2i_CMS_ContentInfo(std::ptr::null_mut(), &mut p, len);
        if cms.is_null() {
            // Leave no error on this thread's queue for the next call.
            let _ = openssl::error::ErrorStack::get();
            return Err("signature not DER");
        }
        (
            CmsContentInfo::from_ptr(cms),
            p as usize - der.as_ptr() as usize,
        )
    };
    if used != der.len() {
        return Err("bytes after the signature's DER");
    }
    Ok(cms)
}

fn cache() -> &'static Mutex<LruCache<Vec<u8>, X509>> {
    static CACHE: OnceLock<Mutex<LruCache<Vec<u8>, X509>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(LruCache::new(
            NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero"),
        ))
    })
}

fn cached(der: &[u8]) -> Option<X509> {
    if let Some(c) = cache().lock().unwrap_or_else(|e| e.into_inner()).get(der) {
        return Some(c.clone());
    }
    // Parsed outside the lock: the slow part must not serialise sessions.
    let cert = X509::from_der(der).ok()?;
    if der.len() > MAX_CACHED_DER {
        return Some(cert);
    }
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .put(der.to_vec(), cert.clone());
    Some(cert)
}

/// One BER element: where its content starts and ends, and where the
/// element ends (after the end-of-contents octets when indefinite).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv {
    pub(crate) tag: u8,
    pub(crate) start: usize,
    pub(crate) content: usize,
    pub(crate) content_end: usize,
    pub(crate) end: usize,
    indefinite: bool,
}

/// The element at `pos` within `buf[..limit]`. Single-byte tags only
/// (everything in SignedData down to the certificates uses them).
pub(crate) fn tlv(buf: &[u8], pos: usize, limit: usize, depth: usize) -> Option<Tlv> {
    if depth > MAX_DEPTH || pos + 2 > limit {
        return None;
    }
    let tag = buf[pos];
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = buf[pos + 1];
    let (content, len) = match first {
        0x80 => (pos + 2, None),
        l if l < 0x80 => (pos + 2, Some(l as usize)),
        l => {
            let n = (l & 0x7f) as usize;
            if n > 4 || pos + 2 + n > limit {
                return None;
            }
            let len = buf[pos + 2..pos + 2 + n]
                .iter()
                .fold(0usize, |a, &b| (a << 8) | b as usize);
            (pos + 2 + n, Some(len))
        }
    };
    match len {
        Some(len) => {
            let end = content.checked_add(len).filter(|&e| e <= limit)?;
            Some(Tlv {
                tag,
                start: pos,
                content,
                content_end: end,
                end,
                indefinite: false,
            })
        }
        None => {
            // Constructed only; children up to the end-of-contents octets.
            if tag & 0x20 == 0 {
                return None;
            }
            let mut p = content;
            loop {
                if p + 2 > limit {
                    return None;
                }
                if buf[p] == 0 && buf[p + 1] == 0 {
                    return Some(Tlv {
                        tag,
                        start: pos,
                        content,
                        content_end: p,
                        end: p + 2,
                        indefinite: true,
                    });
                }
                p = tlv(buf, p, limit, depth + 1)?.end;
            }
        }
    }
}

/// The children of a constructed element.
pub(crate) fn children(buf: &[u8], t: &Tlv) -> Option<Vec<Tlv>> {
    let mut v = Vec::new();
    let mut p = t.content;
    while p < t.content_end {
        let c = tlv(buf, p, t.content_end, 1)?;
        p = c.end;
        v.push(c);
    }
    Some(v)
}

/// A DER length, short or long form.
pub(crate) fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Writes the header of `t` around `content_len` bytes of new content
/// (keeping indefinite lengths indefinite).
fn push_header(out: &mut Vec<u8>, t: &Tlv, content_len: usize) {
    out.push(t.tag);
    if t.indefinite {
        out.push(0x80);
    } else {
        push_len(out, content_len);
    }
}

fn header_len(t: &Tlv, content_len: usize) -> usize {
    let mut v = Vec::with_capacity(8);
    push_header(&mut v, t, content_len);
    v.len()
}

const OID_SIGNED_DATA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
];

/// The ContentInfo without `certificates`, and the certificates' DER.
fn split(der: &[u8]) -> Option<(Vec<u8>, Vec<&[u8]>)> {
    let ci = tlv(der, 0, der.len(), 0)?;
    if ci.tag != 0x30 || ci.end != der.len() {
        return None;
    }
    let ci_kids = children(der, &ci)?;
    let [oid, explicit] = ci_kids.as_slice() else {
        return None;
    };
    if &der[oid.start..oid.end] != OID_SIGNED_DATA || explicit.tag != 0xa0 {
        return None;
    }
    let sd_list = children(der, explicit)?;
    let [sd] = sd_list.as_slice() else {
        return None;
    };
    if sd.tag != 0x30 {
        return None;
    }
    let fields = children(der, sd)?;
    // version, digestAlgorithms, encapContentInfo, [0] certificates?, [1] crls?, signerInfos
    let certs_field = fields.iter().position(|f| f.tag == 0xa0)?;
    if certs_field != 3 {
        return None;
    }
    let cf = fields[certs_field];
    let mut certs = Vec::new();
    for c in children(der, &cf)? {
        // Only plain certificates (CertificateChoices' SEQUENCE), definite.
        if c.tag != 0x30 || c.indefinite {
            return None;
        }
        certs.push(&der[c.start..c.end]);
    }
    let removed = cf.end - cf.start;

    // Rebuild inside out: SignedData, then [0], then ContentInfo.
    let sd_content = (sd.content_end - sd.content) - removed;
    let sd_total = header_len(sd, sd_content) + sd_content + if sd.indefinite { 2 } else { 0 };
    let ex_content = sd_total;
    let ex_total =
        header_len(explicit, ex_content) + ex_content + if explicit.indefinite { 2 } else { 0 };
    let ci_content = (oid.end - oid.start) + ex_total;

    let mut out = Vec::with_capacity(der.len() - removed);
    push_header(&mut out, &ci, ci_content);
    out.extend_from_slice(&der[oid.start..oid.end]);
    push_header(&mut out, explicit, ex_content);
    push_header(&mut out, sd, sd_content);
    out.extend_from_slice(&der[sd.content..cf.start]);
    out.extend_from_slice(&der[cf.end..sd.content_end]);
    for t in [sd, explicit, &ci] {
        if t.indefinite {
            out.extend_from_slice(&[0, 0]);
        }
    }
    Some((out, certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_minimal_der() {
        let mut v = Vec::new();
        push_len(&mut v, 5);
        push_len(&mut v, 200);
        push_len(&mut v, 70000);
        assert_eq!(v, [5, 0x81, 200, 0x83, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn certificates_come_out_and_the_rest_still_verifies() {
        use openssl::cms::CMSOptions;
        let (cert, key) = crate::pki::test_self_signed("signer");
        let (other, _) = crate::pki::test_self_signed("other");
        let mut extra = openssl::stack::Stack::new().unwrap();
        extra.push(other.clone()).unwrap();
        let content = b"signed content\r\n";
        for flags in [
            CMSOptions::BINARY | CMSOptions::DETACHED,
            CMSOptions::BINARY,
        ] {
            let der =
                CmsContentInfo::sign(Some(&cert), Some(&key), Some(&extra), Some(content), flags)
                    .unwrap()
                    .to_der()
                    .unwrap();
            let (stripped, certs) = split(&der).expect("split");
            assert_eq!(certs.len(), 2);
            assert!(stripped.len() < der.len() - certs.iter().map(|c| c.len()).sum::<usize>() + 8);
            let mut p = parse(&der).unwrap();
            let certs = p.certs.take().unwrap();
            let mut got: Vec<Vec<u8>> = certs.iter().map(|c| c.to_der().unwrap()).collect();
            let mut want = vec![cert.to_der().unwrap(), other.to_der().unwrap()];
            got.sort();
            want.sort();
            assert_eq!(got, want);
            let mut stack = openssl::stack::Stack::new().unwrap();
            for c in certs {
                stack.push(c).unwrap();
            }
            let detached = flags.contains(CMSOptions::DETACHED).then_some(&content[..]);
            let mut out = Vec::new();
            p.cms
                .verify(
                    Some(&stack),
                    None,
                    detached,
                    Some(&mut out),
                    CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::BINARY,
                )
                .expect("verifies without its own certificates field");
            assert_eq!(out, content);
            // Without the certificates the signer is not found: they were
            // really taken out.
            assert!(CmsContentInfo::from_der(&stripped)
                .unwrap()
                .verify(
                    None,
                    None,
                    detached,
                    None,
                    CMSOptions::NO_SIGNER_CERT_VERIFY | CMSOptions::BINARY
                )
                .is_err());
        }
    }

    #[test]
    fn bytes_after_the_der_are_refused() {
        let (cert, key) = crate::pki::test_self_signed("signer");
        let der = CmsContentInfo::sign(
            Some(&cert),
            Some(&key),
            None,
            Some(&b"x"[..]),
            openssl::cms::CMSOptions::BINARY,
        )
        .unwrap()
        .to_der()
        .unwrap();
        assert!(parse(&der).is_ok());
        let mut longer = der.clone();
        longer.extend_from_slice(b"\0junk");
        assert_eq!(
            parse(&longer).err(),
            Some("bytes after the signature's DER")
        );
    }

    #[test]
    fn garbage_and_truncation_fall_back_without_panic() {
        for input in [
            &b""[..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x84, 0x7f, 0xff, 0xff, 0xff],
            &[0x30, 0x03, 0x06, 0x01, 0x00],
            &[0x30, 0x80, 0xa0, 0x80, 0x30, 0x80],
        ] {
            assert!(split(input).is_none());
            assert!(parse(input).is_err());
        }
    }
}
