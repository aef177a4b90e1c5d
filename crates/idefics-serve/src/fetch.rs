//! Fetching `http(s)://` image URLs without opening the server's network to its clients (SSRF).
//!
//! - Every hop's host is resolved once, by [`CheckedResolver`], and every address it returns is checked; ureq
//!   connects only to those checked addresses, so a DNS server that answers differently on a second lookup
//!   (DNS rebinding) cannot steer the connection to an internal address. Redirects are followed by hand and each
//!   hop is resolved and checked again.
//! - One deadline covers the whole fetch (all hops, lookups, connects, headers and body), and each lookup has its
//!   own timeout (`dns_timeout`), since the system resolver has none.
//! - Error messages name the client's URL, the status code or a fixed description, never bytes the remote side
//!   sent (headers, bodies, redirect targets, decoder messages), so the server cannot be used to read internal
//!   services' answers.
//! - [`FetchCancel`] aborts a fetch blocked on the network when the client goes away (ureq's
//!   `Agent::shutdown` closes the sockets under the blocked thread).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{Connector, NextTimeout, RustlsConnector, TcpConnector};

use crate::config::{Dns, ServerConfig};
use crate::error::ApiError;

/// Redirects followed by hand, so that every hop passes the address check.
pub const MAX_REDIRECTS: usize = 5;

fn bad(index: usize, code: &'static str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(code, format!("image {index}: {msg}"))
}

/// Which addresses image URLs may reach.
#[derive(Debug, Clone)]
struct AddressPolicy {
    allow_private: bool,
    allowed: Vec<IpAddr>,
}

impl AddressPolicy {
    fn allows(&self, ip: &IpAddr) -> bool {
        self.allow_private || self.allowed.contains(ip) || is_public(ip)
    }
}

/// Resolves once, checks every address, and hands ureq only the checked ones (it connects to nothing else).
struct CheckedResolver {
    policy: AddressPolicy,
    dns: Option<Dns>,
    dns_timeout: Duration,
    /// Why the last lookup was refused, for the error message (ureq's own errors carry no text of ours).
    refusal: Mutex<Option<Refusal>>,
}

#[derive(Debug, Clone)]
enum Refusal {
    NotPublic { host: String },
    DnsTimeout,
    DnsFailed { why: String },
}

impl std::fmt::Debug for CheckedResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedResolver")
            .field("policy", &self.policy)
            .finish()
    }
}

impl CheckedResolver {
    fn refuse(&self, r: Refusal) -> ureq::Error {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        ureq::Error::HostNotFound
    }

    /// The system resolver (or the configured one) on a helper thread, so that a lookup can time out.
    fn lookup(&self, host: &str, port: u16, timeout: Duration) -> Result<Vec<IpAddr>, ureq::Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (h, dns) = (host.to_string(), self.dns.clone());
        let spawned = std::thread::Builder::new()
            .name("idefics-dns".into())
            .spawn(move || {
                let result = match dns {
                    Some(Dns(f)) => f(&h, port),
                    None => (h.as_str(), port)
                        .to_socket_addrs()
                        .map(|a| a.map(|s| s.ip()).collect()),
                };
                let _ = tx.send(result);
            });
        if spawned.is_err() {
            return Err(self.refuse(Refusal::DnsFailed {
                why: "no thread for the lookup".into(),
            }));
        }
        match rx.recv_timeout(timeout) {
            Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
            Ok(Ok(_)) => Err(self.refuse(Refusal::DnsFailed {
                why: "no addresses".into(),
            })),
            Ok(Err(e)) => Err(self.refuse(Refusal::DnsFailed {
                why: e.kind().to_string(),
            })),
            Err(_) => Err(self.refuse(Refusal::DnsTimeout)),
        }
    }
}

impl Resolver for CheckedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let ips = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.lookup(host, port, self.dns_timeout.min(*timeout.after))?,
        };
        if ips.iter().any(|ip| !self.policy.allows(ip)) {
            return Err(self.refuse(Refusal::NotPublic { host: host.into() }));
        }
        let mut out = self.empty();
        for ip in ips.into_iter().take(16) {
            out.push(SocketAddr::new(ip, port));
        }
        Ok(out)
    }
}

/// Cancels a fetch from another thread: set when the request's client goes away.
#[derive(Clone, Default)]
pub struct FetchCancel(Arc<Mutex<CancelState>>);

#[derive(Default)]
struct CancelState {
    cancelled: bool,
    agent: Option<ureq::Agent>,
}

impl FetchCancel {
    /// Abort the fetch now (and any later one started with this handle).
    pub fn cancel(&self) {
        let agent = {
            let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
            st.cancelled = true;
            st.agent.take()
        };
        if let Some(agent) = agent {
            agent.shutdown();
        }
    }

    fn register(&self, agent: &ureq::Agent) -> bool {
        let mut st = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if st.cancelled {
            return false;
        }
        st.agent = Some(agent.clone());
        true
    }

    fn is_cancelled(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).cancelled
    }
}

/// Content types named in errors: only well-known ones, so that the message never carries a remote header.
fn known_content_type(ct: &str) -> Option<&'static str> {
    const KNOWN: &[&str] = &[
        "text/html",
        "text/plain",
        "text/xml",
        "text/css",
        "text/javascript",
        "application/json",
        "application/xml",
        "application/pdf",
        "application/javascript",
        "video/mp4",
        "audio/mpeg",
    ];
    let base = ct.split(';').next().unwrap_or("").trim();
    KNOWN.iter().copied().find(|k| *k == base)
}

/// GET `url` (blocking: run it off the async threads) with the address policy, one total deadline and a byte cap.
pub fn fetch_url(
    url: &str,
    index: usize,
    cfg: &ServerConfig,
    cancel: &FetchCancel,
) -> Result<Vec<u8>, ApiError> {
    let deadline = Instant::now() + cfg.fetch_timeout;
    let resolver = Arc::new(CheckedResolver {
        policy: AddressPolicy {
            allow_private: cfg.allow_private_urls,
            allowed: cfg.allowed_url_ips.clone(),
        },
        dns: cfg.dns.clone(),
        dns_timeout: cfg.dns_timeout,
        refusal: Mutex::new(None),
    });
    let config = ureq::Agent::config_builder()
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        // No proxy from the environment: the connection must go to the checked address.
        .proxy(None)
        .user_agent("idefics-serve")
        .build();
    let connector = ().chain(TcpConnector::default()).chain(RustlsConnector::default());
    let agent = ureq::Agent::with_parts(config, connector, SharedResolver(resolver.clone()));
    if !cancel.register(&agent) {
        return Err(bad(index, "image_fetch_failed", "request cancelled"));
    }
    let timed_out = || {
        bad(
            index,
            "image_fetch_failed",
            format!(
                "fetching {url} timed out after {:.1} s (the whole fetch, redirects included)",
                cfg.fetch_timeout.as_secs_f64()
            ),
        )
    };
    let mut current = url.to_string();
    for hop in 0..=MAX_REDIRECTS {
        // Hops after the first come from the remote side: never echo them.
        let shown = if hop == 0 {
            format!("fetching {url}")
        } else {
            format!("fetching {url} (after {hop} redirect(s))")
        };
        let uri: ureq::http::Uri = current.parse().map_err(|e| {
            if hop == 0 {
                bad(index, "invalid_image_url", format!("bad URL '{url}': {e}"))
            } else {
                bad(
                    index,
                    "image_fetch_failed",
                    format!("{shown}: the redirect target is not a valid URL"),
                )
            }
        })?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
            return Err(bad(
                index,
                "image_url_not_allowed",
                format!("{shown}: only http(s) URLs can be fetched"),
            ));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out());
        }
        let mut resp = agent
            .get(&current)
            .config()
            .timeout_global(Some(remaining))
            .build()
            .call()
            .map_err(|e| transport_error(index, &shown, e, &resolver, cancel, timed_out))?;
        let status = resp.status();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    bad(
                        index,
                        "image_fetch_failed",
                        format!("{shown}: redirected without a Location"),
                    )
                })?;
            current = resolve_location(&uri, location);
            continue;
        }
        if !status.is_success() {
            return Err(bad(
                index,
                "image_fetch_failed",
                format!("{shown} returned HTTP {}", status.as_u16()),
            ));
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !(content_type.starts_with("image/")
            || content_type.starts_with("application/octet-stream"))
        {
            let what = match known_content_type(&content_type) {
                Some(known) => format!("content type '{known}'"),
                None => "a content type".to_string(),
            };
            return Err(bad(
                index,
                "invalid_image",
                format!("{shown}: the server returned {what}, not an image (image/* or application/octet-stream)"),
            ));
        }
        let declared = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let over = || {
            bad(
                index,
                "image_too_large",
                format!(
                    "{shown}: the image is over the limit of {} bytes per image",
                    cfg.max_image_bytes
                ),
            )
        };
        if declared.is_some_and(|l| l > cfg.max_image_bytes) {
            return Err(over());
        }
        return resp
            .body_mut()
            .with_config()
            .limit(cfg.max_image_bytes as u64)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => over(),
                e => transport_error(index, &shown, e, &resolver, cancel, timed_out),
            });
    }
    Err(bad(
        index,
        "image_fetch_failed",
        format!("fetching {url}: more than {MAX_REDIRECTS} redirects"),
    ))
}

/// ureq wants the resolver by value; the fetch keeps a handle to read the refusal reason.
#[derive(Debug)]
struct SharedResolver(Arc<CheckedResolver>);

impl Resolver for SharedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        self.0.resolve(uri, config, timeout)
    }
}

/// A fixed description per failure kind: ureq's messages can quote what the remote side sent.
fn transport_error(
    index: usize,
    shown: &str,
    e: ureq::Error,
    resolver: &CheckedResolver,
    cancel: &FetchCancel,
    timed_out: impl Fn() -> ApiError,
) -> ApiError {
    if cancel.is_cancelled() {
        return bad(index, "image_fetch_failed", "request cancelled");
    }
    let refusal = resolver
        .refusal
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match (refusal, e) {
        (Some(Refusal::NotPublic { host }), _) if !shown.contains("redirect") => bad(
            index,
            "image_url_not_allowed",
            format!("host '{host}' resolves to a non-public address; refused (operator can allow private URLs)"),
        ),
        (Some(Refusal::NotPublic { .. }), _) => bad(
            index,
            "image_url_not_allowed",
            format!("{shown}: a redirect led to a non-public address; refused (operator can allow private URLs)"),
        ),
        (Some(Refusal::DnsTimeout), _) => bad(
            index,
            "image_fetch_failed",
            format!("{shown}: the name lookup timed out"),
        ),
        (Some(Refusal::DnsFailed { why, .. }), _) => bad(
            index,
            "image_fetch_failed",
            format!("{shown}: cannot resolve the host ({why})"),
        ),
        (None, ureq::Error::Timeout(_)) => timed_out(),
        (None, ureq::Error::Io(io)) if io.kind() == std::io::ErrorKind::TimedOut => timed_out(),
        (None, ureq::Error::Io(io)) => bad(
            index,
            "image_fetch_failed",
            format!("could not fetch: {shown}: {}", io.kind()),
        ),
        (None, ureq::Error::HostNotFound) => bad(
            index,
            "image_fetch_failed",
            format!("could not fetch: {shown}: host not found"),
        ),
        (None, ureq::Error::ConnectionFailed) => bad(
            index,
            "image_fetch_failed",
            format!("could not fetch: {shown}: connection failed"),
        ),
        (None, ureq::Error::Tls(_)) | (None, ureq::Error::Rustls(_)) => bad(
            index,
            "image_fetch_failed",
            format!("could not fetch: {shown}: TLS handshake failed"),
        ),
        (None, _) => bad(
            index,
            "image_fetch_failed",
            format!("could not fetch: {shown}: the response is not valid HTTP"),
        ),
    }
}

/// Absolute redirect targets as they are; `/path` and relative ones against the current URL.
fn resolve_location(base: &ureq::http::Uri, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{scheme}://{authority}{dir}{location}")
    }
}

/// Whether an address is on the public internet. Refused: loopback, private (10/8, 172.16/12, 192.168/16),
/// link-local, this-network 0.0.0.0/8, carrier-grade NAT 100.64.0.0/10, benchmarking 198.18.0.0/15,
/// documentation, multicast, broadcast, reserved 240/4; IPv6 loopback, unspecified, unique-local, link-local,
/// multicast, documentation, and IPv6 forms that embed an IPv4 address (mapped ::ffff:0:0/96, compatible ::/96,
/// NAT64 64:ff9b::/96, 6to4 2002::/16) are judged by that IPv4 address (`to_ipv4` covers mapped and compatible).
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0))
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if v6.is_loopback() || v6.is_unspecified() {
                return false;
            }
            // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but still routed by some stacks).
            if let Some(v4) = v6.to_ipv4() {
                return is_public(&IpAddr::V4(v4));
            }
            // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48: a gateway forwards to the IPv4.
            if seg[0] == 0x64 && seg[1] == 0xff9b {
                if seg[2] == 1 {
                    return false;
                }
                let v4 = std::net::Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                return is_public(&IpAddr::V4(v4));
            }
            // 6to4: 2002:aabb:ccdd::/48 carries a.b.c.d.
            if seg[0] == 0x2002 {
                let v4 = std::net::Ipv4Addr::new(
                    (seg[1] >> 8) as u8,
                    seg[1] as u8,
                    (seg[2] >> 8) as u8,
                    seg[2] as u8,
                );
                return is_public(&IpAddr::V4(v4));
            }
            !(v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link local
                || (seg[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || (seg[0] == 0x0100 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0))
            // discard-only
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "198.18.0.1",
            "198.19.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(&ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(&ip.parse().unwrap()), "{ip} must be allowed");
        }
    }

    #[test]
    fn only_known_content_types_are_named() {
        assert_eq!(
            known_content_type("text/html; charset=utf-8"),
            Some("text/html")
        );
        assert_eq!(known_content_type("text/x-secret-token-1234"), None);
    }
}
