//! Authentication-Results values, as parsed to find and remove headers that
//! claim our authserv-id.
#![no_main]
use libfuzzer_sys::fuzz_target;
use smime_milter::auth_results;

fuzz_target!(|data: &[u8]| {
    let v = String::from_utf8_lossy(data);
    let _ = auth_results::authserv_id(&v);
    let _ = auth_results::claims_our_id(&v, "mx.example.com");
    let _ = smime_milter::mime::unfold(&v);
});
