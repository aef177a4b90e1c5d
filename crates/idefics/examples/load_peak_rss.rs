//! Peak memory while loading a checkpoint: `cargo run --release -p idefics --example load_peak_rss -- MODEL_DIR`.
//!
//! Prints the f32 bytes of the weights, VmRSS before loading and VmHWM (peak RSS) after, and their ratio. The
//! loader's target is a peak of at most 1.3x the f32 weight bytes.

use idefics::weights::{current_rss_bytes, peak_rss_bytes, Checkpoint};
use idefics::{Idefics2ForConditionalGeneration, LoadOptions};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: load_peak_rss MODEL_DIR")?
        .into();
    let weight_bytes = Checkpoint::open(&dir)?.bytes_as(candle_core::DType::F32) as f64;
    let before = current_rss_bytes().unwrap_or(0) as f64;
    let t0 = std::time::Instant::now();
    let model = Idefics2ForConditionalGeneration::load(&dir, &LoadOptions::default())?;
    let secs = t0.elapsed().as_secs_f64();
    let peak = peak_rss_bytes().ok_or("no /proc/self/status (Linux only)")? as f64;
    let gib = |b: f64| b / (1u64 << 30) as f64;
    println!("model: {}", dir.display());
    println!("f32 weight bytes: {:.3} GiB", gib(weight_bytes));
    println!("RSS before load:  {:.3} GiB", gib(before));
    println!(
        "peak RSS (VmHWM): {:.3} GiB  = {:.3}x the f32 weights",
        gib(peak),
        peak / weight_bytes
    );
    println!("load time: {secs:.1} s");
    drop(model);
    Ok(())
}
