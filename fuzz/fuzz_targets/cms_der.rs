//! CMS/DER as it arrives in opaque S/MIME: the bytes are the DER itself
//! (libFuzzer mutates the structure, not its base64), wrapped as
//! signed-data or enveloped-data by the first byte.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use std::fmt::Write;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, der)) = data.split_first() else {
        return;
    };
    let smime_type = match kind % 3 {
        0 => "signed-data",
        1 => "enveloped-data",
        _ => "authEnveloped-data",
    };
    let mut msg = format!(
        "From: alice@example.com\r\nTo: bob@example.com\r\nMIME-Version: 1.0\r\n\
         Content-Type: application/pkcs7-mime; smime-type={smime_type}; name=smime.p7m\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    );
    for chunk in der.chunks(57) {
        let _ = writeln!(msg, "{}\r", openssl::base64::encode_block(chunk));
    }
    common::run(smime_milter::policy::Direction::Inbound, msg.as_bytes());
});
