//! A whole inbound message: header parsing, forged Authentication-Results
//! removal, MIME splitting, multipart/signed and opaque extraction, base64,
//! CMS verification and decryption.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::run(smime_milter::policy::Direction::Inbound, data));
