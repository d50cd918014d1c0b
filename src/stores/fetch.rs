//! HTTP fetches for revocation data and missing intermediates. A
//! certificate inside an inbound message names the URL, so a fetch is an
//! attacker's request made from inside our network: plain `http://` only,
//! every address a name resolves to checked against the network policy
//! (redirect targets too; no proxy from the environment, which would hide
//! the target), one redirect at most, a size cap and a time limit.
//!
//! ureq: synchronous like the rest of the message path (no runtime to
//! drive), small (no TLS stack with `default-features = false`), and its
//! resolver hook sees every connection the client makes.

use ipnet::IpNet;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Which target addresses may be fetched from: `deny` first, then
/// `allow`, then only public unicast addresses.
#[derive(Debug, Clone, Default)]
pub struct NetPolicy {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl NetPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 address is the IPv4 host it maps to.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }
}

/// Globally routable unicast: not loopback, private, shared (CGNAT),
/// link-local, unique-local, multicast, documentation, benchmarking,
/// reserved or unspecified (RFC 6890's special-purpose registries).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_broadcast()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            // Global unicast is 2000::/3 (RFC 4291); within it, the
            // documentation, IETF protocol (2001::/23) and 6to4 ranges
            // (which embed IPv4 hosts we would not check) are not public.
            (s[0] & 0xe000) == 0x2000
                && !((s[0] == 0x2001 && (s[1] == 0x0db8 || s[1] < 0x0200))
                    || s[0] == 0x2002
                    || (s[0] & 0xfff0) == 0x3ff0)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The URL is not one we fetch (scheme, form, length).
    Refused(String),
    /// Its host is outside the allowed networks.
    NotAllowed(String),
    /// No answer in time, no connection, or an HTTP error status.
    Failed(String),
    TooLarge(u64),
    /// The message's lookup budget ran out.
    OutOfTime,
}

impl FetchError {
    /// Whether asking again later could give another answer.
    pub fn transient(&self) -> bool {
        matches!(self, FetchError::Failed(_) | FetchError::OutOfTime)
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Refused(why) | FetchError::NotAllowed(why) => f.write_str(why),
            FetchError::Failed(why) => f.write_str(why),
            FetchError::TooLarge(n) => write!(f, "response larger than {n} bytes"),
            FetchError::OutOfTime => f.write_str("lookup time budget spent"),
        }
    }
}

/// Resolves as the system does, then keeps only the allowed addresses.
#[derive(Debug)]
struct Guarded {
    inner: DefaultResolver,
    policy: Arc<NetPolicy>,
}

impl Resolver for Guarded {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for a in all.iter().filter(|a| self.policy.allows(a.ip())) {
            kept.push(*a);
        }
        if kept.is_empty() {
            let host = uri.host().unwrap_or("?");
            let addrs: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
            let shown = match addrs.as_slice() {
                [one] if one == host => host.to_string(),
                _ => format!("{host} ({})", addrs.join(", ")),
            };
            return Err(ureq::Error::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{shown} not in allowed networks"),
            )));
        }
        Ok(kept)
    }
}

pub struct Fetcher {
    agent: ureq::Agent,
    timeout: Duration,
    max_size: u64,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fetcher({:?}, {} bytes)", self.timeout, self.max_size)
    }
}

/// Longest URL we follow: certificates carry short ones.
pub const MAX_URL: usize = 1024;

impl Fetcher {
    pub fn new(policy: NetPolicy, timeout: Duration, max_size: u64) -> Fetcher {
        let config = ureq::Agent::config_builder()
            .proxy(None)
            .max_redirects(1)
            .http_status_as_error(true)
            .user_agent(concat!("smime-milter/", env!("CARGO_PKG_VERSION")))
            .max_response_header_size(16 * 1024)
            .max_idle_connections(16)
            .build();
        let resolver = Guarded {
            inner: DefaultResolver::default(),
            policy: Arc::new(policy),
        };
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            resolver,
        );
        Fetcher {
            agent,
            timeout,
            max_size,
        }
    }

    /// The body at `url`, by `deadline` at the latest.
    pub fn get(&self, url: &str, deadline: Instant) -> Result<Vec<u8>, FetchError> {
        let limit = self.limit(url, deadline)?;
        let req = self.agent.get(url).config().timeout_global(limit).build();
        self.read(req.call())
    }

    /// The answer to `body` POSTed to `url` as `content_type`.
    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, FetchError> {
        let limit = self.limit(url, deadline)?;
        let req = self
            .agent
            .post(url)
            .header("Content-Type", content_type)
            .config()
            .timeout_global(limit)
            .build();
        self.read(req.send(body))
    }

    /// The time this request may take; refuses URLs we do not fetch.
    fn limit(&self, url: &str, deadline: Instant) -> Result<Option<Duration>, FetchError> {
        check_url(url)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FetchError::OutOfTime);
        }
        Ok(Some(left.min(self.timeout)))
    }

    fn read(
        &self,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, FetchError> {
        let mut res = res.map_err(|e| self.error(e))?;
        // Refused before reading when the server announces it.
        if res
            .body()
            .content_length()
            .is_some_and(|n| n > self.max_size)
        {
            return Err(FetchError::TooLarge(self.max_size));
        }
        res.body_mut()
            .with_config()
            .limit(self.max_size)
            .read_to_vec()
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: ureq::Error) -> FetchError {
        match e {
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::PermissionDenied => {
                FetchError::NotAllowed(io.to_string())
            }
            ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge(self.max_size),
            ureq::Error::StatusCode(code) => FetchError::Failed(format!("HTTP status {code}")),
            ureq::Error::TooManyRedirects => FetchError::Refused("more than one redirect".into()),
            ureq::Error::BadUri(u) => FetchError::Refused(format!("bad URL {u}")),
            ureq::Error::Timeout(_) => FetchError::Failed("timed out".into()),
            ureq::Error::HostNotFound => FetchError::Failed("host not found".into()),
            other => FetchError::Failed(other.to_string()),
        }
    }
}

/// Plain http with a host, printable ASCII, not too long: the URLs we
/// fetch, and those a certificate names that we would.
pub fn check_url(url: &str) -> Result<(), FetchError> {
    if url.len() > MAX_URL {
        return Err(FetchError::Refused("URL too long".into()));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FetchError::Refused(
            "URL with blanks or control bytes".into(),
        ));
    }
    let scheme_ok = url
        .get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
    if !scheme_ok || url.len() == 7 {
        let shown: String = url.chars().take(64).collect();
        return Err(FetchError::Refused(format!("only http:// URLs ({shown})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_policy_allows_only_public_unicast() {
        let p = NetPolicy::default();
        for public in ["8.8.8.8", "193.0.6.139", "2001:4860:4860::8888"] {
            assert!(p.allows(ip(public)), "{public}");
        }
        for special in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "::127.0.0.1",
            "::ffff:0:a00:1",
            "100::1",
            "3fff::1",
            "5f00::1",
            "64:ff9b::a00:1",
        ] {
            assert!(!p.allows(ip(special)), "{special}");
        }
    }

    #[test]
    fn deny_wins_then_allow_opens() {
        let p = NetPolicy {
            allow: vec![
                "127.0.0.1/32".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            deny: vec![
                "10.9.0.0/16".parse().unwrap(),
                "8.8.0.0/16".parse().unwrap(),
            ],
        };
        assert!(p.allows(ip("127.0.0.1")));
        assert!(p.allows(ip("::ffff:127.0.0.1")));
        assert!(!p.allows(ip("127.0.0.2")));
        assert!(p.allows(ip("10.1.0.1")));
        assert!(!p.allows(ip("10.9.0.1")));
        assert!(!p.allows(ip("8.8.8.8")));
        assert!(p.allows(ip("9.9.9.9")));
    }

    #[test]
    fn only_plain_http_urls() {
        assert!(check_url("http://ca.example/x.crl").is_ok());
        assert!(check_url("HTTP://ca.example/").is_ok());
        for bad in [
            "https://ca.example/",
            "ldap://ca.example/cn=x",
            "file:///etc/passwd",
            "http://",
            "http://a b/",
            "http://ca.example/\r\nX: y",
            "ftp://x",
        ] {
            assert!(
                matches!(check_url(bad), Err(FetchError::Refused(_))),
                "{bad}"
            );
        }
        assert!(check_url(&format!("http://x/{}", "a".repeat(2000))).is_err());
    }

    #[test]
    fn a_name_outside_the_networks_is_not_fetched() {
        let f = Fetcher::new(NetPolicy::default(), Duration::from_secs(2), 1000);
        let e = f
            .get(
                "http://127.0.0.1:9/x",
                Instant::now() + Duration::from_secs(2),
            )
            .unwrap_err();
        assert!(matches!(e, FetchError::NotAllowed(_)), "{e:?}");
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
    }
}
