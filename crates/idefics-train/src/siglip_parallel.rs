//! The SigLIP step with the tower's work on several threads.
//!
//! The images of a batch go through the tower in size groups (native resolution), and the groups are
//! independent until the loss: each worker thread runs the forward of its share of the groups and keeps the
//! graph; the loss and its gradient with respect to the pooled tower outputs are computed once, on the
//! calling thread, from a detached copy of them; then each worker back-propagates its rows of that gradient
//! through its own graph (the chain rule split at the pooled outputs, as GradCache does, without its second
//! forward). Per-op threads only contend with the workers, so `idefics pretrain-vision --parallel N` makes
//! ops single-threaded.
//!
//! The gradients equal the single-threaded ones up to float summation order (tested), and a run is
//! reproducible: groups go to workers by a fixed rule and the worker gradients are summed in worker order.

use super::SiglipModel;
use crate::accumulate::GradAccumulator;
use crate::threads::run_scoped;
use crate::TrainError;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Size groups (`groups[g]` = image indices, `cost[g]` = their pixel count) dealt to `workers` workers:
/// largest group first, each to the least-loaded worker (the lowest index on ties). Workers left without a
/// group are dropped.
pub(super) fn deal_groups(cost: &[usize], workers: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..cost.len()).collect();
    order.sort_by_key(|&g| (std::cmp::Reverse(cost[g]), g));
    let mut shares = vec![Vec::new(); workers.max(1)];
    let mut load = vec![0usize; workers.max(1)];
    for g in order {
        let w = (0..load.len()).min_by_key(|&w| (load[w], w)).unwrap_or(0);
        load[w] += cost[g];
        shares[w].push(g);
    }
    for share in &mut shares {
        share.sort_unstable();
    }
    shares.retain(|s| !s.is_empty());
    shares
}

impl SiglipModel {
    /// The loss of a batch (its value) and the gradients of `vars` (every trained variable), with the tower
    /// on `workers` threads (module docs). `None` instead of gradients when the loss is not finite (no
    /// backward through it).
    pub fn loss_and_grads_parallel(
        &self,
        images: &[Tensor],
        ids: &[Vec<u32>],
        workers: usize,
        vars: Vec<Var>,
    ) -> Result<(f64, Option<GradStore>), TrainError> {
        let groups = Self::size_groups(images)?;
        let cost = groups
            .iter()
            .map(|idx| {
                let (_, h, w) = images[idx[0]].dims3()?;
                Ok(idx.len() * h * w)
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let shares = deal_groups(&cost, workers);
        let worker_ids: Vec<usize> = (0..shares.len()).collect();

        // Forward, graphs kept: pooled[w][k] belongs to the group shares[w][k].
        let pooled: Vec<Vec<Tensor>> = run_scoped("siglip-forward", &worker_ids, |w| {
            shares[w]
                .iter()
                .map(|&g| self.pool_group(images, &groups[g]))
                .collect()
        })
        .into_iter()
        .collect::<Result<_, _>>()?;

        // Loss and its gradient with respect to the pooled outputs, from a detached copy.
        let order: Vec<&[usize]> = shares
            .iter()
            .flat_map(|share| share.iter().map(|&g| groups[g].as_slice()))
            .collect();
        let detached: Vec<Tensor> = pooled.iter().flatten().map(Tensor::detach).collect();
        let pooled_var = Var::from_tensor(&self.in_input_order(&order, &detached)?)?;
        let loss = self.loss_from_pooled(pooled_var.as_tensor(), ids)?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Ok((value, None));
        }
        let head_grads = loss.backward()?;
        let d_pooled = head_grads.get(pooled_var.as_tensor()).ok_or_else(|| {
            TrainError::Invalid("SigLIP: no gradient reached the pooled image outputs".into())
        })?;

        // Backward of each worker's graphs: sum over its groups of <pooled, d_pooled rows>.
        let tower_grads = run_scoped("siglip-backward", &worker_ids, |w| {
            let mut surrogate: Option<Tensor> = None;
            for (k, &g) in shares[w].iter().enumerate() {
                let idx: Vec<u32> = groups[g].iter().map(|&i| i as u32).collect();
                let idx = Tensor::new(idx, d_pooled.device())?;
                let term = (&pooled[w][k] * d_pooled.index_select(&idx, 0)?)?.sum_all()?;
                surrogate = Some(match surrogate {
                    Some(s) => (s + term)?,
                    None => term,
                });
            }
            match surrogate {
                Some(s) => Ok(s.backward()?),
                None => Ok(GradStore::default()),
            }
        });

        let mut acc = GradAccumulator::new(vars);
        acc.add(&head_grads, 1.0)?;
        for grads in tower_grads {
            acc.add(&grads?, 1.0)?;
        }
        Ok((value, Some(acc.take())))
    }
}
