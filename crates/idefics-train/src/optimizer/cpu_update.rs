//! AdamW's update on the CPU: one pass over host memory, in place.

use super::{Slot, StepHyper, TrainError};
use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor};
use rayon::prelude::*;
use std::cell::Cell;

/// The same update in one pass over host memory, in place: the composed form allocates about a dozen
/// temporaries per parameter (a fused kernel candle lacks), and copying the parameter and its moments out and
/// back costs more than the arithmetic. Elements are split over rayon's threads; each one's arithmetic is that
/// of the sequential loop, so the result does not depend on the split. Other dtypes than f32 go through a copy.
pub(super) fn fused_cpu_step(slot: &mut Slot, g: &Tensor, h: &StepHyper) -> Result<(), TrainError> {
    let g = g.to_dtype(DType::F32)?.contiguous()?;
    let (g_storage, g_layout) = g.storage_and_layout();
    let g_values: &[f32] = match (&*g_storage, g_layout.contiguous_offsets()) {
        (Storage::Cpu(cpu), Some((start, end))) => &cpu.as_slice::<f32>()?[start..end],
        _ => {
            return Err(TrainError::Invalid(format!(
                "gradient of {} is not a contiguous CPU tensor",
                slot.name
            )))
        }
    };
    if let Some(bad) = g_values
        .par_chunks(PAR_CHUNK)
        .find_map_any(|c| c.iter().copied().find(|x| !x.is_finite()))
    {
        return Err(TrainError::NonFinite {
            what: format!("gradient of {}", slot.name),
            value: bad as f64,
        });
    }
    let update = |p: &mut [f32], m: &mut [f32], v: &mut [f32]| {
        if p.len() != g_values.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "AdamW: {} has {} values, its gradient {} and moments {} / {}",
                slot.name,
                p.len(),
                g_values.len(),
                m.len(),
                v.len()
            );
        }
        let scalars = UpdateScalars::new(h);
        p.par_chunks_mut(PAR_CHUNK)
            .zip(m.par_chunks_mut(PAR_CHUNK))
            .zip(v.par_chunks_mut(PAR_CHUNK))
            .zip(g_values.par_chunks(PAR_CHUNK))
            .for_each(|(((p, m), v), g)| scalars.apply(p, g, m, v));
        Ok(())
    };
    let in_place = |p: &mut [f32]| {
        with_values_mut(&slot.exp_avg, |m| {
            with_values_mut(&slot.exp_avg_sq, |v| update(p, m, v))
        })
    };
    if slot.var.dtype() == DType::F32 {
        return Ok(with_values_mut(slot.var.as_tensor(), in_place)?);
    }
    // A parameter stored in another dtype: update an f32 copy, then write it back rounded.
    let p32 = slot.var.as_tensor().detach().to_dtype(DType::F32)?.copy()?;
    with_values_mut(&p32, in_place)?;
    slot.var.set(&p32.to_dtype(slot.var.dtype())?)?;
    Ok(())
}

/// Elements per parallel task of the optimizer's update.
pub(super) const PAR_CHUNK: usize = 1 << 16;

/// The per-element constants of one AdamW update, in f32.
struct UpdateScalars {
    decay: bool,
    keep: f32,
    b1: f32,
    b2: f32,
    one_b1: f32,
    one_b2: f32,
    inv_bc2: f32,
    eps: f32,
    step: f32,
    grad_scale: f32,
}

impl UpdateScalars {
    fn new(h: &StepHyper) -> Self {
        Self {
            decay: h.decay != 0.0,
            keep: (1.0 - h.lr * h.decay) as f32,
            b1: h.beta1 as f32,
            b2: h.beta2 as f32,
            one_b1: (1.0 - h.beta1) as f32,
            one_b2: (1.0 - h.beta2) as f32,
            inv_bc2: (1.0 / h.bc2_sqrt) as f32,
            eps: h.eps as f32,
            step: h.step_size as f32,
            grad_scale: h.grad_scale as f32,
        }
    }

    fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            // As a clipped gradient (`affine(coef, 0)`): exact when the scale is 1.
            let g = g * self.grad_scale;
            if self.decay {
                *p *= self.keep;
            }
            *m = self.b1 * *m + self.one_b1 * g;
            *v = self.b2 * *v + self.one_b2 * (g * g);
            let denom = v.sqrt() * self.inv_bc2 + self.eps;
            *p -= self.step * (*m / denom);
        }
    }
}

/// Runs `f` on the values of a contiguous f32 CPU tensor, writable in place: candle gives mutable access to a
/// tensor's storage only through an in-place custom op. `t` must not share its storage with a tensor `f`
/// locks too (the optimizer's tensors are each their own copy).
fn with_values_mut<R>(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    struct InPlace<F, R> {
        f: Cell<Option<F>>,
        out: Cell<Option<candle_core::Result<R>>>,
    }
    impl<F: FnOnce(&mut [f32]) -> candle_core::Result<R>, R> InplaceOp1 for InPlace<F, R> {
        fn name(&self) -> &'static str {
            "adamw-in-place"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let (CpuStorage::F32(values), Some((start, end))) =
                (storage, layout.contiguous_offsets())
            else {
                candle_core::bail!("AdamW: the optimizer's tensors must be contiguous f32");
            };
            let Some(f) = self.f.take() else {
                candle_core::bail!("AdamW: the in-place update ran twice");
            };
            self.out.set(Some(f(&mut values[start..end])));
            Ok(())
        }
    }
    let op = InPlace {
        f: Cell::new(Some(f)),
        out: Cell::new(None),
    };
    t.inplace_op1(&op)?;
    op.out
        .take()
        .unwrap_or_else(|| candle_core::bail!("AdamW: the in-place update did not run"))
}
