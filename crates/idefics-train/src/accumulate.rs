//! Gradient accumulation: sum weighted micro-batch gradients into one update.
//!
//! With micro-batch losses that are means over equal-sized micro-batches, weights `1/k` give the
//! gradient of the mean over the whole batch. With token-level means of unequal size, weight each
//! micro-batch's *summed* loss by `1 / total_tokens` instead (transformers' `num_items_in_batch`).
//! Only the gradients of the tracked variables are kept; everything else in a `GradStore`
//! (intermediate nodes) is dropped with it.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId, Var};
use std::collections::HashMap;

/// Running weighted sum of the gradients of a fixed set of variables.
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: HashMap<TensorId, Tensor>,
    micro_batches: usize,
}

impl GradAccumulator {
    /// Accumulates gradients for `vars`.
    pub fn new(vars: Vec<Var>) -> Self {
        Self {
            vars,
            sums: HashMap::new(),
            micro_batches: 0,
        }
    }

    /// Adds `weight * grad` of every tracked variable found in `grads`.
    pub fn add(&mut self, grads: &GradStore, weight: f64) -> Result<()> {
        for v in &self.vars {
            let Some(g) = grads.get(v.as_tensor()) else {
                continue;
            };
            // A weight of 1 (one micro-batch, or losses already normalised) needs no scaled copy.
            let g = if weight == 1.0 {
                g.clone()
            } else {
                g.affine(weight, 0.0)?
            };
            let sum = match self.sums.remove(&v.id()) {
                Some(s) => (s + g)?,
                None => g,
            };
            self.sums.insert(v.id(), sum);
        }
        self.micro_batches += 1;
        Ok(())
    }

    /// Micro-batches added since the last [`GradAccumulator::take`].
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The accumulated gradients as a `GradStore` (for the optimizer); resets the accumulator.
    pub fn take(&mut self) -> GradStore {
        let mut store = GradStore::default();
        for (id, g) in self.sums.drain() {
            store.insert_id(id, g);
        }
        self.micro_batches = 0;
        store
    }
}
