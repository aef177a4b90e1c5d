//! `idefics train --config recipe.toml [--resume]` and `idefics merge`.
//!
//! Output directory of a run: `recipe.toml` (the copy it ran with), `metrics.jsonl` (one line per step, with
//! evaluations beside the loss), `checkpoints/step-N/` (resumable), `loss.png`, `final/` (a full Hugging Face
//! checkpoint, adapters merged) and `adapter/` (peft files, when something trains with LoRA / DoRA).

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use idefics::train::collate::Collator;
use idefics::train::data::MixtureStream;
use idefics::train::export::{export_trained, merge_adapter};
use idefics::train::recipe::Recipe;
use idefics::train::trainable::TrainableModel;
use idefics::train::trainer::{
    latest_checkpoint, StepMetrics, StreamBatches, TrainObserver, Trainer,
};
use idefics::train::TrainError;
use idefics::{Idefics2ForConditionalGeneration, LoadOptions};
use idefics_data::plot::{line_chart_png, Series};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The recipe (TOML): model, data mixture, what trains, optimizer, schedule, loop.
    #[arg(long)]
    pub config: PathBuf,
    /// Continue from the newest checkpoint in the output directory (weights / adapters, optimizer, schedule,
    /// RNG, data position).
    #[arg(long)]
    pub resume: bool,
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
    Ok(match s {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => DType::F16,
        other => bail!("--dtype {other:?}: use f32, bf16 or f16"),
    })
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
        self.bar.println(message);
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
        self.bar
            .println(format!("step {step}: eval {}", eval.summary(&result)));
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
    let recipe = Recipe::from_file(&args.config)?;
    single_threaded_ops_for(recipe.run.parallel_micro_batches);
    let out = recipe.output.dir.clone();
    let model_dir = recipe.model.path.clone();
    let device = super::model_source::device()?;

    let resume_from = if args.resume {
        let ck = latest_checkpoint(&out)?;
        if ck.is_none() {
            bail!(
                "--resume: no checkpoint under {}/checkpoints",
                out.display()
            );
        }
        ck
    } else {
        if out.join("checkpoints").is_dir()
            && std::fs::read_dir(out.join("checkpoints"))?.next().is_some()
        {
            bail!(
                "{} already holds checkpoints of a run: pass --resume to continue it, or choose another [output] dir",
                out.display()
            );
        }
        None
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::copy(&args.config, out.join("recipe.toml"))
        .with_context(|| format!("copying the recipe into {}", out.display()))?;

    let model = Idefics2ForConditionalGeneration::load(
        &model_dir,
        &LoadOptions {
            device: device.clone(),
            dtype: DType::F32,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading {}", model_dir.display()))?;
    let trainable = match &resume_from {
        Some(ck) => {
            let loaded = idefics::train::checkpoint::load_checkpoint(ck, &device)?;
            match &loaded.adapter {
                Some(adapter) => TrainableModel::with_adapter(model, &recipe.trainable, adapter)?,
                None => {
                    let mut rng = idefics::train::rng::TrainRng::seed_from_u64(recipe.run.seed);
                    TrainableModel::new(model, &recipe.trainable, &recipe.lora, &mut rng)?
                }
            }
        }
        None => {
            let mut rng = idefics::train::rng::TrainRng::seed_from_u64(recipe.run.seed);
            TrainableModel::new(model, &recipe.trainable, &recipe.lora, &mut rng)?
        }
    };
    eprintln!(
        "training {} tensors ({:.2} M parameters) of {}",
        trainable.params().len(),
        trainable.num_trainable() as f64 / 1e6,
        model_dir.display()
    );
    if recipe.optim.lr_scale != Default::default() {
        eprintln!(
            "learning-rate multipliers per component: {:?}",
            recipe.optim.lr_scale
        );
    }

    let collator = Collator::from_model_dir(&model_dir, recipe.data.collate.clone())?;
    let stream = MixtureStream::new(&recipe.data.sources, collator, recipe.data_seed())?;
    let mut data = StreamBatches {
        stream,
        device: device.clone(),
    };
    let mut trainer = Trainer::new(
        trainable,
        recipe.adamw(),
        recipe.optim.max_grad_norm,
        recipe.schedule(),
        recipe.run.clone(),
        &out,
    )?;
    if let Some(ck) = &resume_from {
        trainer.restore(ck, &mut data)?;
        eprintln!("resumed from {} (step {})", ck.display(), trainer.step());
    }

    let bar = ProgressBar::new(recipe.run.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let eval = match &recipe.eval {
        Some(e) => Some(super::train_eval::TrainEval::new(e, &model_dir)?),
        None => None,
    };
    let mut observer = ProgressObserver {
        bar: bar.clone(),
        eval,
    };
    let result = trainer.run(&mut data, &mut observer);
    bar.finish_and_clear();
    data.stream.skips().log_summary();
    let skipped = data.stream.skips().total_skipped();
    if skipped > 0 {
        eprintln!("skipped {skipped} samples: {:?}", data.stream.skips());
    }
    // The curve is drawn even when the run stopped (NaN, data error): it shows what happened.
    if let Err(e) = plot_metrics(&out) {
        eprintln!("warning: no loss curve: {e:#}");
    }
    result?;

    let final_dir = out.join("final");
    export_trained(
        trainer.model(),
        &model_dir,
        &final_dir,
        recipe.save_dtype()?,
    )?;
    if let Some(adapter) = trainer.model().peft_adapter()? {
        adapter.save(&out.join("adapter"))?;
    }
    println!(
        "done: {} steps; merged checkpoint in {}, metrics in {}",
        trainer.step(),
        final_dir.display(),
        out.join("metrics.jsonl").display()
    );
    Ok(())
}

/// `loss.png` from the whole `metrics.jsonl` (a resumed run plots its full curve), with evaluation accuracy
/// when present.
fn plot_metrics(out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let mut loss = Vec::new();
    let mut eval = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let (Some(step), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) else {
            continue;
        };
        loss.push((step, l));
        if let Some(acc) = v["eval"]["overall"].as_f64() {
            eval.push((step, acc / 100.0));
        }
    }
    // A moving average makes the trend readable over noisy per-step losses.
    let window = (loss.len() / 50).max(1);
    let smooth: Vec<(f64, f64)> = loss
        .iter()
        .enumerate()
        .map(|(i, &(s, _))| {
            let lo = i.saturating_sub(window - 1);
            let mean = loss[lo..=i].iter().map(|p| p.1).sum::<f64>() / (i - lo + 1) as f64;
            (s, mean)
        })
        .collect();
    let mut series = vec![
        Series {
            name: "loss",
            points: &loss,
            color: [170, 190, 230],
        },
        Series {
            name: "loss (moving average)",
            points: &smooth,
            color: [30, 80, 200],
        },
    ];
    if !eval.is_empty() {
        series.push(Series {
            name: "eval accuracy (fraction)",
            points: &eval,
            color: [210, 60, 30],
        });
    }
    let png = line_chart_png("training", "step", "loss / accuracy", &series)?;
    std::fs::write(out.join("loss.png"), png)?;
    Ok(())
}
