//! Shared helpers for the integration tests, by component. Each test
//! binary takes what it needs with `use common::*`.
#![allow(dead_code)]

pub mod env;
pub mod milter;
pub mod milter_client;
pub mod online;
pub mod pki;
pub mod postfix;
pub mod slapd;
pub mod softhsm;
pub mod verifiers;

// Not every test binary uses every component.
#[allow(unused_imports)]
pub use {env::*, milter::*, pki::*, postfix::*, verifiers::*};
