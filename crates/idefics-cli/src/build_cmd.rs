//! Building a new model from scratch: `idefics tokenizer train`, `idefics init`, `idefics pretrain-vision`
//! (SigLIP) and `idefics assemble` (the steps of recipes/tiny that are not the generic trainer).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use idefics::model::Component;
use idefics::Idefics2Config;
use idefics_data::{CauldronReader, DocItem, ObelicsReader, PairReader, ReaderOptions};
use idefics_processor::tokenizer_train::{
    save_tokenizer_dir, train_tokenizer, TinyTokenIds, TokenizerTrainOptions,
};
use idefics_processor::{decode_image, DecodeLimits, TextTokenizer};
use idefics_train::hf_checkpoint::{load_tensors, read_config_json, save_hf_checkpoint};
use idefics_train::init;
use idefics_train::siglip::{
    PairBatches, PairSample, PatchPool, SiglipOptions, SiglipStep, SiglipTask, SiglipTrainer,
};
use idefics_train::train_loop::{latest_checkpoint, StepMetrics, TrainObserver};
use idefics_train::TrainError;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    pub command: TokenizerCommand,
}

#[derive(clap::Subcommand)]
pub enum TokenizerCommand {
    /// Train a Llama-style BPE tokenizer (byte fallback, Idefics2 special tokens) on dataset text.
    Train(TokenizerTrainArgs),
}

#[derive(clap::Args)]
pub struct TokenizerTrainArgs {
    /// Dataset folders (as `idefics data synth` writes a split: pairs.parquet, chat_*.parquet,
    /// interleaved.parquet) or single parquet / JSONL files of pairs.
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Total vocabulary size (special and byte tokens included; at least 263).
    #[arg(long, default_value_t = 1024)]
    pub vocab_size: usize,
    /// Pairs seen fewer times are not merged.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Output folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// config.json of the new model (vocabulary size and special-token ids are taken from the tokenizer).
    #[arg(long)]
    pub config: PathBuf,
    /// Tokenizer folder (from `idefics tokenizer train`).
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output model folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Processor: longest image side [default: vision_config.image_size].
    #[arg(long)]
    pub longest_edge: Option<usize>,
    /// Processor: split images into 4 crops + the whole image.
    #[arg(long)]
    pub image_splitting: bool,
}

#[derive(clap::Args)]
pub struct AssembleArgs {
    /// Checkpoint whose text model, embeddings and lm_head are kept.
    #[arg(long)]
    pub text: PathBuf,
    /// Checkpoint whose vision tower is kept.
    #[arg(long)]
    pub vision: PathBuf,
    /// Output model folder (config, tokenizer and processor files from --text).
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of the new connector (modality projection + perceiver).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Standard deviation of the perceiver latents, drawn from a normal distribution. Without it they are ones,
    /// as transformers initialises them; from scratch at small scale ones let the perceiver collapse to an
    /// image-independent output (see `init::LatentsInit`), so recipes/tiny passes 0.02.
    #[arg(long)]
    pub latents_std: Option<f64>,
    /// Multiply the new perceiver's query and key projections by this factor: sharper attention from the
    /// start (see `init::scale_perceiver_qk`). 1 keeps transformers' initialisation.
    #[arg(long, default_value_t = 1.0)]
    pub perceiver_qk_scale: f64,
}

#[derive(clap::Args)]
pub struct PretrainVisionArgs {
    /// Idefics2 checkpoint: its vision tower is trained; its token embeddings start the text side.
    #[arg(long)]
    pub model: PathBuf,
    /// Image-caption pairs: parquet / JSONL files or folders (a synth split folder: its pairs.parquet).
    #[arg(long, required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Output checkpoint (the input one with the trained tower).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning rate of the temperature and bias, as a multiple of --lr.
    #[arg(long, default_value_t = 1.0)]
    pub scalar_lr_scale: f64,
    #[arg(long, default_value_t = 30)]
    pub warmup_steps: u64,
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Longest image side during SigLIP training (rounded to whole patches). Several values (`112,224`)
    /// are used in turn, one per batch: include the VLM's resolution so that every row of the position
    /// table is trained.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "112")]
    pub longest_edge: Vec<usize>,
    /// Width of the shared image-text embedding.
    #[arg(long, default_value_t = 128)]
    pub embed_dim: usize,
    #[arg(long, default_value_t = 48)]
    pub max_text_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// Threads sharing the tower's forward and backward (images of a batch go in size groups, dealt to
    /// them). With more than 1, ops run single-threaded (RAYON_NUM_THREADS=1) unless RAYON_NUM_THREADS is
    /// set. Same gradients up to float summation order.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Pooling of the tower's patch outputs for the loss: mean, max per feature (keeps what a few patches
    /// show, such as a shape's outline, which the mean dilutes with the background), or mean-max (both,
    /// concatenated).
    #[arg(long, value_enum, default_value_t = PoolArg::Mean)]
    pub pool: PoolArg,
    /// Folder of the run's metrics.jsonl and resumable checkpoints (default: `<out>.run`, beside --out).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Save a resumable checkpoint every N steps (one is always saved at the end).
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Continue from the newest checkpoint of the run folder (same data and settings: the run then ends
    /// exactly as an uninterrupted one).
    #[arg(long)]
    pub resume: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PoolArg {
    Mean,
    Max,
    MeanMax,
}

/// Text of every sample in the dataset folders / files (captions, conversation turns, document texts).
fn dataset_texts(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let opts = ReaderOptions::default();
    for p in paths {
        if p.is_file() {
            for s in PairReader::open(std::slice::from_ref(p), opts.clone())? {
                out.push(s?.text);
            }
            continue;
        }
        if !p.is_dir() {
            bail!("{}: no such file or folder", p.display());
        }
        let mut found = false;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for f in entries {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            let one = std::slice::from_ref(&f);
            if name == "pairs.parquet" {
                for s in PairReader::open(one, opts.clone())? {
                    out.push(s?.text);
                }
            } else if name.starts_with("chat_") && name.ends_with(".parquet") {
                for s in CauldronReader::open(one, opts.clone())? {
                    for t in s?.turns {
                        out.push(t.user);
                        out.push(t.assistant);
                    }
                }
            } else if name == "interleaved.parquet" {
                for s in ObelicsReader::open(one, opts.clone())? {
                    for item in s?.items {
                        if let DocItem::Text(t) = item {
                            out.push(t);
                        }
                    }
                }
            } else {
                continue;
            }
            found = true;
        }
        if !found {
            bail!(
                "{}: no pairs.parquet, chat_*.parquet or interleaved.parquet in this folder",
                p.display()
            );
        }
    }
    Ok(out)
}

pub fn tokenizer(args: TokenizerArgs) -> Result<()> {
    let TokenizerCommand::Train(a) = args.command;
    let t0 = Instant::now();
    let texts = dataset_texts(&a.data)?;
    let n = texts.len();
    let opts = TokenizerTrainOptions {
        vocab_size: a.vocab_size,
        min_frequency: a.min_frequency,
    };
    let tok = train_tokenizer(texts.into_iter(), &opts)?;
    save_tokenizer_dir(&tok, &a.out)?;
    println!(
        "trained a {}-token tokenizer on {n} texts in {:.1}s -> {}",
        tok.get_vocab_size(true),
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

/// processor_config.json (5.x layout: the image processor nested) for a model of `config`.
fn processor_config(config: &Idefics2Config, longest_edge: usize, splitting: bool) -> Value {
    json!({
        "image_processor": {
            "do_convert_rgb": true,
            "do_image_splitting": splitting,
            "do_normalize": true,
            "do_pad": true,
            "do_rescale": true,
            "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Idefics2ImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "resample": 2,
            "rescale_factor": 1.0 / 255.0,
            // Idefics2-8b keeps shortest/longest = 378/980; a tiny model uses half its longest side.
            "size": {"longest_edge": longest_edge,
                     "shortest_edge": (longest_edge / 2).max(config.vision_config.patch_size)}
        },
        "image_seq_len": config.perceiver_config.resampler_n_latents,
        "processor_class": "Idefics2Processor"
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn init_model(a: InitArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let mut cfg_json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", a.config.display()))?;
    let tok = TextTokenizer::from_dir(&a.tokenizer)
        .with_context(|| format!("loading the tokenizer in {}", a.tokenizer.display()))?;
    let ids = TinyTokenIds::of(tok.inner())?;
    // The tokenizer decides the vocabulary and the special ids.
    let Some(obj) = cfg_json.as_object_mut() else {
        bail!("{}: must be a JSON object", a.config.display());
    };
    obj.insert("image_token_id".into(), json!(ids.image));
    obj.insert("model_type".into(), json!("idefics2"));
    obj.insert(
        "architectures".into(),
        json!(["Idefics2ForConditionalGeneration"]),
    );
    obj.insert("dtype".into(), json!("float32"));
    let tc = obj
        .entry("text_config")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .context("text_config must be an object")?;
    tc.insert("vocab_size".into(), json!(ids.vocab_size));
    tc.insert("pad_token_id".into(), json!(ids.pad));
    tc.insert("bos_token_id".into(), json!(ids.bos));
    tc.insert("eos_token_id".into(), json!(ids.eos));
    let config = Idefics2Config::from_json_value(&cfg_json)
        .with_context(|| format!("{}", a.config.display()))?;
    let std = init::initializer_range(&cfg_json);
    let tensors = init::init_weights(&config, std, a.seed, &Device::Cpu)?;
    let params: usize = tensors.values().map(|t| t.elem_count()).sum();

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let longest = a.longest_edge.unwrap_or(config.vision_config.image_size);
    write_json(
        &a.out.join("processor_config.json"),
        &processor_config(&config, longest, a.image_splitting),
    )?;
    write_json(
        &a.out.join("generation_config.json"),
        &json!({
            "bad_words_ids": [[ids.fake_image], [ids.image]],
            "bos_token_id": ids.bos,
            "eos_token_id": [ids.eos, ids.end_of_utterance],
            "pad_token_id": ids.pad,
        }),
    )?;
    save_hf_checkpoint(&a.out, &cfg_json, &tensors, &[&a.tokenizer])?;
    println!(
        "initialised {} tensors ({:.2} M parameters, {:.1} MB f32, std {std}, seed {}) -> {}",
        tensors.len(),
        params as f64 / 1e6,
        params as f64 * 4.0 / 1e6,
        a.seed,
        a.out.display()
    );
    Ok(())
}

pub fn assemble(a: AssembleArgs) -> Result<()> {
    let cfg_json = read_config_json(&a.text)?;
    let config = Idefics2Config::from_json_value(&cfg_json)
        .with_context(|| format!("{}/config.json", a.text.display()))?;
    let vcfg = Idefics2Config::from_file(&a.vision.join("config.json"))?;
    if vcfg.vision_config != config.vision_config {
        bail!(
            "the vision config of {} differs from the one of {}: the tower would not fit",
            a.vision.display(),
            a.text.display()
        );
    }
    let dev = Device::Cpu;
    let text = load_tensors(&a.text, DType::F32, &dev)?;
    let vision = load_tensors(&a.vision, DType::F32, &dev)?;
    let n_vision = vision
        .keys()
        .filter(|k| Component::of(k) == Some(Component::Vision))
        .count();
    let std = init::initializer_range(&cfg_json);
    let latents = match a.latents_std {
        None => init::LatentsInit::Ones,
        Some(s) if s.is_finite() && s > 0.0 => init::LatentsInit::Normal { std: s },
        Some(s) => bail!("--latents-std must be a positive number, got {s}"),
    };
    let (mut tensors, n_new) = init::assemble(text, vision, &config, std, latents, a.seed, &dev)?;
    if a.perceiver_qk_scale != 1.0 {
        init::scale_perceiver_qk(&mut tensors, &config, a.perceiver_qk_scale)
            .context("--perceiver-qk-scale")?;
    }
    save_hf_checkpoint(&a.out, &cfg_json, &tensors, &[&a.text])?;
    println!(
        "assembled {}: text from {}, {n_vision} vision tensors from {}, {n_new} new connector tensors (seed {}, perceiver q/k x{})",
        a.out.display(),
        a.text.display(),
        a.vision.display(),
        a.seed,
        a.perceiver_qk_scale
    );
    Ok(())
}

/// Pair files of the arguments: files as given, a folder's `pairs.parquet` (synth layout) or all its files.
fn pair_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    paths
        .iter()
        .map(|p| {
            let pairs = p.join("pairs.parquet");
            if p.is_dir() && pairs.is_file() {
                pairs
            } else {
                p.clone()
            }
        })
        .collect()
}

pub fn pretrain_vision(a: PretrainVisionArgs) -> Result<()> {
    super::train_cmd::single_threaded_ops_for(a.parallel);
    let opts = SiglipOptions {
        embed_dim: a.embed_dim,
        longest_edges: a.longest_edge.clone(),
        max_text_len: a.max_text_len,
        batch_size: a.batch_size,
        steps: a.steps,
        lr: a.lr,
        scalar_lr_scale: a.scalar_lr_scale,
        warmup_steps: a.warmup_steps,
        weight_decay: a.weight_decay,
        max_grad_norm: 1.0,
        seed: a.seed,
        parallel_images: a.parallel,
        pool: match a.pool {
            PoolArg::Mean => PatchPool::Mean,
            PoolArg::Max => PatchPool::Max,
            PoolArg::MeanMax => PatchPool::MeanMax,
        },
        save_every: a.save_every,
    };
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        // `components` drops a trailing slash, so the folder lands beside --out, not inside it.
        let mut dir = a.out.components().collect::<PathBuf>().into_os_string();
        dir.push(".run");
        PathBuf::from(dir)
    });
    let resume_from = if a.resume {
        let ck = latest_checkpoint(&run_dir)?;
        Some(ck.with_context(|| format!("--resume: no checkpoint under {}", run_dir.display()))?)
    } else {
        if latest_checkpoint(&run_dir)?.is_some() {
            bail!(
                "{} already holds checkpoints of a run: pass --resume to continue it, or choose another \
                 --run-dir",
                run_dir.display()
            );
        }
        None
    };
    let dev = Device::Cpu;
    let mut trainer = SiglipTrainer::from_checkpoint(&a.model, opts, &dev)
        .with_context(|| format!("loading {}", a.model.display()))?;
    trainer.set_run_dir(&run_dir);
    let reader = PairReader::open(
        &pair_files(&a.data),
        ReaderOptions {
            shuffle_seed: Some(a.seed),
            repeat: true,
            ..Default::default()
        },
    )?;
    let limits = DecodeLimits::default();
    // Decoded as batches are drawn: a resume skips the pairs already seen without decoding them.
    let mut data = PairBatches::new(
        reader,
        |r: <PairReader as Iterator>::Item| -> Result<PairSample, TrainError> {
            let pair = r.map_err(|e| TrainError::Invalid(e.to_string()))?;
            let bytes = pair
                .image
                .load_bytes()
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            let image = decode_image(&bytes, &limits)
                .map_err(|e| TrainError::Invalid(format!("{}: {e}", pair.image.origin())))?;
            Ok(PairSample {
                image,
                text: pair.text,
            })
        },
    );
    if let Some(ck) = &resume_from {
        trainer.restore(ck, &mut data)?;
        println!(
            "resumed from {} (step {})",
            ck.display(),
            trainer.step_count()
        );
    }
    let bar = ProgressBar::new(a.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "siglip [{elapsed_precise}] {bar:30} {pos}/{len} {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let first_step = trainer.step_count();
    let mut observer = SiglipProgress {
        bar: &bar,
        log_every: a.log_every.max(1),
    };
    trainer.run(&mut data, &mut observer)?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    trainer.save_into(&a.model, &a.out)?;
    let steps = a.steps.saturating_sub(first_step);
    println!(
        "SigLIP: {steps} steps in {secs:.1}s ({:.2} steps/s, batch {}) -> {} (metrics and checkpoints: {})",
        steps as f64 / secs.max(1e-9),
        a.batch_size,
        a.out.display(),
        run_dir.display()
    );
    Ok(())
}

/// The progress bar and the step lines of `pretrain-vision`.
struct SiglipProgress<'a> {
    bar: &'a ProgressBar,
    log_every: u64,
}

impl TrainObserver<SiglipTask> for SiglipProgress<'_> {
    fn on_start(&mut self, first_step: u64, _total_steps: u64) {
        self.bar.set_position(first_step);
    }

    fn on_step(&mut self, m: &StepMetrics) {
        let s = SiglipStep::from(m);
        self.bar.set_position(s.step);
        self.bar.set_message(format!("loss {:.4}", s.loss));
        if s.step % self.log_every == 0 || s.step == 1 {
            self.bar.suspend(|| {
                println!(
                    "step {:5}  loss {:.4}  lr {:.2e}  grad_norm {:.3}  t {:.2}  b {:.2}",
                    s.step, s.loss, s.lr, s.grad_norm, s.temperature, s.bias
                )
            });
        }
    }

    fn on_message(&mut self, message: &str) {
        self.bar.suspend(|| eprintln!("{message}"));
    }
}
