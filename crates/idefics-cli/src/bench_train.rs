//! `idefics bench-train`: step time and peak memory of full fine-tuning, LoRA and DoRA on one fixed batch, for
//! side-by-side runs with transformers + peft (tools/bench/train_bench.sh runs both, one process per mode, so
//! each peak RSS belongs to one mode).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use idefics::model::VlmModel;
use idefics::{LoadOptions, ModelInputs};
use idefics_train::optimizer::AdamWConfig;
use idefics_train::schedule::{Decay, LrSchedule};
use idefics_train::trainable::{AdapterSpec, TrainableModel, TrainablePlan, Tuning};
use idefics_train::trainer::{LoopConfig, TrainBatch, Trainer};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// Checkpoint directory (e.g. the ~150M benchmark config).
    #[arg(long)]
    pub model: PathBuf,
    /// full, lora or dora.
    #[arg(long)]
    pub mode: String,
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Text tokens per row (the image tokens come on top).
    #[arg(long, default_value_t = 256)]
    pub text_len: usize,
    /// Square image side in pixels (one image per row, not split). Default: 224 for Idefics2; the vision tower's
    /// `image_size` for Idefics3 / SmolVLM (one tile, the size their connector expects).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Timed steps (after one untimed warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Write the batch here (safetensors) so that the torch side trains on the same tensors.
    #[arg(long)]
    pub write_batch: Option<PathBuf>,
    /// Micro-batches per step (gradient accumulation), each a copy of the batch.
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
    /// Micro-batches run at once on their own threads (`[run] parallel_micro_batches`); above 1 this sets
    /// RAYON_NUM_THREADS=1 unless it is set.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Label only the last N text tokens of each row, as answer-only fine-tuning does (default: all of
    /// them, as pre-training does).
    #[arg(long)]
    pub answer_tokens: Option<usize>,
    /// `fused`: this crate's CPU training kernels (norms, activations, rope, softmax with their own backward);
    /// `composed`: candle's composed ops, as before those kernels existed.
    #[arg(long, default_value = "fused")]
    pub kernels: idefics::nn::KernelChoice,
    /// Train the adapters on a quantized frozen base (QLoRA): q8_0, q5_0, q4k, q6k or bf16 for the text decoder (lora /
    /// dora only).
    #[arg(long, value_parser = |s: &str| s.parse::<idefics::quant::QuantType>())]
    pub quant: Option<idefics::quant::QuantType>,
}

/// Peak and current resident memory of this process, in bytes (0 where the system does not tell).
fn rss() -> (u64, u64) {
    (
        idefics::weights::peak_rss_bytes().unwrap_or(0),
        idefics::weights::current_rss_bytes().unwrap_or(0),
    )
}

/// The image side a run uses (see `--image-size`).
fn image_side(model: &VlmModel, args: &BenchTrainArgs) -> usize {
    args.image_size.unwrap_or(match model {
        VlmModel::Idefics2(_) => 224,
        VlmModel::Idefics3(_) => model.vision_config().image_size,
    })
}

/// `<fake><image>*n<fake>` then random text, labelled except the image block (or only the last
/// `--answer-tokens` of it); one random image per row. `n` is the image's token count of the family (the
/// perceiver's latents, or one Idefics3 / SmolVLM tile).
fn synthetic_batch(model: &VlmModel, args: &BenchTrainArgs) -> Result<TrainBatch> {
    let image_id = model.image_token_id();
    let n_img = model.image_seq_len();
    let vocab = model.vocab_size() as u32;
    // The fake-image token: transformers' processor puts it around every image block; any id works here.
    let fake = image_id.saturating_sub(1);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let b = args.batch_size;
    let len = n_img + 2 + args.text_len;
    let answer = args.answer_tokens.unwrap_or(args.text_len);
    if answer == 0 || answer > args.text_len {
        bail!(
            "--answer-tokens {answer} must be between 1 and --text-len {}",
            args.text_len
        );
    }
    let mut ids = Vec::with_capacity(b * len);
    let mut labels = Vec::with_capacity(b * len);
    for _ in 0..b {
        ids.push(fake);
        labels.push(-100i64);
        for _ in 0..n_img {
            ids.push(image_id);
            labels.push(-100);
        }
        ids.push(fake);
        labels.push(-100);
        for i in 0..args.text_len {
            let t = 3 + (next() % (vocab as u64 - 10)) as u32;
            ids.push(t);
            labels.push(if i + answer >= args.text_len {
                t as i64
            } else {
                -100
            });
        }
    }
    let s = image_side(model, args);
    let pixels: Vec<f32> = (0..b * 3 * s * s)
        .map(|_| (next() % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let dev = Device::Cpu;
    Ok(TrainBatch {
        inputs: ModelInputs {
            input_ids: Some(Tensor::from_vec(ids, (b, len), &dev)?),
            attention_mask: Some(Tensor::ones((b, len), DType::U32, &dev)?),
            pixel_values: Some(Tensor::from_vec(pixels, (b, 1, 3, s, s), &dev)?),
            pixel_attention_mask: Some(Tensor::ones((b, 1, s, s), DType::U8, &dev)?),
            ..Default::default()
        },
        n_label_tokens: b * answer,
        n_tokens: b * len,
        labels: Tensor::from_vec(labels, (b, len), &dev)?,
    })
}

pub fn run(args: BenchTrainArgs) -> Result<()> {
    let tuning = match args.mode.as_str() {
        "full" => Tuning::Full,
        "lora" => Tuning::Lora,
        "dora" => Tuning::Dora,
        other => bail!("--mode {other:?}: use full, lora or dora"),
    };
    super::train_cmd::single_threaded_ops_for(args.parallel);
    idefics::nn::set_kernels(idefics::nn::KernelFamily::Training, args.kernels);
    let t0 = Instant::now();
    if tuning == Tuning::Full && args.quant.is_some() {
        bail!("--mode full with --quant: a quantized base trains adapters only (use lora or dora)");
    }
    let opts = LoadOptions {
        quant: args.quant.map(|weights| idefics::quant::QuantConfig {
            weights,
            vision: false,
        }),
        ..Default::default()
    };
    let model = VlmModel::load(&args.model, &opts)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let batch = synthetic_batch(&model, &args)?;
    let image_size = image_side(&model, &args);
    if let Some(path) = &args.write_batch {
        let i = &batch.inputs;
        let mut map = std::collections::HashMap::new();
        let pairs = [
            ("input_ids", i.input_ids.as_ref()),
            ("attention_mask", i.attention_mask.as_ref()),
            ("pixel_values", i.pixel_values.as_ref()),
            ("pixel_attention_mask", i.pixel_attention_mask.as_ref()),
            ("labels", Some(&batch.labels)),
        ];
        for (k, t) in pairs {
            if let Some(t) = t {
                let t = if t.dtype() == DType::F32 {
                    t.clone()
                } else {
                    t.to_dtype(DType::I64)?
                };
                map.insert(k.to_string(), t);
            }
        }
        candle_core::safetensors::save(&map, path)?;
    }
    let (_, rss_loaded) = rss();
    // Idefics3 / SmolVLM have no perceiver (a plan for one is refused).
    let perceiver = match &model {
        VlmModel::Idefics2(_) => tuning,
        VlmModel::Idefics3(_) => Tuning::Frozen,
    };
    let plan = if tuning == Tuning::Full {
        TrainablePlan {
            vision: Tuning::Full,
            projection: Tuning::Full,
            perceiver,
            text: Tuning::Full,
            embeddings: Tuning::Full,
            lm_head: Tuning::Full,
        }
    } else {
        // peft's "all-linear" over the whole model: every linear layer but the head, the rest frozen.
        TrainablePlan {
            vision: tuning,
            projection: tuning,
            perceiver,
            text: tuning,
            ..Default::default()
        }
    };
    let spec = AdapterSpec {
        r: args.rank,
        alpha: 2.0 * args.rank as f64,
        ..Default::default()
    };
    let mut rng = idefics_train::rng::TrainRng::seed_from_u64(0);
    let trainable = TrainableModel::new(model, &plan, &spec, &mut rng)?;
    let n_trainable = trainable.num_trainable();
    let out = tempdir_path();
    let mut trainer = Trainer::new(
        trainable,
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            lr_scales: Default::default(),
        },
        Some(1.0),
        LrSchedule {
            peak_lr: 1e-5,
            warmup_steps: 0,
            total_steps: (args.steps + 1) as u64,
            decay: Decay::Constant,
            min_ratio: 0.0,
        },
        LoopConfig {
            steps: (args.steps + 1) as u64,
            batch_size: args.batch_size,
            grad_accum: args.micro_batches,
            seed: 0,
            log_every: 1,
            save_every: None,
            keep_checkpoints: 1,
            neftune_alpha: None,
            eval_every: None,
            parallel_micro_batches: args.parallel,
        },
        &out,
    )?;
    let batches = vec![batch.clone(); args.micro_batches];
    trainer.train_step(&batches)?;
    let mut times = Vec::new();
    let mut losses = Vec::new();
    for _ in 0..args.steps {
        let m = trainer.train_step(&batches)?;
        times.push(m.step_time_s);
        losses.push(m.loss);
    }
    let (peak, _) = rss();
    times.sort_by(f64::total_cmp);
    let median = times.get(times.len() / 2).copied().unwrap_or(f64::NAN);
    let report = serde_json::json!({
        "impl": "idefics-rs",
        "mode": args.mode,
        "quant": args.quant.map(|q| q.name()),
        "batch_size": args.batch_size,
        "micro_batches": args.micro_batches,
        "parallel_micro_batches": args.parallel,
        "candle_threads": candle_core::utils::get_num_threads(),
        "candle_elementwise_threads": std::env::var("CANDLE_NUM_THREADS").ok(),
        "seq_len": batch.labels.dim(1)?,
        "image_size": image_size,
        "trainable_params": n_trainable,
        "load_s": load_s,
        "step_s_median": median,
        "step_s_all": times,
        "loss": losses,
        "rss_after_load_mb": rss_loaded as f64 / 1048576.0,
        "peak_rss_mb": peak as f64 / 1048576.0,
    });
    println!("{report}");
    Ok(())
}

fn tempdir_path() -> PathBuf {
    std::env::temp_dir().join(format!("idefics-bench-train-{}", std::process::id()))
}
