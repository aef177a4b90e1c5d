//! `idefics serve`: the OpenAI-compatible server (crates/idefics-serve) on the command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use idefics_serve::pipeline_engine::PipelineEngine;
use idefics_serve::{ChatEngine, MockEngine, ServerConfig};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: crate::model_source::ModelArgs,
    /// Serve the deterministic mock engine (echoes the prompt; for trying clients and load tests).
    #[arg(long)]
    pub mock: bool,
    /// Address to listen on. Keep 127.0.0.1 unless the server sits behind an authenticating proxy.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Images per request (all messages together).
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// Bytes per encoded image.
    #[arg(long, default_value_t = 20 * 1024 * 1024)]
    pub max_image_bytes: usize,
    /// Pixels (width × height) per image, checked before decoding.
    #[arg(long, default_value_t = 40_000_000)]
    pub max_image_pixels: u64,
    /// Requests waiting for the model before new ones get a 503.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Requests generated together in one batch.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Seconds from arrival to the last token.
    #[arg(long, default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Seconds allowed to fetch one http(s) image.
    #[arg(long, default_value_t = 10.0)]
    pub fetch_timeout: f64,
    /// Seconds in-flight requests may keep running after Ctrl-C / SIGTERM.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// max_tokens when a request does not set it (clamped to the context).
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// Allow image URLs that are local file paths inside this directory.
    #[arg(long, value_name = "DIR")]
    pub allow_local_images: Option<PathBuf>,
    /// Allow image URLs pointing at loopback / private network addresses.
    #[arg(long)]
    pub allow_private_urls: bool,
    /// Mock engine only: milliseconds per generated token.
    #[arg(long, default_value_t = 0)]
    pub mock_step_ms: u64,
    /// Mock engine only: context length.
    #[arg(long, default_value_t = 4096)]
    pub mock_context: usize,
}

fn secs(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let config = ServerConfig {
        max_images_per_request: args.max_images,
        max_image_bytes: args.max_image_bytes,
        max_image_pixels: args.max_image_pixels,
        max_queue: args.max_queue,
        max_batch_size: args.max_batch,
        request_timeout: secs("request-timeout", args.request_timeout)?,
        fetch_timeout: secs("fetch-timeout", args.fetch_timeout)?,
        shutdown_grace: secs("shutdown-grace", args.shutdown_grace)?,
        default_max_tokens: args.default_max_tokens,
        allowed_local_dir: args.allow_local_images.clone(),
        allow_private_urls: args.allow_private_urls,
        ..ServerConfig::default()
    };
    if let Some(dir) = &config.allowed_local_dir {
        if !dir.is_dir() {
            bail!("--allow-local-images {}: not a directory", dir.display());
        }
    }
    let engine: Arc<dyn ChatEngine> = if args.mock {
        Arc::new(MockEngine {
            context_length: args.mock_context,
            max_batch_size: args.max_batch,
            step_delay: Duration::from_millis(args.mock_step_ms),
            ..MockEngine::default()
        })
    } else {
        let pipeline = args.model.load_pipeline()?;
        let model_id = args
            .model
            .model
            .clone()
            .unwrap_or_else(|| "idefics2-tiny".to_string());
        Arc::new(PipelineEngine::new(pipeline, model_id, args.max_batch))
    };
    let addr = format!("{}:{}", args.host, args.port);
    eprintln!(
        "idefics serve: {} on http://{addr} (Ctrl-C to stop)",
        engine.model_id()
    );
    idefics_serve::serve_until_signal(engine, config, addr.as_str())
        .with_context(|| format!("serving on {addr}"))
}
