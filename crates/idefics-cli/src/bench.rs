//! `idefics bench`: the arguments and the printed table; the measuring is `idefics::bench::inference`, timed the
//! way `tools/reference/bench_transformers.py` times transformers, so the two JSON reports compare figure by figure.

use anyhow::Result;
use clap::Args;
use idefics::bench::{run_inference, BenchOptions};
use idefics::nn::KernelChoice;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// Checkpoint directory of any family (config.json model_type idefics2, idefics3 or smolvlm; *.safetensors;
    /// processor_config.json or preprocessor_config.json). No tokenizer: the requests are token ids.
    #[arg(long)]
    model: PathBuf,
    /// Request file (default MODEL/bench_inputs.json); image paths are relative to its directory.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Untimed runs before the timed ones.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs; every figure is their median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Warmup for the vision / TTFT figures (default --warmup).
    #[arg(long)]
    image_warmup: Option<usize>,
    /// Repeat for the vision / TTFT figures (default --repeat).
    #[arg(long)]
    image_repeat: Option<usize>,
    /// Single-token decoding steps after the 512-token prefill.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Request keys to leave out of the vision / TTFT timings (e.g. photo_980x980_split).
    #[arg(long, num_args = 0..)]
    skip: Vec<String>,
    /// Also measure the machine's peak FLOP/s, the f32 GEMM's ceiling on cache-resident blocks and the memory
    /// bandwidth, and report every phase as a fraction of the limit that bounds it (arithmetic for vision /
    /// prefill / TTFT, against both the FMA peak and the GEMM ceiling; bandwidth for decoding).
    #[arg(long)]
    machine: bool,
    /// Result file (default benches/results/<date>-idefics-rs.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// `fused`: this crate's CPU inference kernels (fused attention, decoding GEMV); `composed`: candle's ops.
    #[arg(long, default_value = "fused")]
    kernels: KernelChoice,
    /// How to store the linear weights in memory: `panels` (vision tower and connector transposed, text decoder
    /// and untied head in column panels: what ask / chat / serve / eval / forward load), `transposed` (every layer
    /// transposed), `checkpoint` (as stored).
    #[arg(long, default_value = "panels")]
    weight_layout: WeightLayoutArg,
    #[command(flatten)]
    quant: crate::model_source::QuantArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WeightLayoutArg {
    Checkpoint,
    Transposed,
    Panels,
}

impl From<WeightLayoutArg> for idefics::model::CpuWeightLayout {
    fn from(arg: WeightLayoutArg) -> Self {
        match arg {
            WeightLayoutArg::Checkpoint => Self::Checkpoint,
            WeightLayoutArg::Transposed => Self::Transposed,
            WeightLayoutArg::Panels => Self::Panels,
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let options = BenchOptions {
        model: args.model,
        inputs: args.inputs,
        warmup: args.warmup,
        repeat: args.repeat,
        image_warmup: args.image_warmup,
        image_repeat: args.image_repeat,
        decode_tokens: args.decode_tokens,
        skip: args.skip,
        machine: args.machine,
        json: args.json,
        kernels: args.kernels,
        weight_layout: args.weight_layout.into(),
        quant: args.quant.config(),
        command: std::env::args().collect(),
    };
    let report = run_inference(&options, &mut |line| eprintln!("{line}"))?;
    println!();
    println!("{}", options.command.join(" "));
    println!("{}", report.heading);
    for row in &report.rows {
        println!("  {:40} {:>16}  {}", row.what, row.value, row.note);
    }
    println!("wrote {}", report.json_path.display());
    Ok(())
}
