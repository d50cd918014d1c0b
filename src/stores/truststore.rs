//! The certificate collection that decides which signatures are trusted:
//! trust anchors from a PEM bundle and/or a directory, optional CRLs. Built
//! once at start (and reload), shared by every verification.

use crate::ffi::X509_STORE_add_crl;
use foreign_types::ForeignType;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Crl, X509};
use std::path::Path;

pub struct TrustStore {
    pub store: X509Store,
    pub anchors: usize,
    pub crls: usize,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrustStore({} anchors, {} CRLs)",
            self.anchors, self.crls
        )
    }
}

/// Certificates in a file: PEM (one or more), a single DER certificate,
/// or a PKCS#7 certs-only bundle (.p7b).
pub(crate) fn certs_in(path: &Path) -> Result<Vec<X509>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    crate::pki::certs_from_bytes(&data).map_err(|why| format!("{}: {why}", path.display()))
}

fn crls_in(path: &Path) -> Result<Vec<X509Crl>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&data);
    if text.contains("-----BEGIN X509 CRL-----") {
        let mut out = Vec::new();
        for block in text
            .split("-----END X509 CRL-----")
            .filter(|b| b.contains("-----BEGIN X509 CRL-----"))
        {
            let pem = format!("{block}-----END X509 CRL-----\n");
            out.push(
                X509Crl::from_pem(pem.as_bytes())
                    .map_err(|_| format!("cannot parse CRL in {}", path.display()))?,
            );
        }
        Ok(out)
    } else {
        X509Crl::from_der(&data)
            .map(|c| vec![c])
            .map_err(|_| format!("{} is neither PEM nor DER CRL data", path.display()))
    }
}

/// Regular files of a directory, sorted (hidden files and editors' backups skipped).
fn files_in(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read directory {}: {e}", dir.display()))?;
    let mut files: Vec<_> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && !name.ends_with('~')
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Which configured value failed, for the error's line and key.
pub enum TrustError {
    Anchors(String),
    Dir(String),
    Crls(String),
}

impl TrustStore {
    pub fn load(
        bundle: Option<&Path>,
        dir: Option<&Path>,
        crl_dir: Option<&Path>,
    ) -> Result<TrustStore, TrustError> {
        let mut b = X509StoreBuilder::new().map_err(|e| TrustError::Anchors(e.to_string()))?;
        let mut anchors = 0;
        if let Some(p) = bundle {
            let certs = certs_in(p).map_err(TrustError::Anchors)?;
            if certs.is_empty() {
                return Err(TrustError::Anchors(format!(
                    "no certificate in {}",
                    p.display()
                )));
            }
            for c in certs {
                b.add_cert(c)
                    .map_err(|e| TrustError::Anchors(e.to_string()))?;
                anchors += 1;
            }
        }
        if let Some(d) = dir {
            for f in files_in(d).map_err(TrustError::Dir)? {
                for c in certs_in(&f).map_err(TrustError::Dir)? {
                    // The same anchor in bundle and directory is not an error.
                    if b.add_cert(c).is_ok() {
                        anchors += 1;
                    }
                }
            }
        }
        let mut crls = 0;
        if let Some(d) = crl_dir {
            for f in files_in(d).map_err(TrustError::Crls)? {
                for crl in crls_in(&f).map_err(TrustError::Crls)? {
                    // SAFETY: both are live; the store takes its own reference to the CRL.
                    unsafe { X509_STORE_add_crl(b.as_ptr(), crl.as_ptr()) };
                    crls += 1;
                }
            }
            b.set_flags(X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL)
                .map_err(|e| TrustError::Crls(e.to_string()))?;
        }
        Ok(TrustStore {
            store: b.build(),
            anchors,
            crls,
        })
    }
}
