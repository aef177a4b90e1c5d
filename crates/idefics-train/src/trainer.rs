//! The training loop: micro-batches -> loss -> backward -> accumulate -> clip -> AdamW, with checkpoints that a
//! killed run resumes from exactly (weights / adapters, optimizer moments, schedule position, RNG, data position).
//!
//! One optimizer step over `grad_accum` micro-batches minimises the mean token loss of their union: the
//! micro-batches are drawn first, their label tokens counted, and each micro-batch's summed loss is divided by
//! that total, so accumulation equals one larger batch (not a mean of per-micro-batch means). With
//! `parallel_micro_batches > 1` several micro-batches run forward and backward at once on their own threads;
//! their gradients are then added in micro-batch order, so the step is the same as the sequential one.

use super::accumulate::GradAccumulator;
use super::checkpoint::{
    load_checkpoint, save_checkpoint, verify_checkpoint, CheckpointContents, TrainerState,
};
use super::loss::causal_lm_loss_sum_from_hidden;
use super::optimizer::{clip_grad_norm, grad_norm, AdamW, AdamWConfig};
use super::rng::TrainRng;
use super::schedule::LrSchedule;
use super::trainable::TrainableModel;
use super::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use idefics::model::{Idefics2ForConditionalGeneration, ModelInputs};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use super::collate::TrainBatch;

/// Where batches come from: deterministic, with a position that can be saved and restored.
pub trait BatchSource {
    fn next_batch(&mut self, batch_size: usize) -> Result<TrainBatch, TrainError>;
    /// The position, saved in checkpoints.
    fn state(&self) -> serde_json::Value;
    /// Moves to a saved position.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), TrainError>;
}

/// Loop settings (`[run]` of a recipe).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Optimizer steps.
    pub steps: u64,
    #[serde(default = "one")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Save a resumable checkpoint every N steps (and always at the end).
    #[serde(default)]
    pub save_every: Option<u64>,
    /// Resumable checkpoints kept (older ones are deleted).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// NEFTune: uniform noise of magnitude `alpha / sqrt(L * D)` on the input embeddings while training.
    #[serde(default)]
    pub neftune_alpha: Option<f64>,
    /// Evaluate every N steps (when the caller gives an evaluator).
    #[serde(default)]
    pub eval_every: Option<u64>,
    /// Micro-batches (of the `grad_accum`) run at once, each on its own thread. Same result as one at a time
    /// (the gradients are summed in order), more memory (one autograd graph per thread). Pays off on CPU when
    /// each op is too small for candle's intra-op threads: run with `RAYON_NUM_THREADS=1` (`idefics train`
    /// sets it when this is above 1); see `tools/bench/threads_bench.sh`.
    #[serde(default = "one")]
    pub parallel_micro_batches: usize,
}

fn one() -> usize {
    1
}
fn default_log_every() -> u64 {
    10
}
fn default_keep() -> usize {
    2
}

impl LoopConfig {
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Invalid(format!("[run] {m}")));
        if self.steps == 0 {
            return bad("steps must be at least 1");
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch_size and grad_accum must be at least 1");
        }
        if self.parallel_micro_batches == 0 || self.parallel_micro_batches > self.grad_accum {
            return bad(&format!(
                "parallel_micro_batches must be between 1 and grad_accum ({}), got {}",
                self.grad_accum, self.parallel_micro_batches
            ));
        }
        if self.log_every == 0 {
            return bad("log_every must be at least 1");
        }
        if self.save_every == Some(0) || self.eval_every == Some(0) {
            return bad("save_every / eval_every must be at least 1 when set");
        }
        if let Some(a) = self.neftune_alpha {
            if !(a.is_finite() && a >= 0.0) {
                return bad("neftune_alpha must be a finite number >= 0");
            }
        }
        Ok(())
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    /// Mean token loss of the step's batch (all micro-batches together).
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Label tokens in the step.
    pub label_tokens: usize,
    /// Sequence tokens (non-padding) in the step.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub step_time_s: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
}

/// Callbacks of the loop: progress display, evaluation.
pub trait TrainObserver {
    fn on_start(&mut self, _first_step: u64, _total_steps: u64) {}
    fn on_step(&mut self, _metrics: &StepMetrics) {}
    fn on_message(&mut self, _message: &str) {}
    /// Runs an evaluation of the current model; the returned JSON is logged beside the loss.
    fn evaluate(
        &mut self,
        _model: &TrainableModel,
        _step: u64,
    ) -> Result<Option<serde_json::Value>, TrainError> {
        Ok(None)
    }
}

/// An observer that does nothing.
pub struct Silent;
impl TrainObserver for Silent {}

/// Directory of the resumable checkpoint of `step` under `out_dir`.
pub fn checkpoint_dir(out_dir: &Path, step: u64) -> PathBuf {
    out_dir.join("checkpoints").join(format!("step-{step:08}"))
}

/// The newest complete checkpoint under `out_dir/checkpoints` (a corrupt newest one is an error, not skipped).
pub fn latest_checkpoint(out_dir: &Path) -> Result<Option<PathBuf>, TrainError> {
    let dir = out_dir.join("checkpoints");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut steps: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            Some((step, e.path()))
        })
        .collect();
    steps.sort();
    match steps.pop() {
        Some((_, path)) => {
            verify_checkpoint(&path)?;
            Ok(Some(path))
        }
        None => Ok(None),
    }
}

/// Loop state besides the model.
pub struct Trainer {
    model: TrainableModel,
    optimizer: AdamW,
    schedule: LrSchedule,
    max_grad_norm: Option<f64>,
    cfg: LoopConfig,
    rng: TrainRng,
    step: u64,
    tokens_seen: u64,
    out_dir: PathBuf,
}

impl Trainer {
    pub fn new(
        model: TrainableModel,
        optim: AdamWConfig,
        max_grad_norm: Option<f64>,
        schedule: LrSchedule,
        cfg: LoopConfig,
        out_dir: &Path,
    ) -> Result<Self, TrainError> {
        cfg.validate()?;
        schedule.validate()?;
        if let Some(m) = max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(TrainError::Invalid(format!(
                    "max_grad_norm must be > 0, got {m}"
                )));
            }
        }
        let optimizer = AdamW::new(model.params().to_vec(), optim)?;
        Ok(Self {
            model,
            optimizer,
            schedule,
            max_grad_norm,
            rng: TrainRng::seed_from_u64(cfg.seed ^ 0x006e_6566_7475_6e65),
            cfg,
            step: 0,
            tokens_seen: 0,
            out_dir: out_dir.to_path_buf(),
        })
    }

    pub fn model(&self) -> &TrainableModel {
        &self.model
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }

    /// Restores optimizer, schedule position, RNG and data position from a checkpoint made by this loop. The
    /// model must have been built from the same checkpoint (its adapter / trainable tensors).
    pub fn restore(&mut self, dir: &Path, data: &mut dyn BatchSource) -> Result<(), TrainError> {
        let ck = load_checkpoint(dir, self.model.model().device())?;
        if let Some(t) = &ck.trainable {
            self.model.load_full_tensors(t)?;
        }
        self.optimizer
            .load(&ck.optimizer_path, self.model.model().device())?;
        if self.optimizer.step_count() != ck.state.step {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "optimizer state is at step {} but trainer_state.json says {}",
                    self.optimizer.step_count(),
                    ck.state.step
                ),
            });
        }
        if ck.state.schedule != self.schedule {
            tracing::warn!(
                "the recipe's schedule differs from the checkpoint's; using the recipe's"
            );
        }
        self.step = ck.state.step;
        self.rng =
            TrainRng::from_state(ck.state.rng_state).ok_or_else(|| TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: "RNG state is all zero".into(),
            })?;
        self.tokens_seen = ck.state.extra["tokens_seen"].as_u64().unwrap_or(0);
        data.restore(&ck.state.extra["data"])?;
        tracing::info!(step = self.step, dir = %dir.display(), "resumed");
        Ok(())
    }

    /// Writes a resumable checkpoint of the current step and prunes old ones.
    pub fn save(&self, data: &dyn BatchSource) -> Result<PathBuf, TrainError> {
        let dir = checkpoint_dir(&self.out_dir, self.step);
        let adapter = self.model.peft_adapter()?;
        let full = self.model.full_tensors();
        let state = TrainerState {
            step: self.step,
            rng_state: self.rng.state(),
            schedule: self.schedule.clone(),
            extra: serde_json::json!({ "data": data.state(), "tokens_seen": self.tokens_seen }),
        };
        save_checkpoint(
            &dir,
            &CheckpointContents {
                adapter: adapter.as_ref(),
                trainable: (!full.is_empty()).then_some(&full),
                optimizer: &self.optimizer,
                state: &state,
            },
        )?;
        self.prune_checkpoints()?;
        Ok(dir)
    }

    fn prune_checkpoints(&self) -> Result<(), TrainError> {
        let dir = self.out_dir.join("checkpoints");
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| TrainError::io(&dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().starts_with("step-"))
                    .unwrap_or(false)
            })
            .collect();
        steps.sort();
        let keep = self.cfg.keep_checkpoints.max(1);
        while steps.len() > keep {
            let old = steps.remove(0);
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        Ok(())
    }

    /// NEFTune's noisy token embeddings: uniform noise in `±alpha / sqrt(L * D)` added to the embeddings
    /// `[B, L, D]` (Jain et al. 2023, as transformers' `neftune_post_forward_hook`), drawn from the loop's
    /// seeded RNG so resumes repeat it. `None` without NEFTune.
    fn neftune_embeds(&mut self, inputs: &ModelInputs) -> Result<Option<Tensor>, TrainError> {
        let Some(alpha) = self.cfg.neftune_alpha else {
            return Ok(None);
        };
        let Some(ids) = &inputs.input_ids else {
            return Ok(None);
        };
        let (b, l) = ids.dims2()?;
        let model = self.model.model();
        let d = model.config().text_config.hidden_size;
        let mag = alpha / ((l * d) as f64).sqrt();
        let values: Vec<f32> = (0..b * l * d)
            .map(|_| (self.rng.random_range(-1.0..1.0) * mag) as f32)
            .collect();
        let noise = Tensor::from_vec(values, (b, l, d), model.device())?;
        let embeds = model
            .text_model()
            .embed(&ids.to_dtype(candle_core::DType::U32)?)?;
        Ok(Some((embeds + noise)?))
    }

    /// One optimizer step over `batches` (the micro-batches of the step).
    pub fn train_step(&mut self, batches: &[TrainBatch]) -> Result<StepMetrics, TrainError> {
        let start = Instant::now();
        // Counted from the labels as the loss counts them (targets of positions 1..L), not trusted from the batch.
        let mut total_labels = 0usize;
        for b in batches {
            let l = b.labels.dim(1)?;
            if l > 1 {
                let targets = b
                    .labels
                    .narrow(1, 1, l - 1)?
                    .to_dtype(candle_core::DType::I64)?;
                total_labels += targets
                    .ne(super::loss::IGNORE_INDEX)?
                    .to_dtype(candle_core::DType::F32)?
                    .sum_all()?
                    .to_scalar::<f32>()? as usize;
            }
        }
        if total_labels == 0 {
            return Err(TrainError::Invalid(
                "a training step has no label tokens (every label is -100)".into(),
            ));
        }
        self.model.set_training(true);
        let vars: Vec<Var> = self.model.params().iter().map(|(_, v)| v.clone()).collect();
        let mut acc = GradAccumulator::new(vars.clone());
        let mut loss_total = 0f64;
        let mut tokens = 0usize;
        // Noise first, in micro-batch order, so that the RNG stream does not depend on the threading.
        let mut inputs = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut x = batch.inputs.clone();
            x.inputs_embeds = self.neftune_embeds(&x)?;
            tokens += sequence_tokens(&x)?;
            inputs.push(x);
        }
        let model = self.model.model();
        let indices: Vec<usize> = (0..batches.len()).collect();
        for group in indices.chunks(self.cfg.parallel_micro_batches.max(1)) {
            let run =
                |i: usize| micro_batch_grads(model, &inputs[i], &batches[i].labels, total_labels);
            let results = super::threads::run_scoped("micro-batch", group, run);
            // Summed in micro-batch order: the same gradients as the sequential loop, bit for bit.
            for r in results {
                let (value, grads) = r?;
                let Some(grads) = grads else {
                    return Err(TrainError::NonFinite {
                        what: format!("loss at step {}", self.step + 1),
                        value,
                    });
                };
                loss_total += value;
                acc.add(&grads, 1.0)?;
            }
        }
        self.model.set_training(false);
        let mut grads = acc.take();
        let var_refs: Vec<&Var> = vars.iter().collect();
        let norm = match self.max_grad_norm {
            Some(max) => clip_grad_norm(&mut grads, &var_refs, max)?,
            None => grad_norm(&grads, &var_refs)?,
        };
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: format!("gradient norm at step {}", self.step + 1),
                value: norm,
            });
        }
        let lr = self.schedule.lr(self.step);
        self.optimizer.step(&grads, lr)?;
        self.step += 1;
        self.tokens_seen += tokens as u64;
        let dt = start.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.step,
            loss: loss_total,
            lr,
            grad_norm: norm,
            label_tokens: total_labels,
            tokens,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            step_time_s: dt,
            elapsed_s: 0.0,
            eta_s: 0.0,
        })
    }

    /// Runs until `cfg.steps`, logging to `out_dir/metrics.jsonl` (appended, so a resumed run continues the
    /// same file) and saving checkpoints. Returns the metrics of every step this call ran.
    pub fn run(
        &mut self,
        data: &mut dyn BatchSource,
        observer: &mut dyn TrainObserver,
    ) -> Result<Vec<StepMetrics>, TrainError> {
        std::fs::create_dir_all(&self.out_dir).map_err(|e| TrainError::io(&self.out_dir, e))?;
        let metrics_path = self.out_dir.join("metrics.jsonl");
        if self.step == 0 {
            // A fresh run starts a fresh log.
            let _ = std::fs::remove_file(&metrics_path);
        } else {
            truncate_metrics_after(&metrics_path, self.step)?;
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| TrainError::io(&metrics_path, e))?;
        let first = self.step;
        observer.on_start(first, self.cfg.steps);
        let started = Instant::now();
        let mut history = Vec::new();
        while self.step < self.cfg.steps {
            let mut batches = Vec::with_capacity(self.cfg.grad_accum);
            for _ in 0..self.cfg.grad_accum {
                batches.push(data.next_batch(self.cfg.batch_size)?);
            }
            let mut m = match self.train_step(&batches) {
                Ok(m) => m,
                Err(e @ TrainError::NonFinite { .. }) => {
                    let msg = format!(
                        "training stopped: {e}. The last good checkpoint is kept under {}; lower the \
                         learning rate or enable max_grad_norm.",
                        self.out_dir.join("checkpoints").display()
                    );
                    observer.on_message(&msg);
                    return Err(TrainError::Invalid(msg));
                }
                Err(e) => return Err(e),
            };
            m.elapsed_s = started.elapsed().as_secs_f64();
            let done = (self.step - first) as f64;
            m.eta_s = m.elapsed_s / done * (self.cfg.steps - self.step) as f64;
            let mut record = serde_json::to_value(&m).map_err(|source| TrainError::Json {
                path: metrics_path.clone(),
                source,
            })?;
            if self
                .cfg
                .eval_every
                .is_some_and(|n| self.step.is_multiple_of(n))
                || { self.step == self.cfg.steps && self.cfg.eval_every.is_some() }
            {
                if let Some(eval) = observer.evaluate(&self.model, self.step)? {
                    record["eval"] = eval;
                }
            }
            writeln!(log, "{record}").map_err(|e| TrainError::io(&metrics_path, e))?;
            observer.on_step(&m);
            if self.step.is_multiple_of(self.cfg.log_every) {
                tracing::info!(
                    step = m.step,
                    loss = m.loss,
                    lr = m.lr,
                    grad_norm = m.grad_norm,
                    "train"
                );
            }
            history.push(m);
            let save_now = self
                .cfg
                .save_every
                .is_some_and(|n| self.step.is_multiple_of(n))
                || self.step == self.cfg.steps;
            if save_now {
                log.flush().map_err(|e| TrainError::io(&metrics_path, e))?;
                self.save(data)?;
            }
        }
        Ok(history)
    }
}

/// Non-padding tokens of a micro-batch (all of them without an attention mask).
fn sequence_tokens(inputs: &ModelInputs) -> Result<usize, TrainError> {
    Ok(match &inputs.attention_mask {
        Some(m) => m
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize,
        None => inputs
            .input_ids
            .as_ref()
            .map(|t| t.elem_count())
            .unwrap_or(0),
    })
}

/// Forward + backward of one micro-batch: its share of the step's mean token loss (summed loss over the
/// step's `total_labels`) and the gradients of that share.
fn micro_batch_grads(
    model: &Idefics2ForConditionalGeneration,
    inputs: &ModelInputs,
    labels: &Tensor,
    total_labels: usize,
) -> Result<(f64, Option<GradStore>), TrainError> {
    let hidden = model.forward_hidden(inputs, None)?;
    let vocab = model.config().text_config.vocab_size;
    let sum =
        causal_lm_loss_sum_from_hidden(&hidden, |h| model.lm_head().forward(h), vocab, labels)?;
    let loss = sum.sum.affine(1.0 / total_labels as f64, 0.0)?;
    let value = loss.to_scalar::<f32>()? as f64;
    if !value.is_finite() {
        // Reported by the caller with the step number; no backward through a non-finite loss.
        return Ok((value, None));
    }
    Ok((value, Some(loss.backward()?)))
}

/// Drops metrics lines of steps after `step` (a run killed after logging but before its next checkpoint
/// repeats those steps when resumed).
fn truncate_metrics_after(path: &Path, step: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(path, out).map_err(|e| TrainError::io(path, e))
}

/// A [`super::data::MixtureStream`] as the loop's batch source, collating onto `device`.
pub struct StreamBatches {
    pub stream: super::data::MixtureStream,
    pub device: candle_core::Device,
}

impl BatchSource for StreamBatches {
    fn next_batch(&mut self, batch_size: usize) -> Result<TrainBatch, TrainError> {
        self.stream.next_batch(batch_size, &self.device)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.stream.state()).unwrap_or(serde_json::Value::Null)
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), TrainError> {
        let state: super::data::MixtureState = serde_json::from_value(state.clone())
            .map_err(|e| TrainError::Invalid(format!("checkpoint data position: {e}")))?;
        self.stream.restore(&state)
    }
}
