//! A throwaway OpenLDAP server (Debian's slapd) on 127.0.0.1, loaded with an
//! LDIF, logging every operation so tests can count searches.
#![allow(dead_code)]

use super::{free_port, run, tempdir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BASE_DN: &str = "dc=example,dc=com";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=com";
pub const ROOT_PW: &str = "test-secret-pw";
/// Where harvested contacts go, and the account that may write there only.
pub const CONTACTS_DN: &str = "ou=contacts,dc=example,dc=com";
pub const HARVESTER_DN: &str = "cn=harvester,dc=example,dc=com";
pub const HARVESTER_PW: &str = "harvest-pw-7";

pub struct Slapd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// ldaps:// port, when started with TLS.
    pub tls_port: Option<u16>,
    child: Option<Child>,
    conf: PathBuf,
    log: PathBuf,
}

// proxyAddresses as Active Directory has it, for the default filter.
const SCHEMA: &str = "attributetype ( 1.2.840.113556.1.2.210 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.32473.1.1 NAME 'smimeTestMailUser' AUXILIARY MAY proxyAddresses )
";

impl Slapd {
    pub fn start(ldif: &str) -> Slapd {
        Self::start_with(ldif, false)
    }

    /// With TLS: StartTLS on ldap:// and a second listener for ldaps://,
    /// with the test PKI's server certificate for 127.0.0.1.
    pub fn start_tls(ldif: &str) -> Slapd {
        Self::start_with(ldif, true)
    }

    /// A server that takes no writes (`readonly on`: unwillingToPerform),
    /// as a read-only replica answers.
    pub fn start_readonly(ldif: &str) -> Slapd {
        let mut s = Self::prepare(
            false,
            free_port(),
            "",
            "access to * by * read\n",
            "readonly on\n",
        );
        s.load(ldif, &[]);
        s.resume();
        s
    }

    fn start_with(ldif: &str, tls: bool) -> Slapd {
        let mut s = Self::prepare(tls, free_port(), "", "access to * by * read\n", "");
        s.load(ldif, &[]);
        s.resume();
        s
    }

    /// Two providers replicating each other (OpenLDAP multi-provider
    /// syncrepl, as its admin guide sets it up), with `ou=contacts` writable
    /// by `HARVESTER_DN` only. The data is loaded into the first; the second
    /// receives it by replication (waited for).
    pub fn start_pair(ldif: &str) -> (Slapd, Slapd) {
        let ports = [free_port(), free_port()];
        let acl = format!(
            "access to attrs=userPassword by anonymous auth by * none
access to dn.subtree=\"{CONTACTS_DN}\" by dn.exact=\"{HARVESTER_DN}\" write by * read
access to * by * read
"
        );
        let mut pair: Vec<Slapd> = (0..2)
            .map(|i| {
                let other = ports[1 - i];
                let global = format!("moduleload syncprov\nserverID {}\n", i + 1);
                let db = format!(
                    "syncrepl rid={:03} provider=ldap://127.0.0.1:{other} bindmethod=simple binddn=\"{ROOT_DN}\" credentials={ROOT_PW} searchbase=\"{BASE_DN}\" type=refreshAndPersist retry=\"1 +\" timeout=3
multiprovider on
overlay syncprov
",
                    i + 1
                );
                Self::prepare(false, ports[i], &global, &acl, &db)
            })
            .collect();
        pair[0].load(ldif, &["-S", "1", "-w"]);
        for s in &mut pair {
            s.resume();
        }
        let b = pair.pop().unwrap();
        let a = pair.pop().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while b.search_dn(HARVESTER_DN).is_none() {
            assert!(
                Instant::now() < deadline,
                "no replication: {}",
                b.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        (a, b)
    }

    fn prepare(tls: bool, port: u16, global: &str, access: &str, db_extra: &str) -> Slapd {
        let dir = tempdir();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::write(dir.path().join("proxy.schema"), SCHEMA).unwrap();
        let conf = dir.path().join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {schema}
pidfile {d}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
{global}{tls}database mdb
maxsize 10485760
suffix \"{BASE_DN}\"
rootdn \"{ROOT_DN}\"
rootpw {ROOT_PW}
directory {db}
{access}{db_extra}",
                schema = dir.path().join("proxy.schema").display(),
                d = dir.path().display(),
                db = db.display(),
                tls = if tls { tls_conf() } else { String::new() },
            ),
        )
        .unwrap();
        let log = dir.path().join("slapd.log");
        Slapd {
            dir,
            port,
            tls_port: tls.then(free_port),
            child: None,
            conf,
            log,
        }
    }

    fn load(&mut self, ldif: &str, args: &[&str]) {
        let ldif_path = self.dir.path().join("data.ldif");
        std::fs::write(&ldif_path, ldif).unwrap();
        let out = run(Command::new("slapadd")
            .arg("-f")
            .arg(&self.conf)
            .args(args)
            .arg("-l")
            .arg(&ldif_path));
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The entry at `dn` as LDIF (ldapsearch, as the root DN), if it exists.
    pub fn search_dn(&self, dn: &str) -> Option<String> {
        let out = run(Command::new("ldapsearch")
            .args(["-x", "-LLL", "-o", "ldif-wrap=no", "-H"])
            .arg(self.uri())
            .args(["-D", ROOT_DN, "-w", ROOT_PW, "-s", "base", "-b", dn]));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            .filter(|t| !t.trim().is_empty())
    }

    /// Starts (again) on the same port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // -d 256: the stats log (one line per operation) on stderr, in the foreground.
        let mut urls = format!("ldap://127.0.0.1:{}/", self.port);
        if let Some(p) = self.tls_port {
            urls.push_str(&format!(" ldaps://127.0.0.1:{p}/"));
        }
        let child = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(&self.conf)
            .arg("-h")
            .arg(urls)
            .args(["-d", "256"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("slapd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "slapd did not listen: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (by its pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused server would not see SIGTERM.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            super::stop_child(&mut c);
        }
    }

    /// SIGSTOP: the kernel still accepts connections, nothing answers.
    pub fn pause(&self) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    }

    /// SIGCONT after `pause`.
    pub fn unpause(&self) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    }

    pub fn ldaps_uri(&self) -> String {
        format!(
            "ldaps://127.0.0.1:{}",
            self.tls_port.expect("started with TLS")
        )
    }

    pub fn uri(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Search operations the server has seen.
    pub fn searches(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(" SRCH base="))
            .count()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tls_conf() -> String {
    let p = |n: &str| super::pki().path(n).display().to_string();
    format!(
        "TLSCACertificateFile {}\nTLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
        p("root.crt"),
        p("ldap-server.chain.pem"),
        p("ldap-server.key")
    )
}

fn b64(data: &[u8]) -> String {
    openssl_b64(data)
}

fn openssl_b64(data: &[u8]) -> String {
    let d = tempdir();
    let p = d.path().join("in");
    std::fs::write(&p, data).unwrap();
    let out = run(Command::new("openssl")
        .args(["base64", "-A", "-in"])
        .arg(&p));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// DER of a test PKI certificate.
pub fn cert_der(name: &str) -> Vec<u8> {
    let out = run(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(super::pki().path(&format!("{name}.crt"))));
    assert!(out.status.success());
    out.stdout
}

/// A PKCS#7 certs-only blob (as Exchange's userSMIMECertificate) with the
/// certificate and the intermediate.
pub fn certs_only_p7(name: &str) -> Vec<u8> {
    let out = run(Command::new("openssl")
        .args(["crl2pkcs7", "-nocrl", "-outform", "DER", "-certfile"])
        .arg(super::pki().path(&format!("{name}.crt")))
        .arg("-certfile")
        .arg(super::pki().path("inter.crt")));
    assert!(out.status.success());
    out.stdout
}

/// Tables for a milter that requires encryption to every recipient, with
/// certificates from these servers (tried in order) and the signing keys
/// of the test PKI; `ldap_extra` goes into `[ldap]`.
pub fn required_encryption_tables(servers: &[&Slapd], ldap_extra: &str) -> String {
    let uris: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.uri())).collect();
    format!(
        "[encrypt]\ndefault_policy = \"required\"\n[ldap]\nuris = [{}]\nbase_dn = \"{BASE_DN}\"\n{ldap_extra}\n{}",
        uris.join(", "),
        super::pki().key_table()
    )
}

/// The test directory with the contacts OU and the harvesting account.
pub fn fleet_ldif() -> String {
    format!(
        "{}
dn: {CONTACTS_DN}
objectClass: organizationalUnit
ou: contacts

dn: {HARVESTER_DN}
objectClass: person
cn: harvester
sn: harvester
userPassword: {HARVESTER_PW}
",
        test_ldif()
    )
}

/// The directory the LDAP tests use.
pub fn test_ldif() -> String {
    format!(
        "dn: {BASE_DN}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{BASE_DN}
objectClass: organizationalUnit
ou: people

dn: uid=carol,ou=people,{BASE_DN}
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: Carol
mail: carol@example.com
userCertificate;binary:: {carol}

dn: uid=bob,ou=people,{BASE_DN}
objectClass: inetOrgPerson
objectClass: smimeTestMailUser
uid: bob
cn: Bob
sn: Bob
mail: bob.primary@example.net
proxyAddresses: smtp:bob@example.com
userSMIMECertificate:: {bob}

dn: uid=alice,ou=people,{BASE_DN}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Alice
mail: alice@example.com
userCertificate;binary:: {alice}

dn: uid=nocert,ou=people,{BASE_DN}
objectClass: inetOrgPerson
uid: nocert
cn: No Cert
sn: Cert
mail: nocert@example.com
",
        carol = b64(&cert_der("carol")),
        bob = b64(&certs_only_p7("bob")),
        alice = b64(&cert_der("alice")),
    )
}
