//! The metrics endpoint (`[metrics] listen`, loopback by default): `GET
//! /metrics` answers the Prometheus text, `GET /health` 200 "ok" while the
//! milter serves and 503 once it is stopping. Plain HTTP/1.x, one request
//! per connection, served one at a time by one thread with short timeouts:
//! a scraper needs no more, and a slow client can hold nothing else up.

use crate::live::Live;
use crate::metrics::{Kind, Source};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A request's header must arrive within this, all of it, and fit
/// `MAX_REQUEST`: a client sending a byte at a time cannot hold the one
/// thread that also answers /health.
const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 8192;

/// Binds the address (before privileges are dropped, so any port works).
pub fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen)
}

/// Turns metrics on and serves them from a thread of their own.
pub fn serve(listener: TcpListener, live: Arc<Live>) -> std::io::Result<()> {
    crate::metrics::enable(sources());
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &live) {
                            log::debug!("metrics request: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("metrics endpoint: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    log::info!("metrics on http://{addr}/metrics");
    Ok(())
}

fn answer(mut stream: TcpStream, live: &Live) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        );
    }
    match path {
        "/metrics" => match crate::metrics::render() {
            Some(text) => respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &text,
            ),
            None => respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                "metrics off\n",
            ),
        },
        "/health" => {
            if live.stopping() {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    "stopping\n",
                )
            } else {
                respond(&mut stream, "200 OK", "text/plain", "ok\n")
            }
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "/metrics or /health\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// Counters the stats line keeps, and the state of the moment.
fn sources() -> Vec<Source> {
    use crate::certstore::STATS as C;
    use crate::harvest_ldap::STATS as H;
    use crate::online::STATS as O;
    let counter = |name, help, read| Source {
        name,
        help,
        kind: Kind::Counter,
        read,
    };
    vec![
        counter(
            "certificate_cache_hits",
            "Recipient certificate lookups answered by the cache",
            || C.cache_hits.load(Ordering::Relaxed),
        ),
        counter(
            "certificate_cache_misses",
            "Recipient certificate lookups the cache could not answer",
            || C.cache_misses.load(Ordering::Relaxed),
        ),
        counter(
            "directory_searches",
            "LDAP searches for recipient certificates",
            || C.ldap_searches.load(Ordering::Relaxed),
        ),
        counter(
            "directory_errors",
            "LDAP lookups that failed (server unreachable, search refused, out of time)",
            || C.ldap_errors.load(Ordering::Relaxed),
        ),
        counter("ocsp_requests", "OCSP requests sent", || {
            O.ocsp_requests.load(Ordering::Relaxed)
        }),
        counter("crl_fetches", "CRLs fetched", || {
            O.crl_fetches.load(Ordering::Relaxed)
        }),
        counter(
            "aia_fetches",
            "Issuer certificates fetched (AIA caIssuers)",
            || O.aia_fetches.load(Ordering::Relaxed),
        ),
        counter(
            "online_cache_hits",
            "Revocation and issuer answers served from the cache",
            || O.cache_hits.load(Ordering::Relaxed),
        ),
        counter(
            "online_failures",
            "OCSP, CRL and AIA fetches that failed",
            || O.failures.load(Ordering::Relaxed),
        ),
        counter(
            "harvest_written",
            "Directory entries added or replaced by harvesting",
            || H.written.load(Ordering::Relaxed),
        ),
        counter(
            "harvest_unchanged",
            "Harvests the directory already had (a certificate valid as long or longer)",
            || H.unchanged.load(Ordering::Relaxed),
        ),
        counter(
            "harvest_failed",
            "Harvests into the directory that failed",
            || H.failed.load(Ordering::Relaxed),
        ),
        counter(
            "harvest_dropped",
            "Harvests not queued: max_pending writes already waiting",
            || H.dropped.load(Ordering::Relaxed),
        ),
        Source {
            name: "messages_in_flight",
            help: "Messages between MAIL FROM and their end",
            kind: Kind::Gauge,
            read: || crate::session::in_flight() as u64,
        },
        Source {
            name: "memory_counted_bytes",
            help: "Message bytes counted against memory_limit",
            kind: Kind::Gauge,
            read: || crate::session::buffered() as u64,
        },
    ]
}
