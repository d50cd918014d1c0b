//! smime-milter: S/MIME signing for Postfix and Sendmail through the milter
//! protocol. The binary is a thin shell around this library so that tests and
//! benchmarks can drive the same code.

// An Outcome is built once per message; passing it in an Err costs nothing
// worth boxing for.
#![allow(clippy::result_large_err)]

// Layers, lowest first: mail (bytes), smime (operations), stores (keys,
// certificates, trust), config, then the message flow (policy, inbound,
// outbound, session) and the milter engine that carries it.
pub mod mail;
pub mod milter;
pub mod smime;
pub mod stores;

pub mod admin;
pub mod auth_results;
pub mod config;
pub mod exporter;
mod ffi;
pub mod inbound;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod outcome;
pub mod pki;
pub mod policy;
pub mod privileges;
pub mod reload;
pub mod runtime;
pub mod session;
pub mod signals;
pub mod testmode;
pub mod visible;

// The modules by their own names, as the code and its users name them.
pub use mail::{address, mime, protected};
pub use milter::{connection, listener, progress, protocol, server};
pub use smime::{decrypt, encrypt, sign, signed_data, verify};
pub use stores::{
    certstore, fetch, harvest, harvest_ldap, keystore, ldap, online, pkcs11, truststore,
};
