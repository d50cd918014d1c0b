//! The milter engine: the protocol (version 6) spoken with the MTA, one
//! thin layer from packets to `Session` calls, the connection threads, and
//! the socket. Nothing here knows S/MIME.

pub mod connection;
pub mod listener;
pub mod progress;
pub mod protocol;
pub mod server;
