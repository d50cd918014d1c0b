//! smime-milter: S/MIME signing for Postfix and Sendmail through the milter
//! protocol. The binary is a thin shell around this library so that tests and
//! benchmarks can drive the same code.

// An Outcome is built once per message; passing it in an Err costs nothing
// worth boxing for.
#![allow(clippy::result_large_err)]

pub mod address;
pub mod admin;
pub mod auth_results;
pub mod certstore;
pub mod config;
pub mod connection;
pub mod decrypt;
pub mod encrypt;
mod ffi;
pub mod harvest;
pub mod inbound;
pub mod keystore;
pub mod ldap;
pub mod listener;
pub mod logging;
pub mod mime;
pub mod outbound;
pub mod outcome;
pub mod pkcs11;
pub mod policy;
pub mod privileges;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod session;
pub mod sign;
pub mod signed_data;
pub mod testmode;
pub mod truststore;
pub mod verify;
