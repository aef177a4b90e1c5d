//! Operator-facing settings: request limits, image fetching policy, queueing and timeouts.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A name resolver used instead of the system's for image URLs (`host`, `port` -> addresses). Tests use it to
/// play a rebinding DNS server; an operator could plug in their own DNS policy.
#[derive(Clone)]
pub struct Dns(pub Arc<ResolveFn>);

/// `(host, port)` -> the host's addresses.
pub type ResolveFn = dyn Fn(&str, u16) -> std::io::Result<Vec<IpAddr>> + Send + Sync;

impl fmt::Debug for Dns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dns(custom resolver)")
    }
}

/// Everything the server can be told at start-up. `Default` is a safe public-facing configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Images per request (all messages together). More is a 400.
    pub max_images_per_request: usize,
    /// Encoded bytes per image (data URI after base64 decoding, or fetched body).
    pub max_image_bytes: usize,
    /// Width × height per image, read from the header before decoding (decompression-bomb guard).
    pub max_image_pixels: u64,
    /// Whole HTTP request body.
    pub max_body_bytes: usize,
    /// Requests waiting for the engine; when full, new requests get a 503.
    pub max_queue: usize,
    /// Upper bound on the batch handed to the engine (also capped by the engine's own maximum).
    pub max_batch_size: usize,
    /// How long the worker waits for more requests to join a batch once one is ready.
    pub batch_window: Duration,
    /// From arrival to the last token; past it the request ends with a 504 (or an error event when streaming).
    pub request_timeout: Duration,
    /// On shutdown, in-flight and queued requests may finish for this long before being cancelled.
    pub shutdown_grace: Duration,
    /// Total time for fetching one `http(s)://` image: every redirect hop, name lookup, connect, headers and
    /// body together.
    pub fetch_timeout: Duration,
    /// Time allowed for one name lookup of an image URL's host (within `fetch_timeout`).
    pub dns_timeout: Duration,
    /// Allow image URLs that resolve to loopback / private / link-local addresses. Off by default (SSRF guard).
    pub allow_private_urls: bool,
    /// Addresses allowed as image URL targets even though they are not public (e.g. an internal image store).
    pub allowed_url_ips: Vec<IpAddr>,
    /// Resolver for image URL hosts; `None` = the system resolver.
    pub dns: Option<Dns>,
    /// Image fetches waiting on the network at once (they do not hold a decoding slot).
    pub fetch_concurrency: usize,
    /// Local image paths (`file://` or plain paths) are refused unless they are inside this directory.
    pub allowed_local_dir: Option<PathBuf>,
    /// Default `max_tokens` when the request gives none (clamped to what fits in the context).
    pub default_max_tokens: usize,
    /// Image decoding running at once (CPU work off the async threads).
    pub preprocess_concurrency: usize,
    /// UTF-8 bytes of text over all messages, checked right after parsing (before any template or tokenizer).
    pub max_text_bytes: usize,
    /// Messages per request.
    pub max_messages: usize,
    /// Bytes of decoded images held by admitted requests (queued or running), after each image is reduced to
    /// what the processor uses; past it new requests with images get a 503.
    pub max_queued_image_bytes: usize,
    /// Estimated memory of one request's prefill (attention scores and activations); larger prompts get a 400.
    pub max_prefill_bytes: u64,
    /// Other names requests may give as `model` (the served name is always accepted).
    pub model_aliases: Vec<String>,
    /// Accept any `model` value (llama.cpp's behaviour) instead of answering 404 for unknown names (vLLM's).
    pub accept_any_model: bool,
    /// From accepting a connection (or the end of the previous response) to the end of the request headers.
    pub header_read_timeout: Duration,
    /// For reading the whole request body.
    pub body_read_timeout: Duration,
    /// Open client connections; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_images_per_request: 8,
            max_image_bytes: 20 * 1024 * 1024,
            max_image_pixels: 40_000_000,
            max_body_bytes: 64 * 1024 * 1024,
            max_queue: 256,
            max_batch_size: 8,
            batch_window: Duration::from_millis(5),
            request_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
            dns_timeout: Duration::from_secs(3),
            allow_private_urls: false,
            allowed_url_ips: Vec::new(),
            dns: None,
            fetch_concurrency: 64,
            allowed_local_dir: None,
            default_max_tokens: 512,
            preprocess_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            max_text_bytes: 1024 * 1024,
            max_messages: 512,
            max_queued_image_bytes: 1024 * 1024 * 1024,
            max_prefill_bytes: 16 * 1024 * 1024 * 1024,
            model_aliases: Vec::new(),
            accept_any_model: false,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}
