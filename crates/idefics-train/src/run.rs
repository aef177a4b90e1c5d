//! A whole training run from a recipe: load the model, apply the plan, stream the data mixture, run the loop
//! (resumable), then write the merged checkpoint, the PEFT adapter and the loss curve.
//!
//! Output directory of a run: `recipe.toml` (the copy it ran with), `metrics.jsonl` (one line per step, with
//! evaluations beside the loss), `checkpoints/step-N/` (resumable), `loss.png`, `final/` (a full Hugging Face
//! checkpoint, adapters merged) and `adapter/` (peft files, when something trains with LoRA / DoRA).
//!
//! On a quantized base (`[model] quant`, QLoRA) there is no `final/`: merged into the dequantized base it would
//! carry the rounding of the quantization into a full f32 checkpoint (and need the f32 memory the quantization
//! saved). The adapter is the result; `idefics merge --base MODEL --adapter OUT/adapter` merges it into the
//! original f32 weights, as peft users merge a QLoRA adapter into the unquantized model. `quant.json` records
//! the quantization, and `--resume` refuses a different one.

use crate::collate::Collator;
use crate::data::{MixtureStream, SkipCounts};
use crate::export::export_trained;
use crate::recipe::Recipe;
use crate::rng::TrainRng;
use crate::trainable::TrainableModel;
use crate::trainer::{latest_checkpoint, StreamBatches, TrainObserver, Trainer};
use crate::TrainError;
use candle_core::{DType, Device};
use idefics::model::VlmModel;
use idefics::LoadOptions;
use idefics_data::plot::{line_chart_png, Series};
use std::path::{Path, PathBuf};

/// What a finished run produced.
#[derive(Debug)]
pub struct RunSummary {
    /// Optimizer steps done in all (a resumed run counts the steps before it).
    pub steps: u64,
    /// The merged Hugging Face checkpoint (`None` on a quantized base, see the module docs).
    pub final_dir: Option<PathBuf>,
    /// The PEFT adapter, when something trained with LoRA / DoRA.
    pub adapter_dir: Option<PathBuf>,
    pub metrics_path: PathBuf,
    /// Samples the data mixture skipped, by reason.
    pub skipped: SkipCounts,
}

/// Runs `recipe` (read from `recipe_path`, which is copied into the output directory) on `device`.
/// `resume` continues from the newest checkpoint of the output directory; without it, a directory that
/// already holds checkpoints is refused rather than overwritten. Progress, messages and evaluations go to
/// `observer`.
pub fn run_recipe(
    recipe: &Recipe,
    recipe_path: &Path,
    resume: bool,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<RunSummary, TrainError> {
    let out = recipe.output.dir.clone();
    let model_dir = recipe.model.path.clone();
    let checkpoints = out.join("checkpoints");
    let resume_from = if resume {
        let ck = latest_checkpoint(&out)?;
        if ck.is_none() {
            return Err(TrainError::Invalid(format!(
                "--resume: no checkpoint under {}",
                checkpoints.display()
            )));
        }
        ck
    } else {
        let has_checkpoints = std::fs::read_dir(&checkpoints)
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        if has_checkpoints {
            return Err(TrainError::Invalid(format!(
                "{} already holds checkpoints of a run: pass --resume to continue it, or choose another \
                 [output] dir",
                out.display()
            )));
        }
        None
    };
    std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;
    check_run_quant(&out, recipe.quant_config(), resume_from.is_some())?;
    let recipe_copy = out.join("recipe.toml");
    std::fs::copy(recipe_path, &recipe_copy).map_err(|e| TrainError::io(&recipe_copy, e))?;

    // The family (Idefics2, Idefics3, SmolVLM) comes from config.json's model_type.
    let model = VlmModel::load(
        &model_dir,
        &LoadOptions {
            device: device.clone(),
            dtype: DType::F32,
            quant: recipe.quant_config(),
            ..Default::default()
        },
    )?;
    if let Some(report) = model.quant_report() {
        observer.on_message(&format!("frozen base quantized: {}", report.summary()));
    }
    let loaded = match &resume_from {
        Some(ck) => Some(crate::checkpoint::load_checkpoint(ck, device)?),
        None => None,
    };
    let trainable = match loaded.as_ref().and_then(|l| l.adapter.as_ref()) {
        Some(adapter) => TrainableModel::with_adapter(model, &recipe.trainable, adapter)?,
        None => {
            let mut rng = TrainRng::seed_from_u64(recipe.run.seed);
            TrainableModel::new(model, &recipe.trainable, &recipe.lora, &mut rng)?
        }
    };
    observer.on_message(&format!(
        "training {} tensors ({:.2} M parameters) of {}",
        trainable.params().len(),
        trainable.num_trainable() as f64 / 1e6,
        model_dir.display()
    ));
    if recipe.optim.lr_scale != Default::default() {
        observer.on_message(&format!(
            "learning-rate multipliers per component: {:?}",
            recipe.optim.lr_scale
        ));
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
        observer.on_message(&format!(
            "resumed from {} (step {})",
            ck.display(),
            trainer.step()
        ));
    }

    let result = trainer.run(&mut data, observer);
    data.stream.skips().log_summary();
    // The curve is drawn even when the run stopped (NaN, data error): it shows what happened.
    if let Err(e) = plot_metrics(&out) {
        tracing::warn!("no loss curve: {e}");
    }
    result?;

    let final_dir = if recipe.quant_config().is_some() {
        observer.on_message(&format!(
            "quantized base: no merged final/ (merge {} into the f32 weights with `idefics merge --base {} \
             --adapter {} --out DIR`)",
            out.join("adapter").display(),
            model_dir.display(),
            out.join("adapter").display()
        ));
        None
    } else {
        let dir = out.join("final");
        export_trained(trainer.model(), &model_dir, &dir, recipe.save_dtype()?)?;
        Some(dir)
    };
    let adapter_dir = match trainer.model().peft_adapter()? {
        Some(adapter) => {
            let dir = out.join("adapter");
            adapter.save(&dir)?;
            Some(dir)
        }
        None => None,
    };
    Ok(RunSummary {
        steps: trainer.step(),
        final_dir,
        adapter_dir,
        metrics_path: out.join("metrics.jsonl"),
        skipped: data.stream.skips().clone(),
    })
}

/// Records the base's quantization in `out/quant.json` on a fresh run; on a resumed one, refuses a quantization
/// other than the one the run was started with (the adapters were trained against that base).
fn check_run_quant(
    out: &Path,
    quant: Option<idefics::quant::QuantConfig>,
    resume: bool,
) -> Result<(), TrainError> {
    let path = out.join("quant.json");
    if resume {
        let recorded: Option<idefics::quant::QuantConfig> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| TrainError::Json {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(TrainError::io(&path, e)),
        };
        if recorded != quant {
            let name = |q: Option<idefics::quant::QuantConfig>| match q {
                Some(q) => format!("{}{}", q.weights, if q.vision { " + vision" } else { "" }),
                None => "unquantized".to_string(),
            };
            return Err(TrainError::Invalid(format!(
                "--resume: the run was trained on a {} base, this recipe / command asks for {}; resume with the \
                 same quantization",
                name(recorded),
                name(quant)
            )));
        }
        return Ok(());
    }
    match quant {
        Some(q) => {
            let json = serde_json::to_vec_pretty(&q).map_err(|source| TrainError::Json {
                path: path.clone(),
                source,
            })?;
            std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
        }
        None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TrainError::io(&path, e)),
        },
    }
}

/// `loss.png` from the whole `metrics.jsonl` of `out` (a resumed run plots its full curve), with evaluation
/// accuracy when present.
pub fn plot_metrics(out: &Path) -> Result<(), TrainError> {
    let path = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let mut loss = Vec::new();
    let mut eval = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|source| TrainError::Json {
                path: path.clone(),
                source,
            })?;
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
    let png = line_chart_png("training", "step", "loss / accuracy", &series)
        .map_err(|e| TrainError::Invalid(format!("loss curve: {e}")))?;
    let png_path = out.join("loss.png");
    std::fs::write(&png_path, png).map_err(|e| TrainError::io(&png_path, e))
}
