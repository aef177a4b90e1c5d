//! The training loop, generic over what is trained ([`TrainTask`]): micro-batches -> loss -> backward ->
//! accumulate -> clip -> AdamW, with metrics.jsonl and checkpoints that a killed run resumes from exactly
//! (trained tensors, optimizer moments, schedule position, RNG, data position).
//!
//! The task says what a step's micro-batches are and how one of them gives its share of the step's loss and
//! the gradients of that share; the loop does the rest, the same way for every task. With
//! `parallel_micro_batches > 1` several micro-batches run forward and backward at once on their own threads;
//! their gradients are then added in micro-batch order, so the step is the same as the sequential one.
//! Tasks: the Idefics2 model ([`crate::trainer::Trainer`]) and SigLIP pre-training of its vision tower
//! ([`crate::siglip::SiglipTrainer`]).

use crate::accumulate::GradAccumulator;
use crate::checkpoint::{
    load_checkpoint, save_checkpoint, verify_checkpoint, CheckpointContents, TrainerState,
};
use crate::optimizer::{clip_coefficient, grad_norm, AdamW};
use crate::peft::PeftAdapter;
use crate::rng::TrainRng;
use crate::schedule::LrSchedule;
use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where batches come from: deterministic, with a position that can be saved and restored.
pub trait BatchSource<B = crate::collate::TrainBatch> {
    fn next_batch(&mut self, batch_size: usize) -> Result<B, TrainError>;
    /// The position, saved in checkpoints.
    fn state(&self) -> serde_json::Value;
    /// Moves to a saved position.
    fn restore(&mut self, state: &serde_json::Value) -> Result<(), TrainError>;
}

/// Label and sequence counts of a step, for the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepCounts {
    /// Items the loss is a mean over (label tokens; pairs for SigLIP).
    pub label_tokens: usize,
    /// Input items processed (non-padding tokens; pairs for SigLIP).
    pub tokens: usize,
}

/// What a training loop trains: its micro-batches, their loss and gradients, and its trained tensors.
pub trait TrainTask: Sync {
    /// One micro-batch, as a [`BatchSource`] gives it.
    type Batch;
    /// A step's micro-batches made ready for forward and backward (read by the worker threads).
    type Prepared: Sync;

    fn device(&self) -> &Device;

    /// Readies the micro-batches of step `step` (0-based) and switches the task to training mode. Randomness
    /// of the step (NEFTune noise) comes from `rng`, drawn in micro-batch order.
    fn prepare(
        &mut self,
        batches: &[Self::Batch],
        step: u64,
        cfg: &LoopConfig,
        rng: &mut TrainRng,
    ) -> Result<(Self::Prepared, StepCounts), TrainError>;

    /// Forward + backward of micro-batch `index`: its share of the step's loss and the gradients of that
    /// share; `None` instead of gradients when the loss is not finite (no backward through it).
    fn micro_batch_grads(
        &self,
        prepared: &Self::Prepared,
        index: usize,
    ) -> Result<(f64, Option<GradStore>), TrainError>;

    /// Ends the step's training mode.
    fn finish_step(&mut self) {}

    /// Values logged beside the loss after a step (SigLIP's temperature and bias).
    fn step_extra(&self) -> Result<serde_json::Map<String, serde_json::Value>, TrainError> {
        Ok(serde_json::Map::new())
    }

    /// What the non-finite-loss error calls the loss.
    fn loss_name(&self) -> &str {
        "loss"
    }

    /// The PEFT adapter saved in checkpoints, if the task trains one.
    fn peft_adapter(&self) -> Result<Option<PeftAdapter>, TrainError> {
        Ok(None)
    }

    /// Trained tensors saved whole in checkpoints (empty when an adapter carries everything).
    fn checkpoint_tensors(&self) -> HashMap<String, Tensor>;

    /// Puts back the tensors of [`TrainTask::checkpoint_tensors`] from a checkpoint.
    fn load_checkpoint_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<(), TrainError>;
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
    /// Mean loss of the step's batch (all micro-batches together).
    pub loss: f64,
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Label tokens in the step (pairs for SigLIP).
    pub label_tokens: usize,
    /// Sequence tokens (non-padding) in the step (pairs for SigLIP).
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub step_time_s: f64,
    pub elapsed_s: f64,
    pub eta_s: f64,
    /// The task's own values ([`TrainTask::step_extra`]), logged beside the others.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Callbacks of the loop: progress display, evaluation.
pub trait TrainObserver<M: ?Sized = crate::trainable::TrainableModel> {
    fn on_start(&mut self, _first_step: u64, _total_steps: u64) {}
    fn on_step(&mut self, _metrics: &StepMetrics) {}
    fn on_message(&mut self, _message: &str) {}
    /// Runs an evaluation of the current model; the returned JSON is logged beside the loss.
    fn evaluate(
        &mut self,
        _model: &M,
        _step: u64,
    ) -> Result<Option<serde_json::Value>, TrainError> {
        Ok(None)
    }
}

/// An observer that does nothing.
pub struct Silent;
impl<M: ?Sized> TrainObserver<M> for Silent {}

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

/// Loop state besides what is trained.
pub struct TrainLoop<T: TrainTask> {
    task: T,
    optimizer: AdamW,
    schedule: LrSchedule,
    max_grad_norm: Option<f64>,
    cfg: LoopConfig,
    rng: TrainRng,
    step: u64,
    tokens_seen: u64,
    /// Where metrics.jsonl and checkpoints go; `None`: nowhere (a run kept in memory).
    out_dir: Option<PathBuf>,
}

impl<T: TrainTask> TrainLoop<T> {
    /// A loop over `task` whose trained variables are those of `optimizer`.
    pub fn with_task(
        task: T,
        optimizer: AdamW,
        max_grad_norm: Option<f64>,
        schedule: LrSchedule,
        cfg: LoopConfig,
        out_dir: Option<&Path>,
    ) -> Result<Self, TrainError> {
        validate_settings(&cfg, &schedule, max_grad_norm)?;
        Ok(Self {
            task,
            optimizer,
            schedule,
            max_grad_norm,
            rng: TrainRng::seed_from_u64(cfg.seed ^ 0x006e_6566_7475_6e65),
            cfg,
            step: 0,
            tokens_seen: 0,
            out_dir: out_dir.map(Path::to_path_buf),
        })
    }

    /// What is trained.
    pub fn task(&self) -> &T {
        &self.task
    }

    pub fn task_mut(&mut self) -> &mut T {
        &mut self.task
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &LoopConfig {
        &self.cfg
    }

    /// Sets where metrics.jsonl and checkpoints go (`None`: nowhere).
    pub fn set_out_dir(&mut self, dir: Option<&Path>) {
        self.out_dir = dir.map(Path::to_path_buf);
    }

    /// Where metrics and checkpoints go (an empty path for a run kept in memory).
    pub fn out_dir(&self) -> &Path {
        self.out_dir.as_deref().unwrap_or(Path::new(""))
    }

    /// Restores trained tensors, optimizer, schedule position, RNG and data position from a checkpoint made
    /// by this loop. A task trained through an adapter must have been built from the same checkpoint.
    pub fn restore(
        &mut self,
        dir: &Path,
        data: &mut dyn BatchSource<T::Batch>,
    ) -> Result<(), TrainError> {
        let device = self.task.device().clone();
        let ck = load_checkpoint(dir, &device)?;
        if let Some(t) = &ck.trainable {
            self.task.load_checkpoint_tensors(t)?;
        }
        self.optimizer.load(&ck.optimizer_path, &device)?;
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
    pub fn save(&self, data: &dyn BatchSource<T::Batch>) -> Result<PathBuf, TrainError> {
        let out_dir = self.out_dir.as_deref().ok_or_else(|| {
            TrainError::Invalid("this training run has no output folder to save into".into())
        })?;
        let dir = checkpoint_dir(out_dir, self.step);
        let adapter = self.task.peft_adapter()?;
        let full = self.task.checkpoint_tensors();
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
        prune_checkpoints(out_dir, self.cfg.keep_checkpoints)?;
        Ok(dir)
    }

    /// One optimizer step over `batches` (the micro-batches of the step).
    pub fn train_step(&mut self, batches: &[T::Batch]) -> Result<StepMetrics, TrainError> {
        let start = Instant::now();
        let (prepared, counts) = self
            .task
            .prepare(batches, self.step, &self.cfg, &mut self.rng)?;
        let vars: Vec<Var> = self.optimizer.vars().into_iter().cloned().collect();
        let mut acc = GradAccumulator::new(vars.clone());
        let mut loss_total = 0f64;
        let task = &self.task;
        let indices: Vec<usize> = (0..batches.len()).collect();
        for group in indices.chunks(self.cfg.parallel_micro_batches.max(1)) {
            let run = |i: usize| task.micro_batch_grads(&prepared, i);
            let results = crate::threads::run_scoped("micro-batch", group, run);
            // Summed in micro-batch order: the same gradients as the sequential loop, bit for bit.
            for r in results {
                let (value, grads) = r?;
                let Some(grads) = grads else {
                    return Err(TrainError::NonFinite {
                        what: format!("{} at step {}", task.loss_name(), self.step + 1),
                        value,
                    });
                };
                loss_total += value;
                acc.add(&grads, 1.0)?;
            }
        }
        drop(prepared);
        self.task.finish_step();
        let grads = acc.take();
        let var_refs: Vec<&Var> = vars.iter().collect();
        let norm = grad_norm(&grads, &var_refs)?;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                what: format!("gradient norm at step {}", self.step + 1),
                value: norm,
            });
        }
        let lr = self.schedule.lr(self.step);
        // Clipping as torch's `clip_grad_norm_`, applied inside the update (no scaled copy of the gradients).
        let grad_scale = self
            .max_grad_norm
            .map_or(1.0, |max| clip_coefficient(norm, max));
        self.optimizer.step_scaled(&grads, lr, grad_scale)?;
        self.step += 1;
        self.tokens_seen += counts.tokens as u64;
        let dt = start.elapsed().as_secs_f64();
        Ok(StepMetrics {
            step: self.step,
            loss: loss_total,
            lr,
            grad_norm: norm,
            label_tokens: counts.label_tokens,
            tokens: counts.tokens,
            tokens_per_s: counts.tokens as f64 / dt.max(1e-9),
            step_time_s: dt,
            elapsed_s: 0.0,
            eta_s: 0.0,
            extra: self.task.step_extra()?,
        })
    }

    /// Runs until `cfg.steps`, logging to `out_dir/metrics.jsonl` (appended, so a resumed run continues the
    /// same file) and saving checkpoints. Returns the metrics of every step this call ran.
    pub fn run(
        &mut self,
        data: &mut dyn BatchSource<T::Batch>,
        observer: &mut dyn TrainObserver<T>,
    ) -> Result<Vec<StepMetrics>, TrainError> {
        let mut log = match &self.out_dir {
            Some(out_dir) => Some(open_metrics_log(out_dir, self.step)?),
            None => None,
        };
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
                        self.out_dir().join("checkpoints").display()
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
                path: self.out_dir().join("metrics.jsonl"),
                source,
            })?;
            if self
                .cfg
                .eval_every
                .is_some_and(|n| self.step.is_multiple_of(n))
                || { self.step == self.cfg.steps && self.cfg.eval_every.is_some() }
            {
                if let Some(eval) = observer.evaluate(&self.task, self.step)? {
                    record["eval"] = eval;
                }
            }
            if let Some((path, log)) = &mut log {
                writeln!(log, "{record}").map_err(|e| TrainError::io(&*path, e))?;
            }
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
            if let (true, Some((path, log))) = (save_now, &mut log) {
                log.flush().map_err(|e| TrainError::io(&*path, e))?;
                self.save(data)?;
            }
        }
        Ok(history)
    }
}

/// Checks the loop settings, the schedule and the clipping threshold.
pub fn validate_settings(
    cfg: &LoopConfig,
    schedule: &LrSchedule,
    max_grad_norm: Option<f64>,
) -> Result<(), TrainError> {
    cfg.validate()?;
    schedule.validate()?;
    if let Some(m) = max_grad_norm {
        if !(m.is_finite() && m > 0.0) {
            return Err(TrainError::Invalid(format!(
                "max_grad_norm must be > 0, got {m}"
            )));
        }
    }
    Ok(())
}

/// Opens `out_dir/metrics.jsonl` for appending: a fresh run (at step 0) starts a fresh log, a resumed one
/// drops the lines of steps after its checkpoint.
fn open_metrics_log(out_dir: &Path, step: u64) -> Result<(PathBuf, std::fs::File), TrainError> {
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let metrics_path = out_dir.join("metrics.jsonl");
    if step == 0 {
        let _ = std::fs::remove_file(&metrics_path);
    } else {
        truncate_metrics_after(&metrics_path, step)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io(&metrics_path, e))?;
    Ok((metrics_path, log))
}

fn prune_checkpoints(out_dir: &Path, keep: usize) -> Result<(), TrainError> {
    let dir = out_dir.join("checkpoints");
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
    while steps.len() > keep.max(1) {
        let old = steps.remove(0);
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
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
