//! `idefics quantize`: quantize a checkpoint once and save it (`model.gguf` + the model directory's files), so
//! that `--model OUT` loads the quantized weights without paying the quantization again.

use crate::model_source::{ModelArgs, QuantArgs};
use anyhow::{bail, Context, Result};
use idefics::{LoadOptions, VlmModel};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// Checkpoint directory or Hub id (default: the bundled model); `--quant` picks the type (required).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output directory (created; must not already hold a model.gguf).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let QuantArgs { quant, .. } = &args.model.quant;
    if quant.is_none() {
        bail!("--quant is required: q8_0, q5_0, q4k, q6k or bf16");
    }
    let quant = args.model.quant.config().context("--quant")?;
    let dir = args.model.resolve()?;
    if args.out.join(idefics::quant::store::STORE_FILE).exists() {
        bail!(
            "{} already holds a model.gguf; choose another --out",
            args.out.display()
        );
    }
    if args.out.canonicalize().ok() == dir.canonicalize().ok() {
        bail!("--out must differ from the model directory");
    }
    let t0 = Instant::now();
    let opts = LoadOptions {
        quant: Some(quant),
        ..LoadOptions::default()
    };
    let mut model =
        VlmModel::load(&dir, &opts).with_context(|| format!("loading {}", dir.display()))?;
    let summary = model
        .quant_report()
        .map(|r| r.summary())
        .unwrap_or_default();
    let loaded = t0.elapsed().as_secs_f64();
    model
        .save_quantized(quant, &dir, &args.out)
        .with_context(|| format!("saving to {}", args.out.display()))?;
    eprintln!("{summary}");
    eprintln!(
        "quantized in {loaded:.1} s, saved in {:.1} s: {}",
        t0.elapsed().as_secs_f64() - loaded,
        args.out.join(idefics::quant::store::STORE_FILE).display()
    );
    Ok(())
}
