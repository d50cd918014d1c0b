//! Internet mail as bytes: MIME structure and header fields, the From
//! field as a reader sees it.

pub mod address;
pub mod mime;
