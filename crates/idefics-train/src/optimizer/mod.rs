//! AdamW with f32 moments, parameter groups, global-norm gradient clipping and resumable state.
//!
//! candle-nn's `AdamW` keeps its moments in the parameter dtype and has no groups or clipping
//! (candle-nn 0.11 `optim.rs`). This one follows `torch.optim.AdamW` step for step:
//!   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
//!   p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! with m, v and the update computed in f32 whatever the parameter dtype. Weight decay is off for
//! biases and norm weights, decided by name as the HF Trainer does (`bias`, `norm` in the name).
//! Each component can scale the learning rate (`[optim.lr_scale]`, [`LrScales`]), as nanoVLM gives the
//! modality projection its own rate: a parameter's lr (and with it its weight decay) is the schedule's times
//! its component's scale.

mod cpu_update;

use super::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Storage, Tensor, Var};
use cpu_update::{fused_cpu_step, PAR_CHUNK};
use idefics::model::Component;
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// AdamW hyper-parameters (the learning rate is given per step, from the schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Per-component multipliers of the learning rate (all 1 by default).
    pub lr_scales: LrScales,
}

/// `[optim.lr_scale]` of a recipe: a learning-rate multiplier per component (parameters outside the six
/// components keep 1). 0 freezes a component's trainable parameters in effect, without removing its adapters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrScales {
    pub vision: f64,
    pub projection: f64,
    pub perceiver: f64,
    pub text: f64,
    pub embeddings: f64,
    pub lm_head: f64,
}

impl Default for LrScales {
    fn default() -> Self {
        Self {
            vision: 1.0,
            projection: 1.0,
            perceiver: 1.0,
            text: 1.0,
            embeddings: 1.0,
            lm_head: 1.0,
        }
    }
}

impl LrScales {
    /// The multiplier of the parameter named `name` (a checkpoint / module path).
    pub fn of(&self, name: &str) -> f64 {
        match Component::of(name) {
            Some(Component::Vision) => self.vision,
            Some(Component::Projection) => self.projection,
            Some(Component::Perceiver) => self.perceiver,
            Some(Component::Text) => self.text,
            Some(Component::Embeddings) => self.embeddings,
            Some(Component::LmHead) => self.lm_head,
            None => 1.0,
        }
    }

    /// Every multiplier must be finite and >= 0.
    pub fn validate(&self) -> Result<(), TrainError> {
        let all = [
            ("vision", self.vision),
            ("projection", self.projection),
            ("perceiver", self.perceiver),
            ("text", self.text),
            ("embeddings", self.embeddings),
            ("lm_head", self.lm_head),
        ];
        for (name, v) in all {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TrainError::Invalid(format!(
                    "optim.lr_scale.{name} must be a finite number >= 0, got {v}"
                )));
            }
        }
        Ok(())
    }
}

impl Default for AdamWConfig {
    /// torch.optim.AdamW's defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            lr_scales: LrScales::default(),
        }
    }
}

/// Whether a parameter is exempt from weight decay: biases and normalisation weights.
pub fn no_weight_decay(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("bias") || n.contains("norm")
}

/// The scalars of one update.
struct StepHyper {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    decay: f64,
    step_size: f64,
    bc2_sqrt: f64,
    /// Multiplies the gradient before the update (gradient clipping).
    grad_scale: f64,
}

/// The update as candle tensor ops (any device).
fn composed_step(slot: &mut Slot, g: &Tensor, h: &StepHyper) -> Result<(), TrainError> {
    let mut g = g.to_dtype(DType::F32)?;
    if h.grad_scale != 1.0 {
        g = g.affine(h.grad_scale, 0.0)?;
    }
    let mut p = slot.var.as_tensor().detach().to_dtype(DType::F32)?;
    if h.decay != 0.0 {
        p = p.affine(1.0 - h.lr * h.decay, 0.0)?;
    }
    slot.exp_avg = (slot.exp_avg.affine(h.beta1, 0.0)? + g.affine(1.0 - h.beta1, 0.0)?)?;
    slot.exp_avg_sq =
        (slot.exp_avg_sq.affine(h.beta2, 0.0)? + g.sqr()?.affine(1.0 - h.beta2, 0.0)?)?;
    let denom = slot.exp_avg_sq.sqrt()?.affine(1.0 / h.bc2_sqrt, h.eps)?;
    let update = (&slot.exp_avg / denom)?.affine(h.step_size, 0.0)?;
    let p = (p - update)?;
    slot.var.set(&p.to_dtype(slot.var.dtype())?)?;
    Ok(())
}

struct Slot {
    name: String,
    var: Var,
    lr_scale: f64,
    decay: bool,
    /// Weight decay of the slot's group (applied when `decay`).
    weight_decay: f64,
    /// Learning-rate multiplier of the slot's group.
    group_lr_scale: f64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// Parameters that share a weight decay and a learning-rate multiplier.
pub struct ParamGroup {
    pub params: Vec<(String, Var)>,
    /// `None`: the optimizer's `weight_decay`.
    pub weight_decay: Option<f64>,
    /// Multiplies the step's learning rate (before the per-component `lr_scales`).
    pub lr_scale: f64,
}

/// AdamW over named trainable variables.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

impl AdamW {
    /// One slot per named variable; names must be unique (they key the saved state).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self, TrainError> {
        Self::with_groups(
            vec![ParamGroup {
                params,
                weight_decay: None,
                lr_scale: 1.0,
            }],
            cfg,
        )
    }

    /// Parameter groups with their own weight decay and learning-rate multiplier (torch's `param_groups`),
    /// one step counter and one saved state for all; names must be unique across groups.
    pub fn with_groups(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<Self, TrainError> {
        cfg.lr_scales.validate()?;
        let mut seen = std::collections::HashSet::new();
        let mut slots = Vec::new();
        for group in groups {
            if !(group.lr_scale.is_finite() && group.lr_scale >= 0.0) {
                return Err(TrainError::Invalid(format!(
                    "a parameter group's learning-rate scale must be >= 0, got {}",
                    group.lr_scale
                )));
            }
            for (name, var) in group.params {
                if !seen.insert(name.clone()) {
                    return Err(TrainError::Invalid(format!(
                        "duplicate parameter name {name}"
                    )));
                }
                // Two tensors, not two handles of one: the update writes the moments in place.
                let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
                let (exp_avg, exp_avg_sq) = (zeros()?, zeros()?);
                slots.push(Slot {
                    decay: !no_weight_decay(&name),
                    lr_scale: cfg.lr_scales.of(&name),
                    weight_decay: group.weight_decay.unwrap_or(cfg.weight_decay),
                    group_lr_scale: group.lr_scale,
                    name,
                    var,
                    exp_avg,
                    exp_avg_sq,
                });
            }
        }
        Ok(Self {
            cfg,
            slots,
            step: 0,
        })
    }

    /// Updates taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters that get weight decay and those that do not.
    pub fn groups(&self) -> (Vec<&str>, Vec<&str>) {
        let (d, n): (Vec<&Slot>, Vec<&Slot>) = self.slots.iter().partition(|s| s.decay);
        (
            d.iter().map(|s| s.name.as_str()).collect(),
            n.iter().map(|s| s.name.as_str()).collect(),
        )
    }

    /// The variables, in order.
    pub fn vars(&self) -> Vec<&Var> {
        self.slots.iter().map(|s| &s.var).collect()
    }

    /// One AdamW update with learning rate `lr`. Parameters without a gradient are skipped (as torch
    /// skips `p.grad is None`); on CPU a non-finite gradient stops with an error naming the parameter (the
    /// training loop checks the global gradient norm on every device).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<(), TrainError> {
        self.step_scaled(grads, lr, 1.0)
    }

    /// [`AdamW::step`] on the gradients times `grad_scale`, without writing the scaled gradients: how the
    /// training loop applies gradient clipping ([`clip_coefficient`]).
    pub fn step_scaled(
        &mut self,
        grads: &GradStore,
        lr: f64,
        grad_scale: f64,
    ) -> Result<(), TrainError> {
        let AdamWConfig {
            beta1, beta2, eps, ..
        } = self.cfg;
        self.step += 1;
        let t = self.step as i32;
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // The group's rate first, then the bias correction: the same floats as a separate optimizer
            // stepped with `lr * group_lr_scale`.
            let group_lr = lr * slot.group_lr_scale;
            let step_size = group_lr / (1.0 - beta1.powi(t));
            let h = StepHyper {
                lr: group_lr * slot.lr_scale,
                beta1,
                beta2,
                eps,
                decay: if slot.decay { slot.weight_decay } else { 0.0 },
                step_size: step_size * slot.lr_scale,
                bc2_sqrt,
                grad_scale,
            };
            if slot.var.device().is_cpu() {
                fused_cpu_step(slot, g, &h)?;
            } else {
                composed_step(slot, g, &h)?;
            }
        }
        Ok(())
    }

    /// The moments as named f32 tensors (`exp_avg.<name>`, `exp_avg_sq.<name>`): copies, since the next
    /// step updates the optimizer's own in place.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        self.state_views()
            .into_iter()
            .map(|(name, t)| Ok((name, t.copy()?)))
            .collect()
    }

    /// The moments themselves (valid until the next step).
    fn state_views(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("exp_avg.{}", s.name), s.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{}", s.name), s.exp_avg_sq.clone());
        }
        out
    }

    /// Restores moments and step count; every parameter must be present with its shape.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<(), TrainError> {
        for s in &mut self.slots {
            for (key, dst) in [
                (format!("exp_avg.{}", s.name), &mut s.exp_avg),
                (format!("exp_avg_sq.{}", s.name), &mut s.exp_avg_sq),
            ] {
                let t = tensors.get(&key).ok_or_else(|| {
                    TrainError::Invalid(format!("optimizer state has no tensor {key}"))
                })?;
                if t.shape() != s.var.shape() {
                    return Err(TrainError::Invalid(format!(
                        "optimizer state {key} has shape {:?}, parameter has {:?}",
                        t.dims(),
                        s.var.dims()
                    )));
                }
                // A copy of its own: the update writes the moments in place.
                *dst = t.to_dtype(DType::F32)?.to_device(s.var.device())?.copy()?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Saves moments and step count to a safetensors file (atomically).
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let meta = HashMap::from([("step".to_string(), self.step.to_string())]);
        let bytes = super::peft::safetensors_bytes(&self.state_views(), Some(meta), path)?;
        super::atomic::atomic_write(path, &bytes)
    }

    /// Loads what [`AdamW::save`] wrote.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<(), TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |reason: String| TrainError::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let step = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("step"))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("no `step` in the metadata".into()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| bad(e.to_string()))?;
        self.load_state(&tensors, step)
    }
}

/// The factor `torch.nn.utils.clip_grad_norm_` scales gradients by: `max_norm / (norm + 1e-6)`, capped at 1.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Scales `grads` of `vars` so their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_` does ([`clip_coefficient`]). Returns the norm before clipping; a NaN/inf
/// norm is an error (a diverged step, not a silent one). The training loop does not write the scaled gradients
/// but hands the coefficient to [`AdamW::step_scaled`].
pub fn clip_grad_norm(
    grads: &mut GradStore,
    vars: &[&Var],
    max_norm: f64,
) -> Result<f64, TrainError> {
    let norm = grad_norm(grads, vars)?;
    if !norm.is_finite() {
        return Err(TrainError::NonFinite {
            what: "gradient norm".into(),
            value: norm,
        });
    }
    let coef = clip_coefficient(norm, max_norm);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = g.affine(coef, 0.0)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// The global L2 norm of the gradients of `vars` (missing gradients count as 0). Squares are summed in f64 on
/// the CPU, chunk by chunk in a fixed order (the same bits on every run), in f32 by candle elsewhere.
pub fn grad_norm(grads: &GradStore, vars: &[&Var]) -> Result<f64, TrainError> {
    let mut sum_sq = 0f64;
    for v in vars {
        let Some(g) = grads.get(v.as_tensor()) else {
            continue;
        };
        let g = g.to_dtype(DType::F32)?;
        if g.device().is_cpu() {
            let g = g.contiguous()?;
            let (storage, layout) = g.storage_and_layout();
            if let (Storage::Cpu(cpu), Some((start, end))) =
                (&*storage, layout.contiguous_offsets())
            {
                let chunks: Vec<f64> = cpu.as_slice::<f32>()?[start..end]
                    .par_chunks(PAR_CHUNK)
                    .map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
                    .collect();
                sum_sq += chunks.iter().sum::<f64>();
                continue;
            }
        }
        sum_sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(sum_sq.sqrt())
}

#[cfg(test)]
mod tests;
