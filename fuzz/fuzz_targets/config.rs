//! The configuration parser (TOML, then our checks): any text gets a
//! configuration or an error naming file:line, never a crash.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = smime_milter::config::Config::parse(std::path::Path::new("fuzz.toml"), text);
});
