//! The server with the mock engine, without the `idefics` CLI (which needs the whole model stack built):
//! `cargo run -p idefics-serve --example mock_server -- --port 8080 --step-ms 2`

use std::sync::Arc;
use std::time::Duration;

use idefics_serve::{MockEngine, ServerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 8080u16;
    let mut step_ms = 0u64;
    let mut config = ServerConfig::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).ok_or("every option takes a value")?;
        match pair[0].as_str() {
            "--port" => port = value.parse()?,
            "--step-ms" => step_ms = value.parse()?,
            "--max-queue" => config.max_queue = value.parse()?,
            "--max-batch" => config.max_batch_size = value.parse()?,
            other => {
                return Err(format!(
                    "unknown option {other} (--port, --step-ms, --max-queue, --max-batch)"
                )
                .into())
            }
        }
    }
    let engine = MockEngine {
        step_delay: Duration::from_millis(step_ms),
        max_batch_size: config.max_batch_size,
        ..MockEngine::default()
    };
    eprintln!("mock server on http://127.0.0.1:{port}");
    idefics_serve::serve_until_signal(Arc::new(engine), config, ("127.0.0.1", port))?;
    Ok(())
}
