//! The configuration file: TOML, parsed once at start (and on reload) into
//! a typed `Config` of plain data. Every error names the file, the line and
//! the key. Nothing here reads a key, a token, a certificate or a secret
//! (only `harvest.dir` is checked to be a directory): `runtime` loads what
//! the configuration names.
//!
//! - `model`: the typed configuration, and where each value was written;
//! - `values`: the value types with their own syntax (sockets, sizes, actions);
//! - `file`: the file as written, its validation, and the list of its keys.

mod file;
mod model;
mod values;

pub use file::known_keys;
pub use model::*;
pub use values::{
    ByteSize, Capability, Digest, EncryptMode, FailAction, RevocationMode, Seconds, SignFormat,
    SigningTime, SocketSpec,
};
