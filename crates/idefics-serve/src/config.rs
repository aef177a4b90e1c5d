//! Operator-facing settings: request limits, image fetching policy, queueing and timeouts.

use std::path::PathBuf;
use std::time::Duration;

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
    /// Timeout for fetching one `http(s)://` image (connect + headers + body).
    pub fetch_timeout: Duration,
    /// Allow image URLs that resolve to loopback / private / link-local addresses. Off by default (SSRF guard).
    pub allow_private_urls: bool,
    /// Local image paths (`file://` or plain paths) are refused unless they are inside this directory.
    pub allowed_local_dir: Option<PathBuf>,
    /// Default `max_tokens` when the request gives none (clamped to what fits in the context).
    pub default_max_tokens: usize,
    /// Image decoding / fetching running at once (CPU work off the async threads).
    pub preprocess_concurrency: usize,
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
            allow_private_urls: false,
            allowed_local_dir: None,
            default_max_tokens: 512,
            preprocess_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}
