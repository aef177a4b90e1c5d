//! `idefics bench-gemv`: decoding's matrix-vector products on their own, per weight shape: the f32 GEMV in both
//! weight layouts beside a plain read of the same bytes,
//! candle's quantized path and this crate's quantized kernels side by side in one run, as weight bytes per
//! second and as a fraction of the machine's measured memory bandwidth.

use anyhow::Result;
use clap::Args;
use idefics::bench::gemv::{self, GemvShape};
use idefics::bench::inference::{build_profile, loadavg, machine_info, utc_now};
use idefics::bench::probe_bandwidth;
use idefics::quant::QuantType;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchGemvArgs {
    /// Weight shapes as IN x OUT. Default: SmolVLM-256M's and -500M's MLP projections and head, then
    /// bench-150m's (Idefics2, text 512 wide).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "576x1536,1536x576,576x49280,960x2560,2560x960,512x1536,1536x512,512x32003"
    )]
    shapes: Vec<GemvShape>,
    /// Quantized types (a type is skipped for a shape whose input width does not fit its block).
    #[arg(long, value_delimiter = ',', default_value = "q8_0,q5_0,q4k,q6k,bf16")]
    types: Vec<String>,
    /// Rows of the input (1: decoding one sequence).
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Bytes of weight copies each variant cycles through, to keep the products out of the caches.
    #[arg(long, default_value_t = 256 << 20)]
    working_set: usize,
    /// Rounds (variants alternate within a round); figures are medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Least time of one variant's round, seconds.
    #[arg(long, default_value_t = 0.3)]
    seconds: f64,
    /// Result file (JSON).
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: BenchGemvArgs) -> Result<()> {
    let types = args
        .types
        .iter()
        .map(|t| t.parse::<QuantType>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    if args.rows == 0 {
        anyhow::bail!("--rows must be at least 1");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bandwidth = probe_bandwidth(threads, 256 << 20, 3);
    eprintln!(
        "memory bandwidth ({threads} threads, 256 MiB): copy {:.1} GB/s, read {:.1} GB/s",
        bandwidth.copy / 1e9,
        bandwidth.read / 1e9
    );
    let figures = gemv::run(
        &args.shapes,
        &types,
        args.rows,
        args.working_set,
        args.rounds,
        args.seconds,
    )?;
    eprintln!(
        "{:>10} {:>5} {:>12} {:>9} {:>10} {:>8} {:>11} {:>8}",
        "shape", "type", "path", "MB", "us", "GB/s", "x read bw", "x f32"
    );
    let mut rows = Vec::new();
    for f in &figures {
        let f32_time = figures
            .iter()
            .find(|g| g.shape == f.shape && g.dtype == "f32")
            .map_or(f64::NAN, |g| g.seconds);
        let fraction = f.bytes_per_second / bandwidth.best();
        eprintln!(
            "{:>10} {:>5} {:>12} {:>9.2} {:>10.1} {:>8.1} {:>11.2} {:>8.2}",
            f.shape,
            f.dtype,
            f.path,
            f.weight_bytes as f64 / 1e6,
            f.seconds * 1e6,
            f.bytes_per_second / 1e9,
            fraction,
            f32_time / f.seconds
        );
        let mut row = serde_json::to_value(f)?;
        row["bandwidth_fraction"] = json!(fraction);
        row["speed_x_f32"] = json!(f32_time / f.seconds);
        rows.push(row);
    }
    let out = json!({
        "tool": "idefics-rs bench-gemv",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "date_utc": utc_now(),
        "settings": {"rows": args.rows, "working_set": args.working_set, "rounds": args.rounds,
                     "seconds": args.seconds, "threads": threads},
        "versions": {"idefics-rs": env!("CARGO_PKG_VERSION"), "build_profile": build_profile()},
        "machine": machine_info(),
        "loadavg": loadavg(),
        "bandwidth": {"copy": bandwidth.copy, "read": bandwidth.read, "buffer_bytes": bandwidth.buffer_bytes},
        "figures": rows,
    });
    if let Some(path) = &args.json {
        idefics::bench::report::write_json(path, &out)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
