//! SigLIP pre-training as a task of the generic training loop ([`crate::train_loop`]): the loop does the
//! step, clipping, schedule, AdamW, metrics.jsonl and resumable checkpoints; this file says what a SigLIP
//! batch is and how its loss and gradients are computed.
//!
//! A step takes one batch (`grad_accum = 1`): the sigmoid loss couples every pair of the batch, so it does not
//! split into micro-batches whose gradients add up. The parallelism of a SigLIP step is inside the batch,
//! over image size groups (`siglip_parallel.rs`).

use super::{PairSample, SiglipModel, SiglipOptions, SiglipStep};
use crate::hf_checkpoint::{load_tensors, read_config_json, save_hf_checkpoint};
use crate::optimizer::{AdamW, AdamWConfig, ParamGroup};
use crate::rng::TrainRng;
use crate::schedule::{Decay, LrSchedule};
use crate::train_loop::{
    BatchSource, LoopConfig, StepCounts, StepMetrics, TrainLoop, TrainObserver, TrainTask,
};
use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use idefics::config::Idefics2Config;
use idefics_processor::image::NormalizeLut;
use idefics_processor::{Idefics2ImageProcessorConfig, TextTokenizer};
use std::collections::HashMap;
use std::path::Path;

/// What the loop trains for SigLIP: the model, the tokenizer of the captions and the stage's settings.
pub struct SiglipTask {
    pub model: SiglipModel,
    tokenizer: TextTokenizer,
    opts: SiglipOptions,
}

impl SiglipTask {
    /// Every trained variable: the weight-decayed ones, then the temperature and bias.
    fn trained_params(&self) -> Vec<(String, Var)> {
        let mut params = self.model.main_params();
        params.extend(self.model.scalar_params());
        params
    }

    /// Tokenises captions: no BOS (it would add the same vector to every caption's mean), cut to `max_text_len`;
    /// an empty caption is an error naming it.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TrainError> {
        texts
            .iter()
            .map(|t| {
                let mut ids = self
                    .tokenizer
                    .encode(t, false)
                    .map_err(|e| TrainError::Invalid(e.to_string()))?;
                ids.truncate(self.opts.max_text_len);
                if ids.is_empty() {
                    return Err(TrainError::Invalid(format!("caption {t:?} has no tokens")));
                }
                Ok(ids)
            })
            .collect()
    }

    /// The longest image side of the batch of step `step` (0-based).
    pub fn longest_edge_at(&self, step: u64) -> usize {
        let edges = &self.opts.longest_edges; // non-empty: checked in `SiglipTrainer::new`
        edges[(step % edges.len() as u64) as usize]
    }

    /// The images (resized for step `step`) and tokenised captions of a batch.
    fn prepare_pairs(
        &self,
        batch: &[PairSample],
        step: u64,
    ) -> Result<(Vec<Tensor>, Vec<Vec<u32>>), TrainError> {
        let edge = self.longest_edge_at(step);
        let images = batch
            .iter()
            .map(|s| self.model.image_tensor(&s.image, edge))
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&str> = batch.iter().map(|s| s.text.as_str()).collect();
        Ok((images, self.tokenize(&texts)?))
    }
}

impl TrainTask for SiglipTask {
    type Batch = Vec<PairSample>;
    type Prepared = (Vec<Tensor>, Vec<Vec<u32>>);

    fn device(&self) -> &Device {
        &self.model.device
    }

    fn prepare(
        &mut self,
        batches: &[Vec<PairSample>],
        step: u64,
        _cfg: &LoopConfig,
        _rng: &mut TrainRng,
    ) -> Result<(Self::Prepared, StepCounts), TrainError> {
        let [batch] = batches else {
            return Err(TrainError::Invalid(format!(
                "a SigLIP step takes one batch (grad_accum = 1), got {}: the loss couples every pair of it",
                batches.len()
            )));
        };
        let prepared = self.prepare_pairs(batch, step)?;
        let counts = StepCounts {
            label_tokens: batch.len(),
            tokens: batch.len(),
        };
        Ok((prepared, counts))
    }

    fn micro_batch_grads(
        &self,
        (images, ids): &Self::Prepared,
        _index: usize,
    ) -> Result<(f64, Option<GradStore>), TrainError> {
        if self.opts.parallel_images > 1 {
            let vars = self.trained_params().into_iter().map(|(_, v)| v).collect();
            return self.model.loss_and_grads_parallel(
                images,
                ids,
                self.opts.parallel_images,
                vars,
            );
        }
        let loss = self.model.loss(images, ids)?;
        let value = loss.to_scalar::<f32>()? as f64;
        Ok((
            value,
            value.is_finite().then(|| loss.backward()).transpose()?,
        ))
    }

    fn step_extra(&self) -> Result<serde_json::Map<String, serde_json::Value>, TrainError> {
        let (temperature, bias) = self.model.temperature_and_bias()?;
        let mut extra = serde_json::Map::new();
        extra.insert("temperature".into(), temperature.into());
        extra.insert("bias".into(), bias.into());
        Ok(extra)
    }

    fn loss_name(&self) -> &str {
        "SigLIP loss"
    }

    fn checkpoint_tensors(&self) -> HashMap<String, Tensor> {
        self.trained_params()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect()
    }

    fn load_checkpoint_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        for (name, var) in self.trained_params() {
            let saved = tensors.get(&name).ok_or_else(|| {
                TrainError::Invalid(format!("the checkpoint has no SigLIP tensor {name}"))
            })?;
            if saved.dims() != var.dims() {
                return Err(TrainError::Invalid(format!(
                    "the checkpoint's {name} has shape {:?}, the model's {:?}",
                    saved.dims(),
                    var.dims()
                )));
            }
            var.set(&saved.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// The SigLIP stage: the generic training loop over a [`SiglipTask`].
pub struct SiglipTrainer {
    inner: TrainLoop<SiglipTask>,
}

impl SiglipTrainer {
    /// Loads the Idefics2 checkpoint in `model_dir` (config, weights, tokenizer, processor settings).
    pub fn from_checkpoint(
        model_dir: &Path,
        opts: SiglipOptions,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let config = Idefics2Config::from_file(&model_dir.join("config.json"))
            .map_err(|e| TrainError::Invalid(e.to_string()))?;
        let tensors = load_tensors(model_dir, DType::F32, device)?;
        let tokenizer = TextTokenizer::from_dir(model_dir)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", model_dir.display())))?;
        let ip = Idefics2ImageProcessorConfig::from_model_dir(model_dir).unwrap_or_default();
        let lut = NormalizeLut::new(&ip);
        let model = SiglipModel::new(&config, &tensors, &opts, lut, device)?;
        Self::new(model, tokenizer, opts)
    }

    /// A trainer around an already built model; it keeps nothing on disk until [`Self::set_run_dir`].
    pub fn new(
        model: SiglipModel,
        tokenizer: TextTokenizer,
        opts: SiglipOptions,
    ) -> Result<Self, TrainError> {
        let patch = model.config.vision_config.patch_size;
        if opts.longest_edges.is_empty() || opts.longest_edges.iter().any(|&e| e < patch) {
            return Err(TrainError::Invalid(format!(
                "longest_edges {:?}: give at least one size, each >= the patch size {patch}",
                opts.longest_edges
            )));
        }
        if opts.parallel_images == 0 {
            return Err(TrainError::Invalid(
                "parallel_images must be >= 1 (1 = no worker threads)".into(),
            ));
        }
        if opts.batch_size < 2 {
            return Err(TrainError::Invalid(
                "batch_size must be >= 2 (the loss needs negatives)".into(),
            ));
        }
        // The temperature and bias are never weight-decayed (as in big_vision) and take their own rate.
        let optimizer = AdamW::with_groups(
            vec![
                ParamGroup {
                    params: model.main_params(),
                    weight_decay: None,
                    lr_scale: 1.0,
                },
                ParamGroup {
                    params: model.scalar_params(),
                    weight_decay: Some(0.0),
                    lr_scale: opts.scalar_lr_scale,
                },
            ],
            AdamWConfig {
                weight_decay: opts.weight_decay,
                ..Default::default()
            },
        )?;
        let schedule = LrSchedule {
            peak_lr: opts.lr,
            warmup_steps: opts.warmup_steps,
            total_steps: opts.steps.max(1),
            decay: Decay::Cosine,
            min_ratio: 0.0,
        };
        let cfg = LoopConfig {
            steps: opts.steps,
            batch_size: opts.batch_size,
            grad_accum: 1,
            seed: opts.seed,
            log_every: 10,
            save_every: opts.save_every,
            keep_checkpoints: 2,
            neftune_alpha: None,
            eval_every: None,
            parallel_micro_batches: 1,
        };
        let max_grad_norm = Some(opts.max_grad_norm);
        let task = SiglipTask {
            model,
            tokenizer,
            opts,
        };
        let inner = TrainLoop::with_task(task, optimizer, max_grad_norm, schedule, cfg, None)?;
        Ok(Self { inner })
    }

    /// Keeps metrics.jsonl and resumable checkpoints (`checkpoints/step-N`) under `dir` from now on.
    pub fn set_run_dir(&mut self, dir: &Path) {
        self.inner.set_out_dir(Some(dir));
    }

    pub fn model(&self) -> &SiglipModel {
        &self.inner.task().model
    }

    /// Optimizer steps done.
    pub fn step_count(&self) -> u64 {
        self.inner.step()
    }

    /// See [`SiglipTask::tokenize`].
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, TrainError> {
        self.inner.task().tokenize(texts)
    }

    /// The longest image side of the batch of step `step` (0-based).
    pub fn longest_edge_at(&self, step: u64) -> usize {
        self.inner.task().longest_edge_at(step)
    }

    /// The images and token ids of `batch` as the next step would see them.
    pub(crate) fn prepare(
        &self,
        batch: &[PairSample],
    ) -> Result<(Vec<Tensor>, Vec<Vec<u32>>), TrainError> {
        self.inner.task().prepare_pairs(batch, self.inner.step())
    }

    /// The loss of a batch without updating anything.
    pub fn eval_loss(&self, batch: &[PairSample]) -> Result<f64, TrainError> {
        let (images, ids) = self.prepare(batch)?;
        Ok(self.model().loss(&images, &ids)?.to_scalar::<f32>()? as f64)
    }

    /// One optimizer step on `batch`.
    pub fn step(&mut self, batch: &[PairSample]) -> Result<SiglipStep, TrainError> {
        let m = self.inner.train_step(&[batch.to_vec()])?;
        Ok(SiglipStep::from(&m))
    }

    /// Runs `opts.steps` steps on batches drawn from `data` (which should repeat), calling `on_step` after each.
    pub fn train<I>(
        &mut self,
        data: &mut I,
        on_step: impl FnMut(&SiglipStep),
    ) -> Result<(), TrainError>
    where
        I: Iterator<Item = Result<PairSample, TrainError>>,
    {
        let mut source = PairBatches::new(data, |pair| pair);
        self.inner.run(&mut source, &mut OnStep(on_step))?;
        Ok(())
    }

    /// Runs until `opts.steps` through the generic loop (metrics.jsonl and checkpoints in the run folder,
    /// when one is set). Returns the metrics of every step this call ran.
    pub fn run(
        &mut self,
        data: &mut dyn BatchSource<Vec<PairSample>>,
        observer: &mut dyn TrainObserver<SiglipTask>,
    ) -> Result<Vec<StepMetrics>, TrainError> {
        self.inner.run(data, observer)
    }

    /// Continues from a checkpoint of the run folder (weights, heads, temperature and bias, optimizer,
    /// schedule position, data position).
    pub fn restore(
        &mut self,
        dir: &Path,
        data: &mut dyn BatchSource<Vec<PairSample>>,
    ) -> Result<(), TrainError> {
        self.inner.restore(dir, data)
    }

    /// Writes the checkpoint of `model_dir` to `out_dir` with the trained tower in place of the old one (all
    /// other tensors, the config and the tokenizer / processor files unchanged).
    pub fn save_into(&self, model_dir: &Path, out_dir: &Path) -> Result<(), TrainError> {
        let config = read_config_json(model_dir)?;
        let mut tensors = load_tensors(model_dir, DType::F32, &Device::Cpu)?;
        for (name, var) in self.model().vision_vars() {
            tensors.insert(name.clone(), var.as_tensor().to_device(&Device::Cpu)?);
        }
        save_hf_checkpoint(out_dir, &config, &tensors, &[model_dir])
    }
}

impl From<&StepMetrics> for SiglipStep {
    fn from(m: &StepMetrics) -> Self {
        let extra = |key: &str| {
            m.extra
                .get(key)
                .and_then(|v| v.as_f64())
                .unwrap_or(f64::NAN)
        };
        SiglipStep {
            step: m.step,
            loss: m.loss,
            lr: m.lr,
            grad_norm: m.grad_norm,
            temperature: extra("temperature"),
            bias: extra("bias"),
        }
    }
}

/// A step callback as an observer of the loop.
struct OnStep<F>(F);

impl<F: FnMut(&SiglipStep)> TrainObserver<SiglipTask> for OnStep<F> {
    fn on_step(&mut self, metrics: &StepMetrics) {
        (self.0)(&SiglipStep::from(metrics))
    }
}

/// Batches of image-caption pairs from an iterator of raw items and a `decode` for each: an item that fails
/// to decode is skipped with a warning. Its position is the number of items drawn, so a restore skips that
/// many raw items of a fresh iterator without decoding them (the iterator must repeat its order, as a
/// seeded shuffle does).
pub struct PairBatches<I, F> {
    items: I,
    decode: F,
    drawn: u64,
}

impl<I, F> PairBatches<I, F> {
    pub fn new(items: I, decode: F) -> Self {
        Self {
            items,
            decode,
            drawn: 0,
        }
    }
}

impl<I, F> BatchSource<Vec<PairSample>> for PairBatches<I, F>
where
    I: Iterator,
    F: FnMut(I::Item) -> Result<PairSample, TrainError>,
{
    fn next_batch(&mut self, batch_size: usize) -> Result<Vec<PairSample>, TrainError> {
        let mut batch = Vec::with_capacity(batch_size);
        while batch.len() < batch_size {
            let Some(item) = self.items.next() else {
                break;
            };
            self.drawn += 1;
            match (self.decode)(item) {
                Ok(pair) => batch.push(pair),
                Err(e) => tracing::warn!("skipping a pair: {e}"),
            }
        }
        if batch.len() < 2 {
            return Err(TrainError::Invalid(format!(
                "the pair data ran out after {} pairs (need at least 2 pairs per batch)",
                self.drawn
            )));
        }
        Ok(batch)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "pairs_drawn": self.drawn })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), TrainError> {
        let target = state["pairs_drawn"].as_u64().ok_or_else(|| {
            TrainError::Invalid(format!(
                "checkpoint data position {state} has no \"pairs_drawn\" count"
            ))
        })?;
        if target < self.drawn {
            return Err(TrainError::Invalid(format!(
                "cannot move the pair data back from {} to {target} pairs drawn",
                self.drawn
            )));
        }
        while self.drawn < target {
            if self.items.next().is_none() {
                return Err(TrainError::Invalid(format!(
                    "the pair data ran out after {} pairs, the checkpoint had drawn {target}",
                    self.drawn
                )));
            }
            self.drawn += 1;
        }
        Ok(())
    }
}
