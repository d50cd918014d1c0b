//! Who gets what: inbound or outbound (as OpenDKIM decides sign vs verify),
//! and which From addresses an authenticated client may have signed.

use crate::config::{Config, EncryptMode, Encryption};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client a dual-stack listener saw.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Outbound when the client is one of `internal_hosts` or has authenticated
/// with SMTP AUTH; inbound otherwise.
pub fn direction(cfg: &Config, client_ip: Option<IpAddr>, auth_login: Option<&str>) -> Direction {
    if auth_login.is_some_and(|l| !l.is_empty()) {
        return Direction::Outbound;
    }
    match client_ip.map(canonical_ip) {
        Some(ip) if cfg.internal_hosts.iter().any(|n| n.contains(&ip)) => Direction::Outbound,
        _ => Direction::Inbound,
    }
}

/// Whether `from` may be signed for this client. An unauthenticated client
/// from an internal host is trusted (like OpenDKIM); an authenticated one only
/// for its own login (when the login is an address) or the addresses and
/// `@domain`s the `[senders]` table lists for it.
pub fn may_sign_as(cfg: &Config, auth_login: Option<&str>, from: &str) -> bool {
    let Some(login) = auth_login.filter(|l| !l.is_empty()) else {
        return true;
    };
    let from = from.to_ascii_lowercase();
    let login = login.to_ascii_lowercase();
    if login == from {
        return true;
    }
    let domain = from.rsplit_once('@').map(|(_, d)| format!("@{d}"));
    cfg.senders.get(&login).is_some_and(|allowed| {
        allowed
            .iter()
            .any(|a| *a == from || Some(a) == domain.as_ref())
    })
}

/// Whether `addr` matches a rule pattern: an address, or `@domain`.
fn matches(pattern: &str, addr: &str) -> bool {
    match pattern.strip_prefix('@') {
        Some(domain) => addr
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => pattern.eq_ignore_ascii_case(addr),
    }
}

/// The encryption mode for one recipient: the first rule whose recipient
/// and sender patterns match, else the default.
pub fn encrypt_mode(enc: &Encryption, sender: &str, rcpt: &str) -> EncryptMode {
    enc.rules
        .iter()
        .find(|r| {
            r.recipient.as_deref().is_none_or(|p| matches(p, rcpt))
                && r.sender.as_deref().is_none_or(|p| matches(p, sender))
        })
        .map_or(enc.default_mode, |r| r.mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    #[test]
    fn loopback_is_internal_by_default() {
        let c = cfg("");
        assert_eq!(
            direction(&c, Some("127.0.0.1".parse().unwrap()), None),
            Direction::Outbound
        );
        assert_eq!(
            direction(&c, Some("::1".parse().unwrap()), None),
            Direction::Outbound
        );
        assert_eq!(
            direction(&c, Some("::ffff:127.0.0.1".parse().unwrap()), None),
            Direction::Outbound
        );
        assert_eq!(
            direction(&c, Some("192.0.2.1".parse().unwrap()), None),
            Direction::Inbound
        );
        assert_eq!(direction(&c, None, None), Direction::Inbound);
    }

    #[test]
    fn configured_networks_replace_the_default() {
        let c = cfg("internal_hosts = [\"10.0.0.0/8\"]\n");
        assert_eq!(
            direction(&c, Some("10.1.2.3".parse().unwrap()), None),
            Direction::Outbound
        );
        assert_eq!(
            direction(&c, Some("127.0.0.1".parse().unwrap()), None),
            Direction::Inbound
        );
    }

    #[test]
    fn authenticated_clients_are_outbound_from_anywhere() {
        let c = cfg("");
        assert_eq!(
            direction(&c, Some("198.51.100.7".parse().unwrap()), Some("alice")),
            Direction::Outbound
        );
        assert_eq!(
            direction(&c, Some("198.51.100.7".parse().unwrap()), Some("")),
            Direction::Inbound
        );
    }

    #[test]
    fn encryption_rules_first_match_wins() {
        let c = cfg("[encrypt]\ndefault_policy = \"opportunistic\"\n\
                     [[encrypt.policy]]\nrecipient = \"ceo@partner.example\"\nmode = \"never\"\n\
                     [[encrypt.policy]]\nrecipient = \"@partner.example\"\nmode = \"required\"\n\
                     [[encrypt.policy]]\nsender = \"@legal.example.com\"\nmode = \"required\"\n");
        let e = c.encrypt.as_ref().unwrap();
        assert_eq!(
            encrypt_mode(e, "a@example.com", "CEO@Partner.example"),
            EncryptMode::Never
        );
        assert_eq!(
            encrypt_mode(e, "a@example.com", "x@partner.example"),
            EncryptMode::Required
        );
        assert_eq!(
            encrypt_mode(e, "a@legal.example.com", "x@other.example"),
            EncryptMode::Required
        );
        assert_eq!(
            encrypt_mode(e, "a@example.com", "x@other.example"),
            EncryptMode::Opportunistic
        );
        assert_eq!(
            encrypt_mode(e, "a@example.com", "x@sub.partner.example"),
            EncryptMode::Opportunistic
        );
    }

    #[test]
    fn no_signing_oracle() {
        let c = cfg("[senders]\nalice = [\"alice@example.com\", \"@sales.example.com\"]\n");
        assert!(
            may_sign_as(&c, None, "anyone@example.com"),
            "trusted internal host"
        );
        assert!(may_sign_as(&c, Some("alice"), "alice@example.com"));
        assert!(may_sign_as(&c, Some("ALICE"), "Alice@Example.com"));
        assert!(may_sign_as(&c, Some("alice"), "team@sales.example.com"));
        assert!(!may_sign_as(&c, Some("alice"), "ceo@example.com"));
        assert!(!may_sign_as(&c, Some("alice"), "x@evil.sales.example.com"));
        assert!(
            may_sign_as(&c, Some("bob@example.com"), "bob@example.com"),
            "login is the address"
        );
        assert!(!may_sign_as(
            &c,
            Some("bob@example.com"),
            "alice@example.com"
        ));
        assert!(
            !may_sign_as(&c, Some("mallory"), "mallory@example.com"),
            "login is not an address"
        );
    }
}
