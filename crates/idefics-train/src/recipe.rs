//! Training recipes as TOML (`idefics train --config recipe.toml`): the model to start from, the data mixture,
//! what trains, the optimizer and schedule, the loop, evaluation. Unknown keys are errors (a typo must not
//! silently fall back to a default). Relative paths are resolved against the directory the command runs in.
//!
//! ```toml
//! [model]
//! path = "runs/tiny/init"            # a Hugging Face checkpoint directory: Idefics2, Idefics3 or SmolVLM
//!                                    # (config.json model_type)
//! quant = "q4k"                      # optional: train adapters on a quantized frozen base (QLoRA): q8_0 | q5_0 | q4k
//!                                    # | q6k | bf16, the text decoder's linears, embeddings and head (`idefics train
//!                                    # --quant` sets it); `quant_vision = true` quantizes the vision side too
//!
//! [output]
//! dir = "runs/tiny/sft"              # checkpoints/, metrics.jsonl, loss.png, final/ (merged), adapter/
//! save_dtype = "f32"                 # dtype of final/model.safetensors
//!
//! [[data.sources]]
//! kind = "cauldron"                  # cauldron | pairs | documents
//! paths = ["data/train/cauldron"]
//! weight = 1.0
//!
//! [data.collate]
//! max_seq_len = 512
//! split_fraction = 0.5
//!
//! [trainable]                        # frozen | full | lora | dora, per component
//! vision = "dora"
//! projection = "full"
//! perceiver = "full"                # Idefics2 only (Idefics3 / SmolVLM have none: leave it out)
//! text = "dora"
//!
//! [lora]
//! r = 8
//! alpha = 16
//!
//! [optim]
//! lr = 1e-4
//! weight_decay = 0.1
//! warmup_steps = 50
//! decay = "cosine"
//!
//! [optim.lr_scale]                   # optional: lr multipliers per component (default 1)
//! perceiver = 0.3
//!
//! [run]
//! steps = 1000
//! batch_size = 4                     # examples per micro-batch
//! grad_accum = 2                     # micro-batches per optimizer step (8 examples)
//! parallel_micro_batches = 2         # run at once, one thread each (CPU: faster for small models)
//! neftune_alpha = 5.0
//!
//! [eval]                             # optional: scored every `run.eval_every` steps
//! data = "data/heldout/cauldron"
//! limit = 64
//! ```

use super::collate::CollateConfig;
use super::data::SourceSpec;
use super::optimizer::{AdamWConfig, LrScales};
use super::schedule::{Decay, LrSchedule};
use super::trainable::Tuning;
use super::trainable::{AdapterSpec, TrainablePlan};
use super::trainer::LoopConfig;
use super::TrainError;
use candle_core::DType;
use idefics::quant::{QuantConfig, QuantType};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A whole recipe file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub model: ModelSection,
    pub output: OutputSection,
    pub data: DataSection,
    #[serde(default)]
    pub trainable: TrainablePlan,
    #[serde(default)]
    pub lora: AdapterSpec,
    pub optim: OptimSection,
    pub run: LoopConfig,
    #[serde(default)]
    pub eval: Option<EvalSection>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hugging Face checkpoint directory to start from.
    pub path: PathBuf,
    /// Quantize the frozen base while loading (QLoRA): the text decoder's linear layers, token embeddings and
    /// head, as `--quant` does for inference. Only adapters (and unquantized components) can train then.
    #[serde(default)]
    pub quant: Option<QuantType>,
    /// With `quant`: quantize the vision tower and connector too.
    #[serde(default)]
    pub quant_vision: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub dir: PathBuf,
    /// `f32`, `bf16` or `f16` for the merged checkpoint in `final/`.
    #[serde(default = "default_save_dtype")]
    pub save_dtype: String,
}

fn default_save_dtype() -> String {
    "f32".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub sources: Vec<SourceSpec>,
    #[serde(default)]
    pub collate: CollateConfig,
    /// Seed of the data order (default: `run.seed`).
    #[serde(default)]
    pub seed: Option<u64>,
}

/// AdamW, clipping and the learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this (none when absent).
    #[serde(default = "default_clip")]
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_decay")]
    pub decay: Decay,
    /// Floor of the decay as a fraction of `lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// `[optim.lr_scale]`: learning-rate multipliers per component (default 1).
    #[serde(default)]
    pub lr_scale: LrScales,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> Option<f64> {
    Some(1.0)
}
fn default_decay() -> Decay {
    Decay::Cosine
}

/// Evaluation during training on a held-out Cauldron-format set (exact match per source / task family).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub data: PathBuf,
    /// Samples scored each time.
    #[serde(default = "default_eval_limit")]
    pub limit: usize,
    #[serde(default = "default_eval_tokens")]
    pub max_new_tokens: usize,
    /// Image splitting at evaluation (default: the processor config's).
    #[serde(default)]
    pub split: Option<bool>,
}

fn default_eval_limit() -> usize {
    64
}
fn default_eval_tokens() -> usize {
    16
}

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        Self::from_toml(&text).map_err(|e| match e {
            TrainError::Invalid(msg) => TrainError::Invalid(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, TrainError> {
        let recipe: Recipe =
            toml::from_str(text).map_err(|e| TrainError::Invalid(format!("recipe: {e}")))?;
        recipe.validate()?;
        Ok(recipe)
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        self.run.validate()?;
        self.data.collate.validate()?;
        self.save_dtype()?;
        self.schedule().validate()?;
        let o = &self.optim;
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(TrainError::Invalid(
                "[optim] weight_decay must be >= 0".into(),
            ));
        }
        if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) || o.eps.is_nan() || o.eps <= 0.0 {
            return Err(TrainError::Invalid(
                "[optim] betas must be in [0, 1) and eps > 0".into(),
            ));
        }
        o.lr_scale.validate()?;
        if self.data.sources.is_empty() {
            return Err(TrainError::Invalid(
                "[data] needs at least one [[data.sources]] entry".into(),
            ));
        }
        self.validate_quant()?;
        if self.eval.is_some() && self.run.eval_every.is_none() {
            return Err(TrainError::Invalid(
                "[eval] is set but [run] eval_every is not: say how often to evaluate".into(),
            ));
        }
        Ok(())
    }

    /// What the base is quantized to while loading (QLoRA), if anything.
    pub fn quant_config(&self) -> Option<QuantConfig> {
        self.model.quant.map(|weights| QuantConfig {
            weights,
            vision: self.model.quant_vision,
        })
    }

    /// A quantized base trains adapters only: full fine-tuning of a quantized component is refused here, before
    /// anything loads (the model conversion refuses it per tensor as well).
    fn validate_quant(&self) -> Result<(), TrainError> {
        let Some(ty) = self.model.quant else {
            if self.model.quant_vision {
                return Err(TrainError::Invalid(
                    "[model] quant_vision needs quant (q8_0, q5_0, q4k, q6k or bf16)".into(),
                ));
            }
            return Ok(());
        };
        let t = &self.trainable;
        let mut quantized = vec![
            ("text", t.text),
            ("embeddings", t.embeddings),
            ("lm_head", t.lm_head),
        ];
        if self.model.quant_vision {
            quantized.extend([
                ("vision", t.vision),
                ("projection", t.projection),
                ("perceiver", t.perceiver),
            ]);
        }
        let full: Vec<&str> = quantized
            .iter()
            .filter(|(_, tuning)| *tuning == Tuning::Full)
            .map(|(name, _)| *name)
            .collect();
        if !full.is_empty() {
            return Err(TrainError::Invalid(format!(
                "[trainable] {} = \"full\" on a {ty} base: full fine-tuning needs dense weights; a quantized base \
                 trains LoRA / DoRA adapters (set them to \"lora\" or \"dora\", or \"frozen\"), or drop the \
                 quantization",
                full.join(", ")
            )));
        }
        Ok(())
    }

    pub fn save_dtype(&self) -> Result<DType, TrainError> {
        let name = &self.output.save_dtype;
        idefics::weights::parse_dtype(name)
            .ok()
            .filter(|d| *d != DType::F64)
            .ok_or_else(|| {
                TrainError::Invalid(format!(
                    "[output] save_dtype {name:?}: use f32, bf16 or f16"
                ))
            })
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.optim.betas[0],
            beta2: self.optim.betas[1],
            eps: self.optim.eps,
            weight_decay: self.optim.weight_decay,
            lr_scales: self.optim.lr_scale,
        }
    }

    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            peak_lr: self.optim.lr,
            warmup_steps: self.optim.warmup_steps,
            total_steps: self.run.steps,
            decay: self.optim.decay,
            min_ratio: self.optim.min_lr_ratio,
        }
    }

    pub fn data_seed(&self) -> u64 {
        self.data.seed.unwrap_or(self.run.seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
path = "m"
[output]
dir = "out"
[[data.sources]]
kind = "cauldron"
paths = ["d"]
[optim]
lr = 1e-3
[run]
steps = 10
"#;

    #[test]
    fn minimal_recipe_gets_defaults() {
        let r = Recipe::from_toml(MINIMAL).unwrap();
        assert_eq!(r.run.batch_size, 1);
        assert_eq!(r.optim.max_grad_norm, Some(1.0));
        assert_eq!(r.lora.r, 8);
        assert_eq!(r.save_dtype().unwrap(), DType::F32);
        assert_eq!(r.schedule().total_steps, 10);
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let typo = MINIMAL.replace("[run]\nsteps = 10", "[run]\nsteps = 10\nbatchsize = 4");
        let err = Recipe::from_toml(&typo).unwrap_err().to_string();
        assert!(err.contains("batchsize"), "{err}");
        let bad_mode = format!("{MINIMAL}\n[trainable]\ntext = \"qlora\"\n");
        let err = Recipe::from_toml(&bad_mode).unwrap_err().to_string();
        assert!(err.contains("qlora"), "{err}");
        let zero = MINIMAL.replace("steps = 10", "steps = 0");
        assert!(Recipe::from_toml(&zero)
            .unwrap_err()
            .to_string()
            .contains("steps"));
        let eval_without_every = format!("{MINIMAL}\n[eval]\ndata = \"h\"\n");
        let err = Recipe::from_toml(&eval_without_every)
            .unwrap_err()
            .to_string();
        assert!(err.contains("eval_every"), "{err}");
    }

    #[test]
    fn lr_scales_per_component_parse_and_validate() {
        let scaled = format!("{MINIMAL}\n[optim.lr_scale]\nperceiver = 0.3\nvision = 0.0\n");
        let scales = Recipe::from_toml(&scaled).unwrap().adamw().lr_scales;
        assert_eq!(
            (scales.perceiver, scales.vision, scales.text),
            (0.3, 0.0, 1.0)
        );
        assert_eq!(
            scales.of("model.connector.perceiver_resampler.latents"),
            0.3
        );
        assert_eq!(
            scales.of("model.text_model.layers.0.mlp.up_proj.lora_A"),
            1.0
        );
        let typo = format!("{MINIMAL}\n[optim.lr_scale]\nconnector = 0.3\n");
        let err = Recipe::from_toml(&typo).unwrap_err().to_string();
        assert!(
            err.contains("connector"),
            "an unknown component must be an error: {err}"
        );
        let negative = format!("{MINIMAL}\n[optim.lr_scale]\ntext = -1.0\n");
        let err = Recipe::from_toml(&negative).unwrap_err().to_string();
        assert!(err.contains("optim.lr_scale.text"), "{err}");
    }

    #[test]
    fn a_quantized_base_refuses_full_fine_tuning() {
        let with = |extra: &str| MINIMAL.replace("path = \"m\"", &format!("path = \"m\"\n{extra}"));
        let lora = format!(
            "{}\n[trainable]\ntext = \"lora\"\n",
            with("quant = \"q4k\"")
        );
        let r = Recipe::from_toml(&lora).unwrap();
        assert_eq!(
            r.quant_config().map(|q| (q.weights, q.vision)),
            Some((QuantType::Q4K, false))
        );
        let full = format!(
            "{}\n[trainable]\ntext = \"full\"\nembeddings = \"full\"\n",
            with("quant = \"q8_0\"")
        );
        let err = Recipe::from_toml(&full).unwrap_err().to_string();
        assert!(
            err.contains("text, embeddings") && err.contains("q8_0"),
            "{err}"
        );
        // The vision side is not quantized unless asked: training it fully beside a quantized text model is fine.
        let vision_full = format!(
            "{}\n[trainable]\nvision = \"full\"\ntext = \"dora\"\n",
            with("quant = \"q8_0\"")
        );
        assert!(Recipe::from_toml(&vision_full).is_ok());
        let quantized_vision = format!(
            "{}\n[trainable]\nvision = \"full\"\ntext = \"dora\"\n",
            with("quant = \"q8_0\"\nquant_vision = true")
        );
        let err = Recipe::from_toml(&quantized_vision)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vision"), "{err}");
        let err = Recipe::from_toml(&with("quant_vision = true"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("quant_vision needs quant"), "{err}");
        let err = Recipe::from_toml(&with("quant = \"q5\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("q5"), "{err}");
    }
}
