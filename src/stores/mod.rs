//! What the milter holds, loaded once at start and reload: signing keys
//! (files, PKCS#11 tokens), recipient certificates (local, harvested,
//! LDAP), and the trust anchors.

pub mod certstore;
pub mod harvest;
pub mod keystore;
pub mod ldap;
pub mod pkcs11;
pub mod truststore;
