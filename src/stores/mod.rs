//! What the milter holds, loaded once at start and reload: signing keys
//! (files, PKCS#11 tokens), recipient certificates (local, harvested,
//! LDAP), the trust anchors, and what is fetched about certificates
//! (revocation status, missing intermediates).

pub mod certstore;
pub mod fetch;
pub mod harvest;
pub mod harvest_ldap;
pub mod keystore;
pub mod ldap;
pub mod online;
pub mod pkcs11;
pub mod truststore;
