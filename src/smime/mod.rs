//! The S/MIME operations, bytes in and result out: signing, verification,
//! encryption, decryption, and the SignedData parser they share.

pub mod decrypt;
pub mod encrypt;
pub mod sign;
pub mod signed_data;
pub mod verify;
