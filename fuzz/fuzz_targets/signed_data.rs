//! Our BER walk that takes the certificates out of a SignedData before
//! OpenSSL parses the rest.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = smime_milter::signed_data::parse(data);
});
