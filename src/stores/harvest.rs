//! Certificates harvested from inbound mail whose signature passed: one file
//! per address (`<address>.pem`: the signer certificate, then its chain) and
//! the sender's SMIMECapabilities beside it (`<address>.caps`, DER), which
//! steer the cipher when we encrypt to that address.

use crate::pki::{cert_addresses, Cipher, SignerCert};
use openssl::x509::X509;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file for an address; anything outside a conservative set of
/// characters is percent-encoded, so an address cannot name another path.
pub fn file_for(dir: &Path, address: &str) -> PathBuf {
    let mut name = String::with_capacity(address.len() + 4);
    for b in address.to_ascii_lowercase().bytes() {
        if b.is_ascii_alphanumeric() || b"@._+-".contains(&b) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02x}"));
        }
    }
    if name.starts_with('.') {
        name.replace_range(0..1, "%2e");
    }
    dir.join(format!("{name}.pem"))
}

fn caps_file(pem: &Path) -> PathBuf {
    pem.with_extension("caps")
}

/// Reads what is stored for an address: the certificates (signer first) and
/// the capabilities.
pub fn load(dir: &Path, address: &str) -> Option<(Vec<X509>, Option<Vec<u8>>)> {
    let pem = file_for(dir, address);
    let certs = X509::stack_from_pem(&std::fs::read(&pem).ok()?).ok()?;
    if certs.is_empty() {
        return None;
    }
    Some((certs, std::fs::read(caps_file(&pem)).ok()))
}

/// Writes a file atomically (a reader never sees half of it).
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Stores the signer under each of its addresses, unless what is there is
/// valid as long or longer. Returns the addresses written.
pub fn store(dir: &Path, signer: &SignerCert) -> std::io::Result<Vec<String>> {
    let mut written = Vec::new();
    for address in cert_addresses(&signer.cert) {
        let pem_path = file_for(dir, &address);
        if let Some((old, _)) = load(dir, &address) {
            if old[0].not_after() >= signer.cert.not_after() {
                continue;
            }
        }
        let mut pem = signer.cert.to_pem().map_err(std::io::Error::other)?;
        for c in &signer.chain {
            // The chain, without self-signed roots: those come from trust.
            if c.issuer_name_hash() != c.subject_name_hash() {
                pem.extend(c.to_pem().map_err(std::io::Error::other)?);
            }
        }
        write_atomic(&pem_path, &pem)?;
        match &signer.caps {
            Some(caps) => write_atomic(&caps_file(&pem_path), caps)?,
            None => {
                let _ = std::fs::remove_file(caps_file(&pem_path));
            }
        }
        written.push(address.to_ascii_lowercase());
    }
    Ok(written)
}

/// Every stored address with its certificate.
pub fn list(dir: &Path) -> Vec<(String, X509)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, X509)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pem"))
        .filter_map(|p| {
            let certs = X509::stack_from_pem(&std::fs::read(&p).ok()?).ok()?;
            let cert = certs.into_iter().next()?;
            let name = p.file_stem()?.to_str()?.to_string();
            Some((percent_decode(&name), cert))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes what is stored for an address; false when nothing was.
pub fn remove(dir: &Path, address: &str) -> std::io::Result<bool> {
    let pem = file_for(dir, address);
    match std::fs::remove_file(&pem) {
        Ok(()) => {
            let _ = std::fs::remove_file(caps_file(&pem));
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The ciphers a capabilities list announces, in the sender's order of
/// preference (RFC 8551 §2.5.2).
pub fn announced_ciphers(caps: &[u8]) -> Vec<Cipher> {
    let mut found: Vec<(usize, Cipher)> = [
        Cipher::Aes256Gcm,
        Cipher::Aes128Gcm,
        Cipher::Aes256Cbc,
        Cipher::Aes128Cbc,
    ]
    .into_iter()
    .filter_map(|c| memchr::memmem::find(caps, c.oid_der()).map(|pos| (pos, c)))
    .collect();
    found.sort_by_key(|(pos, _)| *pos);
    found.into_iter().map(|(_, c)| c).collect()
}

/// The cipher for a message: the configured one when every recipient with
/// known capabilities announced it; else the first in our order of
/// preference that all of them announced; else the configured one.
pub fn choose_cipher(configured: Cipher, recipients_caps: &[Vec<Cipher>]) -> Cipher {
    let known: Vec<&Vec<Cipher>> = recipients_caps.iter().filter(|c| !c.is_empty()).collect();
    if known.is_empty() || known.iter().all(|c| c.contains(&configured)) {
        return configured;
    }
    [
        Cipher::Aes256Gcm,
        Cipher::Aes256Cbc,
        Cipher::Aes128Gcm,
        Cipher::Aes128Cbc,
    ]
    .into_iter()
    .find(|c| known.iter().all(|k| k.contains(c)))
    .unwrap_or(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_cannot_escape_the_directory() {
        let d = Path::new("/h");
        assert_eq!(
            file_for(d, "Alice@Example.com"),
            Path::new("/h/alice@example.com.pem")
        );
        assert_eq!(
            file_for(d, "../../etc/passwd@x"),
            Path::new("/h/%2e.%2f..%2fetc%2fpasswd@x.pem")
        );
        assert_eq!(percent_decode("a%2fb%40c"), "a/b@c");
    }

    #[test]
    fn capabilities_steer_the_cipher() {
        let mut caps = Vec::new();
        caps.extend_from_slice(&[0x30, 0x0b]);
        caps.extend_from_slice(Cipher::Aes128Cbc.oid_der());
        caps.extend_from_slice(&[0x30, 0x0b]);
        caps.extend_from_slice(Cipher::Aes256Cbc.oid_der());
        assert_eq!(
            announced_ciphers(&caps),
            vec![Cipher::Aes128Cbc, Cipher::Aes256Cbc]
        );
        let cbc_only = announced_ciphers(&caps);
        assert_eq!(
            choose_cipher(Cipher::Aes256Gcm, std::slice::from_ref(&cbc_only)),
            Cipher::Aes256Cbc
        );
        assert_eq!(
            choose_cipher(Cipher::Aes256Cbc, &[cbc_only.clone(), vec![]]),
            Cipher::Aes256Cbc
        );
        assert_eq!(
            choose_cipher(Cipher::Aes256Gcm, &[vec![]]),
            Cipher::Aes256Gcm
        );
        assert_eq!(
            choose_cipher(
                Cipher::Aes256Gcm,
                &[vec![Cipher::Aes256Gcm, Cipher::Aes128Cbc]]
            ),
            Cipher::Aes256Gcm
        );
        assert_eq!(
            choose_cipher(
                Cipher::Aes256Cbc,
                &[vec![Cipher::Aes128Cbc], vec![Cipher::Aes256Cbc]]
            ),
            Cipher::Aes256Cbc
        );
    }
}
