//! A whole outbound message: parsing and 7-bit re-encoding before signing,
//! then signing and encryption.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::run(smime_milter::policy::Direction::Outbound, data));
