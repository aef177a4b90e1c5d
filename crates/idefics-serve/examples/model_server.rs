//! The server on a real checkpoint (the Idefics2 pipeline), without building the `idefics` CLI; used by the soak
//! test (tools/loadtest/soak.py):
//! `cargo run -p idefics-serve --example model_server -- --model models/idefics2-tiny --port 8080`
//!
//! Options (each takes a value): --model DIR, --port, --max-batch, --max-queue, --header-timeout SECONDS,
//! --body-timeout SECONDS, --max-image-memory-mib, --max-prefill-mib. Everything else is `ServerConfig::default()`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use idefics::pipeline::Pipeline;
use idefics::LoadOptions;
use idefics_serve::pipeline_engine::PipelineEngine;
use idefics_serve::ServerConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = PathBuf::from("models/idefics2-tiny");
    let mut port = 8080u16;
    let mut config = ServerConfig::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).ok_or("every option takes a value")?;
        match pair[0].as_str() {
            "--model" => model = PathBuf::from(value),
            "--port" => port = value.parse()?,
            "--max-batch" => config.max_batch_size = value.parse()?,
            "--max-queue" => config.max_queue = value.parse()?,
            "--header-timeout" => {
                config.header_read_timeout = Duration::try_from_secs_f64(value.parse()?)?
            }
            "--body-timeout" => {
                config.body_read_timeout = Duration::try_from_secs_f64(value.parse()?)?
            }
            "--max-image-memory-mib" => {
                config.max_queued_image_bytes = value.parse::<usize>()? * 1024 * 1024
            }
            "--max-prefill-mib" => config.max_prefill_bytes = value.parse::<u64>()? * 1024 * 1024,
            other => {
                return Err(format!("unknown option {other} (see the file's doc comment)").into())
            }
        }
    }
    let pipeline = Pipeline::load(&model, &LoadOptions::default())?;
    let name = model
        .canonicalize()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let engine = PipelineEngine::new(pipeline, name.clone(), config.max_batch_size);
    eprintln!("{name} on http://127.0.0.1:{port}");
    idefics_serve::serve_until_signal(Arc::new(engine), config, ("127.0.0.1", port))?;
    Ok(())
}
