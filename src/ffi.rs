//! Every OpenSSL (and libp11 engine) function smime-milter calls that the
//! `openssl` and `openssl-sys` crates do not bind, declared once. Each is a
//! plain C function of OpenSSL 3.0's public headers (cms.h, x509_vfy.h,
//! bio.h, engine.h, ocsp.h); the callers hold the `unsafe` and say why it is sound.
//! They would be welcome upstream in rust-openssl (openssl-sys), with safe
//! wrappers where the crate has a type: `CmsContentInfoRef` getters (type,
//! eContentType, content, signer infos, recipient infos, certificates),
//! `CMS_add1_signer` with a digest, `X509_STORE_add_crl`,
//! `X509StoreContextRef::param_mut`, a context's own CRLs, the OCSP nonce.

#![allow(non_snake_case)]

use openssl_sys::{
    stack_st_X509_CRL, CMS_ContentInfo, ASN1_OBJECT, ASN1_OCTET_STRING, BIO, BIO_METHOD, EVP_MD,
    EVP_PKEY, EVP_PKEY_CTX, OCSP_BASICRESP, OCSP_REQUEST, OPENSSL_STACK, X509, X509_ALGOR,
    X509_CRL, X509_STORE, X509_STORE_CTX, X509_VERIFY_PARAM,
};
use std::ffi::{c_char, c_int, c_long, c_uint, c_void};

extern "C" {
    // cms.h: reading a ContentInfo.
    pub fn CMS_get0_type(cms: *const CMS_ContentInfo) -> *const ASN1_OBJECT;
    pub fn CMS_get0_eContentType(cms: *mut CMS_ContentInfo) -> *const ASN1_OBJECT;
    pub fn CMS_get0_content(cms: *mut CMS_ContentInfo) -> *mut *mut ASN1_OCTET_STRING;
    pub fn CMS_get1_certs(cms: *mut CMS_ContentInfo) -> *mut openssl_sys::stack_st_X509;

    // cms.h: signer infos.
    pub fn CMS_get0_SignerInfos(cms: *mut CMS_ContentInfo) -> *mut OPENSSL_STACK;
    pub fn CMS_SignerInfo_get0_algs(
        si: *mut c_void,
        pk: *mut *mut EVP_PKEY,
        signer: *mut *mut X509,
        pdig: *mut *mut X509_ALGOR,
        psig: *mut *mut X509_ALGOR,
    );
    pub fn CMS_signed_get_attr_by_NID(si: *const c_void, nid: c_int, lastpos: c_int) -> c_int;
    pub fn CMS_signed_get_attr(si: *const c_void, loc: c_int) -> *mut c_void;
    pub fn CMS_signed_get0_data_by_OBJ(
        si: *mut c_void,
        oid: *const ASN1_OBJECT,
        lastpos: c_int,
        type_: c_int,
    ) -> *mut c_void;

    // cms.h: signing with a chosen digest (CMS_sign uses the key's default).
    pub fn CMS_add1_signer(
        cms: *mut CMS_ContentInfo,
        signer: *mut X509,
        pk: *mut EVP_PKEY,
        md: *const EVP_MD,
        flags: c_uint,
    ) -> *mut c_void;
    pub fn CMS_SignerInfo_get0_pkey_ctx(si: *mut c_void) -> *mut EVP_PKEY_CTX;
    // Our own SMIMECapabilities and signingTime, added before CMS_final.
    pub fn CMS_signed_add1_attr_by_NID(
        si: *mut c_void,
        nid: c_int,
        type_: c_int,
        bytes: *const c_void,
        len: c_int,
    ) -> c_int;
    pub fn CMS_final(
        cms: *mut CMS_ContentInfo,
        data: *mut BIO,
        dcont: *mut BIO,
        flags: c_uint,
    ) -> c_int;

    // cms.h: recipient infos.
    pub fn CMS_get0_RecipientInfos(cms: *mut CMS_ContentInfo) -> *mut OPENSSL_STACK;
    pub fn CMS_RecipientInfo_type(ri: *mut c_void) -> c_int;
    pub fn CMS_RecipientInfo_ktri_cert_cmp(ri: *mut c_void, cert: *mut X509) -> c_int;
    pub fn CMS_RecipientInfo_kari_get0_reks(ri: *mut c_void) -> *mut OPENSSL_STACK;
    pub fn CMS_RecipientEncryptedKey_cert_cmp(rek: *mut c_void, cert: *mut X509) -> c_int;

    // cms.h, ec.h: recipients added one by one, so that key agreement can
    // be given its KDF digest (OpenSSL's default is SHA-1).
    pub fn CMS_add1_recipient_cert(
        cms: *mut CMS_ContentInfo,
        recip: *mut X509,
        flags: c_uint,
    ) -> *mut c_void;
    pub fn CMS_RecipientInfo_get0_pkey_ctx(ri: *mut c_void) -> *mut EVP_PKEY_CTX;
    pub fn EVP_PKEY_CTX_set_ecdh_kdf_md(ctx: *mut EVP_PKEY_CTX, md: *const EVP_MD) -> c_int;

    // bio.h: a pass-through filter and a sink that keeps nothing (see
    // verify::cms::cms_verify).
    pub fn BIO_f_null() -> *const BIO_METHOD;
    pub fn BIO_s_null() -> *const BIO_METHOD;
    pub fn BIO_push(b: *mut BIO, append: *mut BIO) -> *mut BIO;

    // ocsp.h: the optional nonce of an OCSP request (RFC 8954).
    pub fn OCSP_request_add1_nonce(req: *mut OCSP_REQUEST, val: *mut u8, len: c_int) -> c_int;
    pub fn OCSP_check_nonce(req: *mut OCSP_REQUEST, bs: *mut OCSP_BASICRESP) -> c_int;

    // x509_vfy.h
    pub fn X509_STORE_add_crl(store: *mut X509_STORE, crl: *mut X509_CRL) -> c_int;
    pub fn X509_STORE_CTX_get0_param(ctx: *mut X509_STORE_CTX) -> *mut X509_VERIFY_PARAM;
    pub fn X509_STORE_CTX_set0_crls(ctx: *mut X509_STORE_CTX, crls: *mut stack_st_X509_CRL);

    // engine.h: the pkcs11 engine of libp11 (keys in a token).
    pub fn ENGINE_new() -> *mut c_void;
    pub fn ENGINE_get_static_state() -> *mut c_void;
    pub fn ENGINE_ctrl_cmd_string(
        e: *mut c_void,
        cmd: *const c_char,
        arg: *const c_char,
        optional: c_int,
    ) -> c_int;
    pub fn ENGINE_ctrl_cmd(
        e: *mut c_void,
        cmd: *const c_char,
        i: c_long,
        p: *mut c_void,
        f: *mut c_void,
        optional: c_int,
    ) -> c_int;
    pub fn ENGINE_init(e: *mut c_void) -> c_int;
    pub fn ENGINE_free(e: *mut c_void) -> c_int;
    pub fn ENGINE_finish(e: *mut c_void) -> c_int;
    pub fn ENGINE_load_private_key(
        e: *mut c_void,
        key_id: *const c_char,
        ui: *mut c_void,
        cb: *mut c_void,
    ) -> *mut EVP_PKEY;
}

/// A dynamic engine's `bind_engine` (engine.h `dynamic_bind_engine`), as
/// libp11's pkcs11.so exports it.
pub type BindFn = unsafe extern "C" fn(*mut c_void, *const c_char, *const DynamicFns) -> c_int;

/// OpenSSL's `dynamic_fns`: with our static state the engine skips the
/// memory-callback set-up (it shares our libcrypto).
#[repr(C)]
pub struct DynamicFns {
    pub static_state: *mut c_void,
    pub mem_fns: [*mut c_void; 3],
}
