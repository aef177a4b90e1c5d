//! The training loop of the Idefics models (Idefics2, Idefics3, SmolVLM): [`TrainLoop`] over a [`TrainableModel`], with checkpoints that a
//! killed run resumes from exactly (weights / adapters, optimizer moments, schedule position, RNG, data
//! position).
//!
//! One optimizer step over `grad_accum` micro-batches minimises the mean token loss of their union: the
//! micro-batches are drawn first, their label tokens counted, and each micro-batch's summed loss is divided by
//! that total, so accumulation equals one larger batch (not a mean of per-micro-batch means).

use super::loss::causal_lm_loss_sum_from_hidden;
use super::optimizer::{AdamW, AdamWConfig};
use super::peft::PeftAdapter;
use super::rng::TrainRng;
use super::schedule::LrSchedule;
use super::trainable::TrainableModel;
use super::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use idefics::model::{ModelInputs, VlmModel};
use rand::Rng;
use std::collections::HashMap;
use std::path::Path;

pub use super::collate::TrainBatch;
pub use super::train_loop::{
    checkpoint_dir, latest_checkpoint, BatchSource, LoopConfig, Silent, StepCounts, StepMetrics,
    TrainLoop, TrainObserver, TrainTask,
};

/// The loop that trains a model of any family (full weights, adapters or both).
pub type Trainer = TrainLoop<TrainableModel>;

impl Trainer {
    pub fn new(
        model: TrainableModel,
        optim: AdamWConfig,
        max_grad_norm: Option<f64>,
        schedule: LrSchedule,
        cfg: LoopConfig,
        out_dir: &Path,
    ) -> Result<Self, TrainError> {
        // Checked before the optimizer allocates its moments.
        super::train_loop::validate_settings(&cfg, &schedule, max_grad_norm)?;
        let optimizer = AdamW::new(model.params().to_vec(), optim)?;
        Self::with_task(
            model,
            optimizer,
            max_grad_norm,
            schedule,
            cfg,
            Some(out_dir),
        )
    }

    pub fn model(&self) -> &TrainableModel {
        self.task()
    }
}

/// A step's micro-batches made ready: inputs (with NEFTune's noisy embeddings), labels, and the label
/// tokens of the whole step (each micro-batch's summed loss is divided by it).
pub struct PreparedBatches {
    inputs: Vec<ModelInputs>,
    labels: Vec<Tensor>,
    total_labels: usize,
}

impl TrainTask for TrainableModel {
    type Batch = TrainBatch;
    type Prepared = PreparedBatches;

    fn device(&self) -> &Device {
        self.model().device()
    }

    fn prepare(
        &mut self,
        batches: &[TrainBatch],
        _step: u64,
        cfg: &LoopConfig,
        rng: &mut TrainRng,
    ) -> Result<(PreparedBatches, StepCounts), TrainError> {
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
        self.set_training(true);
        let mut tokens = 0usize;
        // Noise first, in micro-batch order, so that the RNG stream does not depend on the threading.
        let mut inputs = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut x = batch.inputs.clone();
            x.inputs_embeds = neftune_embeds(self, cfg.neftune_alpha, rng, &x)?;
            tokens += sequence_tokens(&x)?;
            inputs.push(x);
        }
        let labels = batches.iter().map(|b| b.labels.clone()).collect();
        let counts = StepCounts {
            label_tokens: total_labels,
            tokens,
        };
        Ok((
            PreparedBatches {
                inputs,
                labels,
                total_labels,
            },
            counts,
        ))
    }

    fn micro_batch_grads(
        &self,
        prepared: &PreparedBatches,
        index: usize,
    ) -> Result<(f64, Option<GradStore>), TrainError> {
        micro_batch_grads(
            self.model(),
            &prepared.inputs[index],
            &prepared.labels[index],
            prepared.total_labels,
        )
    }

    fn finish_step(&mut self) {
        self.set_training(false);
    }

    fn peft_adapter(&self) -> Result<Option<PeftAdapter>, TrainError> {
        TrainableModel::peft_adapter(self)
    }

    fn checkpoint_tensors(&self) -> HashMap<String, Tensor> {
        self.full_tensors()
    }

    fn load_checkpoint_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        self.load_full_tensors(tensors)
    }
}

/// NEFTune's noisy token embeddings: uniform noise in `±alpha / sqrt(L * D)` added to the embeddings
/// `[B, L, D]` (Jain et al. 2023, as transformers' `neftune_post_forward_hook`), drawn from the loop's
/// seeded RNG so resumes repeat it. `None` without NEFTune.
fn neftune_embeds(
    model: &TrainableModel,
    alpha: Option<f64>,
    rng: &mut TrainRng,
    inputs: &ModelInputs,
) -> Result<Option<Tensor>, TrainError> {
    let Some(alpha) = alpha else {
        return Ok(None);
    };
    let Some(ids) = &inputs.input_ids else {
        return Ok(None);
    };
    let (b, l) = ids.dims2()?;
    let model = model.model();
    let d = model.text_config().hidden_size;
    let mag = alpha / ((l * d) as f64).sqrt();
    let values: Vec<f32> = (0..b * l * d)
        .map(|_| (rng.random_range(-1.0..1.0) * mag) as f32)
        .collect();
    let noise = Tensor::from_vec(values, (b, l, d), model.device())?;
    let embeds = model
        .text_model()
        .embed(&ids.to_dtype(candle_core::DType::U32)?)?;
    Ok(Some((embeds + noise)?))
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
    model: &VlmModel,
    inputs: &ModelInputs,
    labels: &Tensor,
    total_labels: usize,
) -> Result<(f64, Option<GradStore>), TrainError> {
    let hidden = model.forward_hidden(inputs, None)?;
    let vocab = model.vocab_size();
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
