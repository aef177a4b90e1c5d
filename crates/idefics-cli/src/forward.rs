//! `idefics forward`: logits for saved inputs, to compare with transformers.

use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// Checkpoint directory (config.json + safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors file with input_ids, attention_mask, pixel_values, pixel_attention_mask.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the logits (safetensors, f32).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(_args: ForwardArgs) -> Result<()> {
    bail!("idefics forward is not implemented yet")
}
