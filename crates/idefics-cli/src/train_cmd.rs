//! `idefics train --config recipe.toml [--resume]` (`idefics_train::run::run_recipe` with a progress bar and
//! evaluation during training) and `idefics merge`.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use idefics::quant::QuantType;
use idefics_train::export::merge_adapter;
use idefics_train::recipe::Recipe;
use idefics_train::run::run_recipe;
use idefics_train::trainable::TrainableModel;
use idefics_train::trainer::{StepMetrics, TrainObserver};
use idefics_train::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The recipe (TOML): model, data mixture, what trains, optimizer, schedule, loop.
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the newest checkpoint in the output directory (weights / adapters, optimizer, schedule,
    /// RNG, data position).
    #[arg(long)]
    pub resume: bool,
    /// Train LoRA / DoRA adapters on a quantized frozen base (QLoRA): q8_0, q5_0, q4k, q6k or bf16 for the text decoder's
    /// linear layers, embeddings and head, adapters in f32 (sets the recipe's `[model] quant`). A recipe that
    /// trains a quantized component fully is refused. Writes `adapter/`, no merged `final/`.
    #[arg(long, value_parser = |s: &str| s.parse::<QuantType>())]
    pub quant: Option<QuantType>,
    /// With --quant: quantize the vision tower and connector too.
    #[arg(long, requires = "quant")]
    pub quant_vision: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base checkpoint directory.
    #[arg(long)]
    pub base: PathBuf,
    /// A peft adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// dtype of the written weights (the merge itself is f32): f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

fn parse_dtype(s: &str) -> Result<DType> {
    match idefics::weights::parse_dtype(s) {
        Ok(d) if d != DType::F64 => Ok(d),
        _ => bail!("--dtype {s:?}: use f32, bf16 or f16"),
    }
}

pub fn run_merge(args: MergeArgs) -> Result<()> {
    merge_adapter(
        &args.base,
        &args.adapter,
        &args.out,
        parse_dtype(&args.dtype)?,
    )
    .with_context(|| {
        format!(
            "merging {} into {}",
            args.adapter.display(),
            args.base.display()
        )
    })?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Progress bar with loss, lr, grad norm, tokens/s and ETA.
struct ProgressObserver {
    bar: ProgressBar,
    eval: Option<super::train_eval::TrainEval>,
}

impl TrainObserver for ProgressObserver {
    fn on_start(&mut self, first_step: u64, total_steps: u64) {
        self.bar.set_length(total_steps);
        self.bar.set_position(first_step);
        self.bar.reset_eta();
    }

    fn on_step(&mut self, m: &StepMetrics) {
        self.bar.set_position(m.step);
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  grad-norm {:.3}  {:.0} tok/s",
            m.loss, m.lr, m.grad_norm, m.tokens_per_s
        ));
    }

    fn on_message(&mut self, message: &str) {
        // A hidden bar (stderr not a terminal) prints nothing: the message must still reach the user.
        if self.bar.is_hidden() {
            eprintln!("{message}");
        } else {
            self.bar.println(message);
        }
    }

    fn evaluate(
        &mut self,
        model: &TrainableModel,
        step: u64,
    ) -> Result<Option<serde_json::Value>, TrainError> {
        let Some(eval) = &mut self.eval else {
            return Ok(None);
        };
        let result = eval.run(model)?;
        let line = format!("step {step}: eval {}", eval.summary(&result));
        self.on_message(&line);
        Ok(Some(result))
    }
}

/// With training work on several threads of ours (micro-batches, SigLIP image groups), candle's own intra-op
/// threads only contend with them: make each op single-threaded, unless the user chose a thread count. Must
/// run before the first tensor op (candle sizes its thread pool once).
pub fn single_threaded_ops_for(worker_threads: usize) {
    if worker_threads <= 1 {
        return;
    }
    match std::env::var("RAYON_NUM_THREADS") {
        Ok(v) => tracing::warn!(
            RAYON_NUM_THREADS = %v,
            "worker threads with RAYON_NUM_THREADS set by the caller; 1 is usually fastest"
        ),
        Err(_) => {
            // Called at start-up, before any other thread exists.
            std::env::set_var("RAYON_NUM_THREADS", "1");
            tracing::info!(
                worker_threads,
                "RAYON_NUM_THREADS=1 (one op thread per worker)"
            );
        }
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    let mut recipe = Recipe::from_file(&args.config)?;
    if let Some(quant) = args.quant {
        recipe.model.quant = Some(quant);
        recipe.model.quant_vision = args.quant_vision;
        recipe
            .validate()
            .with_context(|| format!("{} with --quant {quant}", args.config.display()))?;
    }
    single_threaded_ops_for(recipe.run.parallel_micro_batches);
    let device = super::model_source::device()?;
    let bar = ProgressBar::new(recipe.run.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let eval = match &recipe.eval {
        Some(e) => Some(super::train_eval::TrainEval::new(e, &recipe.model.path)?),
        None => None,
    };
    let mut observer = ProgressObserver {
        bar: bar.clone(),
        eval,
    };
    let result = run_recipe(&recipe, &args.config, args.resume, &device, &mut observer);
    bar.finish_and_clear();
    let summary = result.with_context(|| format!("training run {}", args.config.display()))?;
    if summary.skipped.total_skipped() > 0 {
        eprintln!(
            "skipped {} samples: {:?}",
            summary.skipped.total_skipped(),
            summary.skipped
        );
    }
    let mut outputs = Vec::new();
    if let Some(dir) = &summary.final_dir {
        outputs.push(format!("merged checkpoint in {}", dir.display()));
    }
    if let Some(dir) = &summary.adapter_dir {
        outputs.push(format!("adapter in {}", dir.display()));
    }
    outputs.push(format!("metrics in {}", summary.metrics_path.display()));
    println!("done: {} steps; {}", summary.steps, outputs.join(", "));
    Ok(())
}
