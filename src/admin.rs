//! `smime-milter certs list|show ADDR|remove ADDR`: what the certificate
//! stores hold for outbound encryption.

use crate::certstore;
use crate::config::CertSource;
use crate::pki;
use crate::runtime::Runtime;
use openssl::x509::X509Ref;
use std::io::Write;

fn source_name(s: CertSource) -> &'static str {
    match s {
        CertSource::Local => "static",
        CertSource::Harvested => "harvested",
        CertSource::Ldap => "ldap",
    }
}

fn describe(
    out: &mut dyn Write,
    address: &str,
    source: &str,
    cert: &X509Ref,
    usable: Option<bool>,
) -> std::io::Result<()> {
    let serial = crate::pki::serial_hex(cert).unwrap_or_default();
    writeln!(
        out,
        "{address}  [{source}]{}",
        match usable {
            Some(true) => "  usable",
            Some(false) => "  NOT usable",
            None => "",
        }
    )?;
    writeln!(out, "  subject:   {}", pki::rfc4514(cert.subject_name()))?;
    writeln!(out, "  addresses: {}", pki::cert_addresses(cert).join(", "))?;
    writeln!(out, "  issuer:    {}", pki::rfc4514(cert.issuer_name()))?;
    writeln!(out, "  serial:    {serial}")?;
    writeln!(
        out,
        "  valid:     {} to {}",
        cert.not_before(),
        cert.not_after()
    )?;
    Ok(())
}

/// Runs the command; returns the exit status (0 done, 1 nothing found, 64 usage).
pub fn run(
    rt: &Runtime,
    args: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<i32> {
    let harvest = rt.config.harvest_dir.as_deref();
    let store = rt.certs.as_ref();
    match args {
        [cmd] if cmd == "list" => {
            let mut n = 0;
            for (addr, cert) in store.map(|s| s.local_entries()).unwrap_or_default() {
                describe(out, &addr, "static", &cert, None)?;
                n += 1;
            }
            for (addr, cert) in harvest.map(crate::harvest::list).unwrap_or_default() {
                describe(out, &addr, "harvested", &cert, None)?;
                n += 1;
            }
            if let Some(d) = &rt.harvest_ldap {
                match d.list() {
                    Ok(entries) => {
                        for (addr, cert) in entries {
                            describe(out, &addr, "harvested, directory", &cert, None)?;
                            n += 1;
                        }
                    }
                    Err(e) => {
                        writeln!(err, "cannot list {}: {e}", d.base_dn())?;
                        return Ok(1);
                    }
                }
            }
            writeln!(
                err,
                "{n} stored certificate(s); LDAP entries are shown by `certs show ADDR`"
            )?;
            Ok(0)
        }
        [cmd, addr] if cmd == "show" => {
            let trust = rt.recipient_trust();
            let mut found = 0;
            match store {
                Some(s) => {
                    let candidates = s.candidates(addr);
                    let certs: Vec<openssl::x509::X509> = candidates
                        .iter()
                        .filter_map(|(_, c)| c.as_ref().ok().cloned())
                        .collect();
                    for (source, c) in &candidates {
                        match c {
                            Ok(cert) => {
                                let usable = certstore::usable_for(cert, addr, &certs, trust);
                                describe(out, addr, source_name(*source), cert, Some(usable))?;
                                found += 1;
                            }
                            Err(e) => writeln!(
                                err,
                                "{addr}: {} lookup failed: {e}",
                                source_name(*source)
                            )?,
                        }
                    }
                    if let Some(best) = certstore::select(addr, &certs, trust) {
                        let serial = crate::pki::serial_hex(&best).unwrap_or_default();
                        writeln!(out, "encryption to {addr} uses serial {serial}")?;
                    }
                }
                None => {
                    if let Some((certs, _)) = harvest.and_then(|d| crate::harvest::load(d, addr)) {
                        describe(out, addr, "harvested", &certs[0], None)?;
                        found += 1;
                    }
                }
            }
            if found == 0 {
                writeln!(err, "no certificate for {addr}")?;
                return Ok(1);
            }
            Ok(0)
        }
        [cmd, addr] if cmd == "remove" => {
            if let Some(d) = &rt.harvest_ldap {
                return match d.remove(addr) {
                    Ok(true) => {
                        writeln!(err, "removed {} from the directory (running milters forget it after their cache TTL, or at once on SIGUSR1)", crate::harvest_ldap::dn_for(d.base_dn(), addr))?;
                        Ok(0)
                    }
                    Ok(false) => {
                        writeln!(err, "no harvested entry for {addr} under {}", d.base_dn())?;
                        Ok(1)
                    }
                    Err(e) => {
                        writeln!(err, "cannot remove the entry for {addr}: {e}")?;
                        Ok(1)
                    }
                };
            }
            let Some(dir) = harvest else {
                writeln!(err, "harvesting is off: nothing to remove")?;
                return Ok(1);
            };
            if crate::harvest::remove(dir, addr)? {
                writeln!(err, "removed the harvested certificate for {addr} (a running milter forgets it after its cache TTL, or at once on SIGUSR1)")?;
                return Ok(0);
            }
            let is_static = store.is_some_and(|s| {
                s.local_entries()
                    .iter()
                    .any(|(a, _)| a.eq_ignore_ascii_case(addr))
            });
            if is_static {
                writeln!(
                    err,
                    "{addr} is in the static store: remove it from certs_dir or certs_map"
                )?;
            } else {
                writeln!(err, "no harvested certificate for {addr}")?;
            }
            Ok(1)
        }
        _ => {
            writeln!(
                err,
                "usage: smime-milter certs [-c FILE] list | show ADDRESS | remove ADDRESS"
            )?;
            Ok(64)
        }
    }
}
