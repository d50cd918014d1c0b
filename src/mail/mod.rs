//! Internet mail as bytes: MIME structure and header fields, the From
//! field, and our Authentication-Results header.

pub mod address;
pub mod auth_results;
pub mod mime;
