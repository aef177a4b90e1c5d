//! Learning-rate schedules: linear warmup, then constant, linear or cosine decay to a floor.
//!
//! Factors match transformers' `get_*_schedule_with_warmup` lambdas (optimization.py), evaluated at
//! the number of optimizer steps already taken (0 for the first update, so the first warmup step
//! uses lr = 0 exactly as the HF Trainer does). `min_ratio` lifts the decay floor from 0:
//! cosine uses transformers' `min_lr_rate` formula, linear decays to `min_ratio` instead of 0.

use super::TrainError;
use serde::{Deserialize, Serialize};

/// Shape of the decay after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Constant,
    Linear,
    Cosine,
}

/// A warmup + decay schedule of the learning-rate factor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    /// Floor of the decay as a fraction of `peak_lr` (0 = decay to zero).
    pub min_ratio: f64,
}

impl LrSchedule {
    /// Checks the fields, naming the bad one.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.peak_lr.is_finite() && self.peak_lr >= 0.0) {
            return Err(TrainError::Invalid(format!(
                "lr {} must be finite and >= 0",
                self.peak_lr
            )));
        }
        if !(0.0..=1.0).contains(&self.min_ratio) {
            return Err(TrainError::Invalid(format!(
                "min_lr_ratio {} must be in [0, 1]",
                self.min_ratio
            )));
        }
        if self.decay != Decay::Constant && self.total_steps == 0 {
            return Err(TrainError::Invalid(
                "total_steps must be > 0 for a decaying schedule".into(),
            ));
        }
        Ok(())
    }

    /// The multiplier of `peak_lr` for the update after `step` completed updates.
    pub fn factor(&self, step: u64) -> f64 {
        let (s, w, t) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        // Clamped at the end (transformers lets cosine climb again past total_steps).
        let progress = ((s - w) / (t - w).max(1.0)).min(1.0);
        let min = self.min_ratio;
        match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => {
                let f = ((t - s) / (t - w).max(1.0)).max(0.0);
                min + (1.0 - min) * f
            }
            Decay::Cosine => {
                let f = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (f * (1.0 - min) + min).max(0.0)
            }
        }
    }

    /// The learning rate for the update after `step` completed updates.
    pub fn lr(&self, step: u64) -> f64 {
        self.peak_lr * self.factor(step)
    }
}
