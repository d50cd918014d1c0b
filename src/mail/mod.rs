//! Internet mail as bytes: MIME structure and header fields, the From
//! field as a reader sees it, RFC 5322 dates, header protection (RFC 9788).

pub mod address;
pub mod date;
pub mod encoding;
pub mod mime;
pub mod protected;
