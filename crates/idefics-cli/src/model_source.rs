//! Where the model comes from: a local directory, a Hub id (downloaded into the Hugging Face cache with a
//! progress bar), or the bundled model when none is named.

use anyhow::{bail, Context, Result};
use idefics::hub::{resolve_model, DownloadProgress, HubConfig};
use idefics::pipeline::Pipeline;
use idefics::quant::{QuantConfig, QuantType};
use idefics::LoadOptions;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// The model shipped in the repository; the default of `ask`, `chat`, `serve` and `eval`.
fn bundled_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/idefics2-tiny")
}

/// The bundled model's directory, or a clear error when it is missing (a checkout without `models/`).
pub fn bundled_model() -> Result<PathBuf> {
    let dir = bundled_model_dir();
    if !dir.join("config.json").exists() {
        bail!(
            "no --model given and the bundled model is not at {} (pass --model DIR or a Hub id)",
            dir.display()
        );
    }
    // A readable path in reports and logs (not .../crates/idefics-cli/../../models/...).
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// Options shared by every command that loads a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory or Hugging Face Hub id (e.g. HuggingFaceM4/idefics2-8b). Default: the bundled model.
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// Quantized loading (CPU): `--quant` and `--quant-vision`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct QuantArgs {
    /// Quantize the text decoder (linear layers, embeddings, head) while loading: q8_0, q5_0, q4k or q6k (GGUF block
    /// formats), or bf16 (16 bits a weight, f32 activations). Leaves exact parity with transformers; see the
    /// README's quantization table for the cost.
    #[arg(long, value_parser = parse_quant)]
    pub quant: Option<QuantType>,
    /// With --quant: quantize the vision tower and connector too (default: they stay f32).
    #[arg(long, requires = "quant")]
    pub quant_vision: bool,
}

fn parse_quant(s: &str) -> std::result::Result<QuantType, String> {
    s.parse()
}

impl QuantArgs {
    pub fn config(&self) -> Option<QuantConfig> {
        self.quant.map(|weights| QuantConfig {
            weights,
            vision: self.quant_vision,
        })
    }
}

impl ModelArgs {
    /// Resolves the model to a local directory, downloading from the Hub when needed.
    pub fn resolve(&self) -> Result<PathBuf> {
        let Some(model) = &self.model else {
            return bundled_model();
        };
        let bar = ProgressBar::hidden();
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:30} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut progress = |p: DownloadProgress| {
            if bar.is_hidden() && !p.done {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            }
            bar.set_message(p.file.to_string());
            bar.set_length(p.total.unwrap_or(p.downloaded));
            bar.set_position(p.downloaded);
        };
        let files = resolve_model(
            model,
            self.revision.as_deref(),
            &HubConfig::from_env(),
            &mut progress,
        )
        .with_context(|| format!("resolving model {model}"))?;
        bar.finish_and_clear();
        Ok(files.dir)
    }

    /// Resolves and loads the whole pipeline (model, processors, generation defaults).
    pub fn load_pipeline(&self) -> Result<Pipeline> {
        let dir = self.resolve()?;
        let opts = LoadOptions {
            device: device()?,
            quant: self.quant.config(),
            cpu_weight_layout: idefics::model::CpuWeightLayout::Panels,
            ..LoadOptions::default()
        };
        Pipeline::load(&dir, &opts).with_context(|| format!("loading {}", dir.display()))
    }
}

/// The device of `ask`, `chat`, `serve`, `eval` and `train`: `$IDEFICS_DEVICE` (`cpu`, `cuda`, `cuda:N`) when set,
/// else the first CUDA GPU when built with `--features cuda`, else the CPU.
pub fn device() -> Result<candle_core::Device> {
    if let Ok(spec) = std::env::var("IDEFICS_DEVICE") {
        return parse_device(&spec).context("IDEFICS_DEVICE");
    }
    #[cfg(feature = "cuda")]
    {
        return candle_core::Device::new_cuda(0).context(
            "opening cuda:0 (this binary is built with --features cuda; IDEFICS_DEVICE=cpu runs it on the CPU)",
        );
    }
    #[allow(unreachable_code)]
    Ok(candle_core::Device::Cpu)
}

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`; opening a GPU fails with candle's error (no GPU or driver, or a
/// binary built without the `cuda` feature).
pub fn parse_device(spec: &str) -> Result<candle_core::Device> {
    if spec == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda").map(|n| n.trim_start_matches(':')) {
        Some("") => 0,
        Some(n) => n
            .parse::<usize>()
            .with_context(|| format!("device {spec:?}: expected cpu or cuda:N"))?,
        None => bail!("device {spec:?}: expected cpu or cuda:N"),
    };
    candle_core::Device::new_cuda(ordinal).with_context(|| format!("opening {spec}"))
}

#[cfg(test)]
mod tests {
    use super::parse_device;

    #[test]
    fn device_specs_parse_or_fail_with_the_expected_forms() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cuda:-1", ""] {
            let err = format!("{:#}", parse_device(bad).unwrap_err());
            assert!(err.contains("expected cpu or cuda:N"), "{bad:?}: {err}");
        }
    }

    /// Without the `cuda` feature, asking for a GPU is an error that names it, not a panic.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_is_an_error_in_a_cpu_build() {
        for spec in ["cuda", "cuda:1"] {
            let err = format!("{:#}", parse_device(spec).unwrap_err());
            assert!(err.contains(&format!("opening {spec}")), "{spec}: {err}");
        }
    }
}
