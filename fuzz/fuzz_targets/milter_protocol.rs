//! A whole MTA connection as bytes: packet framing, option negotiation,
//! macros, every command and the replies, with the session behind it.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::milter_connection(data));
