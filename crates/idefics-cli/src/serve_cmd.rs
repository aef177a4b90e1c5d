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
    /// Allow image URLs that resolve to this address although it is not public (repeatable).
    #[arg(long = "allow-url-ip", value_name = "IP")]
    pub allow_url_ips: Vec<std::net::IpAddr>,
    /// Seconds allowed for one name lookup of an image URL's host.
    #[arg(long, default_value_t = 3.0)]
    pub dns_timeout: f64,
    /// Name(s) the model is served under (repeatable, as vLLM's --served-model-name): the first is reported by
    /// /v1/models and in responses, all are accepted as `model`. Default: the checkpoint directory's name, or
    /// the Hub id.
    #[arg(long = "served-model-name", value_name = "NAME")]
    pub served_model_names: Vec<String>,
    /// Accept any `model` in requests (llama.cpp's behaviour) instead of answering 404 for unknown names.
    #[arg(long)]
    pub accept_any_model: bool,
    /// UTF-8 bytes of text per request (all messages), checked before the template and tokenizer run.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_text_bytes: usize,
    /// Messages per request.
    #[arg(long, default_value_t = 512)]
    pub max_messages: usize,
    /// MiB of decoded images held by queued and running requests before new image requests get a 503.
    #[arg(long, default_value_t = 1024)]
    pub max_image_memory_mib: usize,
    /// MiB one request's prefill may need (estimated attention and activations); larger prompts get a 400.
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_prefill_mib: u64,
    /// Seconds a client has to send its request headers.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a client has to send its request body.
    #[arg(long, default_value_t = 60.0)]
    pub body_timeout: f64,
    /// Open client connections at once (more wait in the listen backlog).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
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

/// The name a checkpoint is served under when no --served-model-name is given: a local directory's own name
/// (`models/idefics2-tiny/` -> `idefics2-tiny`), a Hub id as it is, the bundled model's name without --model.
fn default_served_name(model: Option<&str>) -> String {
    match model {
        None => "idefics2-tiny".to_string(),
        Some(m) => {
            let path = std::path::Path::new(m);
            if path.is_dir() {
                path.canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| m.trim_end_matches('/').to_string())
            } else {
                m.to_string()
            }
        }
    }
}

/// The served name and the other names requests may use: further --served-model-name values, and the --model
/// argument as typed (clients configured with the path keep working).
fn served_names(args: &ServeArgs) -> (String, Vec<String>) {
    let model = args.model.model.as_deref();
    let mut names = args.served_model_names.clone();
    if names.is_empty() {
        names.push(default_served_name(model));
    }
    if let Some(m) = model {
        names.push(m.to_string());
    }
    let id = names.remove(0);
    names.retain(|n| *n != id);
    names.dedup();
    (id, names)
}

pub fn run(args: ServeArgs) -> Result<()> {
    let (model_id, model_aliases) = served_names(&args);
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
        allowed_url_ips: args.allow_url_ips.clone(),
        dns_timeout: secs("dns-timeout", args.dns_timeout)?,
        model_aliases,
        accept_any_model: args.accept_any_model,
        max_text_bytes: args.max_text_bytes,
        max_messages: args.max_messages,
        max_queued_image_bytes: args.max_image_memory_mib.saturating_mul(1024 * 1024),
        max_prefill_bytes: args.max_prefill_mib.saturating_mul(1024 * 1024),
        header_read_timeout: secs("header-timeout", args.header_timeout)?,
        body_read_timeout: secs("body-timeout", args.body_timeout)?,
        max_connections: args.max_connections,
        ..ServerConfig::default()
    };
    if let Some(dir) = &config.allowed_local_dir {
        if !dir.is_dir() {
            bail!("--allow-local-images {}: not a directory", dir.display());
        }
    }
    let engine: Arc<dyn ChatEngine> = if args.mock {
        Arc::new(MockEngine {
            model_id: if args.served_model_names.is_empty() {
                MockEngine::default().model_id
            } else {
                model_id
            },
            context_length: args.mock_context,
            max_batch_size: args.max_batch,
            step_delay: Duration::from_millis(args.mock_step_ms),
            ..MockEngine::default()
        })
    } else {
        let pipeline = args.model.load_pipeline()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_name_is_the_directory_name_or_the_hub_id() {
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("my-model");
        std::fs::create_dir(&model_dir).unwrap();
        let typed = format!("{}/", model_dir.display());
        assert_eq!(default_served_name(Some(&typed)), "my-model");
        assert_eq!(
            default_served_name(Some("HuggingFaceM4/idefics2-8b")),
            "HuggingFaceM4/idefics2-8b"
        );
        assert_eq!(default_served_name(None), "idefics2-tiny");
    }
}
