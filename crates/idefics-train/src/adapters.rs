//! LoRA and DoRA adapters over a frozen linear layer, computed as peft 0.21 computes them.
//!
//! LoRA (peft `tuners/lora/layer.py`, `Linear.forward`):
//!   `y = base(x) + s * B(A(dropout(x)))`, `s = alpha / r` (or `alpha / sqrt(r)` with rsLoRA),
//!   A `[r, in]` kaiming-uniform(a = sqrt(5)) i.e. U(-1/sqrt(in), 1/sqrt(in)), B `[out, r]` zeros.
//! DoRA (peft `tuners/lora/dora.py`, `DoraLinearLayer.forward`):
//!   `n = ||W + s B A||` per output row (norm over the input dim), DETACHED (DoRA paper §4.3),
//!   `k = m / n`, `y = base(x) + (k - 1) * (x_d W^T) + k * s * B(A(x_d))` with `x_d = dropout(x)`;
//!   the bias is not rescaled. The magnitude `m` starts as `n` so the layer's output at init is the
//!   LoRA output (the base output when B = 0). Without dropout the two base terms are the same matmul
//!   and the expression is `k * (x W^T + s B(A(x))) + b`, which is what we compute then (one GEMM less,
//!   peft PR #2122).
//!
//! The weight norm is computed without materialising `B A` (peft PR #3387):
//!   `||W_i + s (BA)_i||^2 = ||W_i||^2 + 2 s <B_i, (W A^T)_i> + s^2 B_i (A A^T) B_i^T`,
//! with `||W_i||^2` cached, all in f32.

use crate::frozen::{add_frozen_bias, FrozenLinear};
use crate::fused_lora;
use candle_core::{DType, Result, Tensor, Var, D};
use idefics::nn::{Linear, LinearHook};
use rand::Rng;
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Hyper-parameters of one adapted layer (peft `LoraConfig` fields that change the math).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSettings {
    /// Rank r.
    pub r: usize,
    /// lora_alpha.
    pub alpha: f64,
    /// rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
    /// DoRA: learn a per-output-row magnitude as well.
    pub use_dora: bool,
    /// Dropout probability on the adapter input (training only).
    pub dropout: f32,
}

impl LoraSettings {
    /// peft's `scaling`: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// `x @ w^T` for `x [.., k]`, `w [n, k]`, differentiable in both.
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let k = dims[dims.len() - 1];
    let m = x.elem_count() / k.max(1);
    let y = x.reshape((m, k))?.matmul(&w.t()?)?;
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

/// `t` in `dtype` (a tracked cast, so f32 master weights receive f32 gradients).
fn as_dtype(t: &Tensor, dtype: DType) -> Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t.clone())
    } else {
        t.to_dtype(dtype)
    }
}

/// A frozen linear layer plus a trainable low-rank update `s * B A`.
#[derive(Clone, Debug)]
pub struct LoraLinear {
    base: FrozenLinear,
    a: Var,
    b: Var,
    scaling: f64,
    dropout: f32,
}

impl LoraLinear {
    /// A fresh adapter as peft initialises it: A kaiming-uniform(a = sqrt(5)), B zeros, in f32.
    pub fn init<R: Rng + ?Sized>(
        base: FrozenLinear,
        settings: &LoraSettings,
        rng: &mut R,
    ) -> Result<Self> {
        let (r, in_dim, out_dim) = (settings.r, base.in_dim(), base.out_dim());
        if r == 0 {
            candle_core::bail!("LoRA rank r must be positive");
        }
        // kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a: Vec<f32> = (0..r * in_dim)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let dev = base.device();
        let a = Tensor::from_vec(a, (r, in_dim), &dev)?;
        let b = Tensor::zeros((out_dim, r), DType::F32, &dev)?;
        Self::from_weights(base, a, b, settings)
    }

    /// An adapter from given `A [r, in]` and `B [out, r]` (e.g. read from a peft file).
    pub fn from_weights(
        base: FrozenLinear,
        a: Tensor,
        b: Tensor,
        settings: &LoraSettings,
    ) -> Result<Self> {
        let (r, in_dim, out_dim) = (settings.r, base.in_dim(), base.out_dim());
        if a.dims() != [r, in_dim] {
            candle_core::bail!(
                "lora_A has shape {:?}, expected [{r}, {in_dim}] (r, in_features)",
                a.dims()
            );
        }
        if b.dims() != [out_dim, r] {
            candle_core::bail!(
                "lora_B has shape {:?}, expected [{out_dim}, {r}] (out_features, r)",
                b.dims()
            );
        }
        if !(0.0..1.0).contains(&settings.dropout) {
            candle_core::bail!("lora_dropout {} is not in [0, 1)", settings.dropout);
        }
        Ok(Self {
            base,
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scaling: settings.scaling(),
            dropout: settings.dropout,
        })
    }

    /// The frozen base layer.
    pub fn base(&self) -> &FrozenLinear {
        &self.base
    }

    /// lora_A `[r, in]` (f32).
    pub fn lora_a(&self) -> &Var {
        &self.a
    }

    /// lora_B `[out, r]` (f32).
    pub fn lora_b(&self) -> &Var {
        &self.b
    }

    /// The factor `s` applied to `B A`.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// `s * B(A(x))` in the dtype of `x`.
    fn lora_path(&self, x: &Tensor) -> Result<Tensor> {
        let a = as_dtype(self.a.as_tensor(), x.dtype())?;
        let b = as_dtype(self.b.as_tensor(), x.dtype())?;
        matmul_t(&matmul_t(x, &a)?, &b)? * self.scaling
    }

    fn dropped(&self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        if train && self.dropout > 0.0 {
            Ok(Some(candle_nn::ops::dropout(x, self.dropout)?))
        } else {
            Ok(None)
        }
    }

    /// `base(x) + s * B(A(dropout(x)))`; dropout only when `train`. One fused autograd node for f32 on the CPU
    /// (`crate::fused_lora`), else the composed ops.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if self.fused_applies(x) {
            let dropout = (train && self.dropout > 0.0).then_some(self.dropout);
            return self.fused(x, true, dropout);
        }
        self.forward_composed(x, train)
    }

    fn fused_applies(&self, x: &Tensor) -> bool {
        fused_lora::applies(&self.base, x, self.a.as_tensor(), self.b.as_tensor())
    }

    /// `x W^T (+ b) + s B(A(dropout(x)))` as one autograd node; the caller checked [`Self::fused_applies`].
    fn fused(&self, x: &Tensor, with_bias: bool, dropout: Option<f32>) -> Result<Tensor> {
        fused_lora::forward(
            &self.base,
            x,
            self.a.as_tensor(),
            self.b.as_tensor(),
            self.scaling,
            with_bias,
            dropout,
        )
    }

    /// [`Self::forward_t`] through candle's ops whatever the kernel choice (the fused op's reference).
    pub(crate) fn forward_composed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let xd = self.dropped(x, train)?;
        y + self.lora_path(xd.as_ref().unwrap_or(x))?
    }

    /// `s * B @ A` as an `[out, in]` f32 tensor.
    pub fn delta_weight_f32(&self) -> Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())?.detach() * self.scaling
    }

    /// `W + s B A` in f32 (merge in f32, cast once: huggingface/peft#1388).
    pub fn merged_weight_f32(&self) -> Result<Tensor> {
        self.base.weight_f32()? + self.delta_weight_f32()?
    }
}

/// A LoRA layer with a learned per-output-row magnitude (DoRA, Liu et al. 2024).
#[derive(Clone, Debug)]
pub struct DoraLinear {
    lora: LoraLinear,
    magnitude: Var,
    /// `||W_i||^2` per output row, f32: fixed because W is frozen.
    base_row_norm_sq: Tensor,
}

impl DoraLinear {
    /// A fresh DoRA layer: LoRA init, magnitude = `||W + s B A||` per row (= `||W||` since B = 0).
    pub fn init<R: Rng + ?Sized>(
        base: FrozenLinear,
        settings: &LoraSettings,
        rng: &mut R,
    ) -> Result<Self> {
        Self::from_lora(LoraLinear::init(base, settings, rng)?, None)
    }

    /// DoRA from given A, B and magnitude `[out]`; with `magnitude = None` it is initialised from the
    /// effective weight `W + s B A`, so the output equals the LoRA output at this point.
    pub fn from_weights(
        base: FrozenLinear,
        a: Tensor,
        b: Tensor,
        magnitude: Option<Tensor>,
        settings: &LoraSettings,
    ) -> Result<Self> {
        Self::from_lora(LoraLinear::from_weights(base, a, b, settings)?, magnitude)
    }

    fn from_lora(lora: LoraLinear, magnitude: Option<Tensor>) -> Result<Self> {
        let base_row_norm_sq = lora.base.weight_f32()?.sqr()?.sum(D::Minus1)?;
        let mut layer = Self {
            magnitude: Var::zeros(lora.base.out_dim(), DType::F32, &lora.base.device())?,
            lora,
            base_row_norm_sq,
        };
        let magnitude = match magnitude {
            Some(m) => {
                if m.dims() != [layer.lora.base.out_dim()] {
                    candle_core::bail!(
                        "lora_magnitude_vector has shape {:?}, expected [{}] (out_features)",
                        m.dims(),
                        layer.lora.base.out_dim()
                    );
                }
                m.to_dtype(DType::F32)?
            }
            None => layer.weight_norm()?,
        };
        layer.magnitude = Var::from_tensor(&magnitude)?;
        Ok(layer)
    }

    /// The LoRA part (A, B, base).
    pub fn lora(&self) -> &LoraLinear {
        &self.lora
    }

    /// The magnitude vector `[out]` (f32).
    pub fn magnitude(&self) -> &Var {
        &self.magnitude
    }

    /// `||W + s B A||` per output row, f32 and detached (DoRA §4.3 treats it as a constant).
    pub fn weight_norm(&self) -> Result<Tensor> {
        let base = &self.lora.base;
        let a = self.lora.a.as_tensor().detach();
        let b = self.lora.b.as_tensor().detach();
        let s = self.lora.scaling;
        // <B_i, (W A^T)_i> without forming B A: W A^T is [out, r].
        let wa = match base.quantized_weight() {
            // peft dequantizes a quantized (bitsandbytes) base for the norm (`dequantize_module_weight` in
            // tuners/lora/dora.py); the f32 copy lives for this one product.
            Some(_) => base.weight_f32()?.matmul(&a.t()?)?,
            None => {
                let w = base.weight()?;
                w.matmul(&as_dtype(&a, w.dtype())?.t()?)?
                    .to_dtype(DType::F32)?
            }
        };
        let cross = (&b * &wa)?.sum(D::Minus1)?;
        let gram = a.matmul(&a.t()?)?; // [r, r]
        let ba_sq = (b.matmul(&gram)? * &b)?.sum(D::Minus1)?;
        let norm_sq = ((&self.base_row_norm_sq + (cross * (2.0 * s))?)? + (ba_sq * (s * s))?)?;
        // Rounding can push a (near-)zero row slightly negative.
        norm_sq.relu()?.sqrt()
    }

    /// The DoRA output; dropout on the adapter input only when `train`. Without dropout, `x W^T + s B A x` is one
    /// fused autograd node for f32 on the CPU (`crate::fused_lora`); with dropout, the composed ops.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, true)
    }

    /// [`Self::forward_t`] through candle's ops whatever the kernel choice (the fused op's reference).
    #[cfg(test)]
    pub(crate) fn forward_composed(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_impl(x, train, false)
    }

    fn forward_impl(&self, x: &Tensor, train: bool, allow_fused: bool) -> Result<Tensor> {
        let scale = (self.magnitude.as_tensor() / self.weight_norm()?)?; // [out]
        let scale = as_dtype(&scale, x.dtype())?;
        let base = &self.lora.base;
        match self.lora.dropped(x, train)? {
            None if allow_fused && self.lora.fused_applies(x) => {
                // One node for x W^T + s B A x, one for the column scale and the bias (crate::fused_lora).
                let z = self.lora.fused(x, false, None)?;
                fused_lora::scale_columns_add_bias(&z, &scale, base.bias())
            }
            None => {
                let y = (base.forward_no_bias(x)? + self.lora.lora_path(x)?)?;
                let y = scale_columns(&y, &scale)?;
                match base.bias() {
                    Some(bias) => add_frozen_bias(&y, bias),
                    None => Ok(y),
                }
            }
            Some(xd) => self.forward_dropped(x, &xd, &scale),
        }
    }

    /// peft's form with a dropped-out adapter input `xd`, needed for dropout to be correct
    /// (huggingface/peft#1474): `base(x) + (k - 1) * (xd W^T) + k * s * B(A(xd))`.
    fn forward_dropped(&self, x: &Tensor, xd: &Tensor, scale: &Tensor) -> Result<Tensor> {
        let base = &self.lora.base;
        let y = base.forward(x)?;
        let adj = scale_columns(&base.forward_no_bias(xd)?, &(scale - 1.0)?)?;
        let lora = scale_columns(&self.lora.lora_path(xd)?, scale)?;
        (y + adj)? + lora
    }

    /// `(m / ||W + s B A||) * (W + s B A)` in f32, as peft's merge computes it; the bias is unchanged.
    pub fn merged_weight_f32(&self) -> Result<Tensor> {
        let factor = (self.magnitude.as_tensor().detach() / self.weight_norm()?)?;
        self.lora
            .merged_weight_f32()?
            .broadcast_mul(&factor.unsqueeze(1)?)
    }
}

/// `y * scale` over the last dimension: one fused pass (and one backward) when training on the CPU.
fn scale_columns(y: &Tensor, scale: &Tensor) -> Result<Tensor> {
    if idefics::nn::train_kernels::applies(&[y, scale]) {
        idefics::nn::train_kernels::scale_columns(y, scale)
    } else {
        y.broadcast_mul(scale)
    }
}

/// A linear layer as the model holds it: frozen, LoRA, or DoRA.
#[derive(Clone, Debug)]
pub enum AdaptedLinear {
    Frozen(FrozenLinear),
    Lora(LoraLinear),
    Dora(DoraLinear),
}

impl AdaptedLinear {
    /// Wraps `base` in a fresh adapter per `settings` (DoRA when `settings.use_dora`).
    pub fn init<R: Rng + ?Sized>(
        base: FrozenLinear,
        settings: &LoraSettings,
        rng: &mut R,
    ) -> Result<Self> {
        Ok(if settings.use_dora {
            Self::Dora(DoraLinear::init(base, settings, rng)?)
        } else {
            Self::Lora(LoraLinear::init(base, settings, rng)?)
        })
    }

    /// The frozen base layer.
    pub fn base(&self) -> &FrozenLinear {
        match self {
            Self::Frozen(l) => l,
            Self::Lora(l) => l.base(),
            Self::Dora(l) => l.lora().base(),
        }
    }

    /// Forward; `train` enables adapter dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Frozen(l) => l.forward(x),
            Self::Lora(l) => l.forward_t(x, train),
            Self::Dora(l) => l.forward_t(x, train),
        }
    }

    /// The trainable tensors under peft's key suffixes: `lora_A.weight`, `lora_B.weight`,
    /// `lora_magnitude_vector` (the key peft 0.21 writes for DoRA, without `.weight`).
    pub fn trainable_vars(&self) -> Vec<(&'static str, &Var)> {
        match self {
            Self::Frozen(_) => vec![],
            Self::Lora(l) => vec![("lora_A.weight", l.lora_a()), ("lora_B.weight", l.lora_b())],
            Self::Dora(l) => vec![
                ("lora_A.weight", l.lora().lora_a()),
                ("lora_B.weight", l.lora().lora_b()),
                ("lora_magnitude_vector", l.magnitude()),
            ],
        }
    }

    /// The dense weight with the adapter merged, in f32 (the bias is unchanged by LoRA and DoRA).
    pub fn merged_weight_f32(&self) -> Result<Tensor> {
        match self {
            Self::Frozen(l) => l.weight_f32(),
            Self::Lora(l) => l.merged_weight_f32(),
            Self::Dora(l) => l.merged_weight_f32(),
        }
    }
}

/// Shared "training" switch of a model's adapters (adapter dropout is active only while it is on).
#[derive(Debug, Clone, Default)]
pub struct TrainMode(Arc<AtomicBool>);

impl TrainMode {
    pub fn set(&self, training: bool) {
        self.0.store(training, Ordering::Relaxed)
    }
    pub fn is_training(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A frozen or adapted layer plugged into a model's [`Linear`] (see [`idefics::nn::LinearHook`]).
#[derive(Debug, Clone)]
pub struct AdapterHook {
    pub layer: AdaptedLinear,
    pub mode: TrainMode,
}

impl AdapterHook {
    /// The adapted layer behind `linear`, if the trainer plugged one in.
    pub fn of(linear: &Linear) -> Option<&AdaptedLinear> {
        linear
            .hook()?
            .as_any()
            .downcast_ref::<AdapterHook>()
            .map(|h| &h.layer)
    }
}

impl LinearHook for AdapterHook {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.layer.forward_t(xs, self.mode.is_training())
    }
    fn weight(&self) -> Result<&Tensor> {
        self.layer.base().weight()
    }
    fn out_dim(&self) -> usize {
        self.layer.base().out_dim()
    }
    fn bias(&self) -> Option<&Tensor> {
        self.layer.base().bias()
    }
    fn merged_weight_f32(&self) -> Result<Tensor> {
        self.layer.merged_weight_f32()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    fn settings(use_dora: bool) -> LoraSettings {
        LoraSettings {
            r: 3,
            alpha: 6.0,
            use_rslora: false,
            use_dora,
            dropout: 0.0,
        }
    }

    #[test]
    fn fresh_adapters_leave_output_unchanged() -> Result<()> {
        let dev = Device::Cpu;
        let base = FrozenLinear::new(
            Tensor::randn(0f32, 1.0, (7, 5), &dev)?,
            Some(Tensor::randn(0f32, 1.0, 7, &dev)?),
        )?;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 5), &dev)?;
        let y0 = base.forward(&x)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        for dora in [false, true] {
            let layer = AdaptedLinear::init(base.clone(), &settings(dora), &mut rng)?;
            let y = layer.forward_t(&x, true)?;
            assert!(max_abs_diff(&y, &y0) < 1e-5, "dora={dora}");
            // A is kaiming-uniform within +-1/sqrt(in).
            let a = layer.trainable_vars()[0].1.as_tensor().abs()?.max_all()?;
            let a = a.to_scalar::<f32>()?;
            assert!(a > 0.0 && a <= 1.0 / 5f32.sqrt());
        }
        Ok(())
    }

    #[test]
    fn dora_dropout_form_equals_plain_form_without_drop() -> Result<()> {
        let dev = Device::Cpu;
        let base = FrozenLinear::new(
            Tensor::randn(0f32, 1.0, (6, 5), &dev)?,
            Some(Tensor::randn(0f32, 1.0, 6, &dev)?),
        )?;
        let layer = DoraLinear::from_weights(
            base,
            Tensor::randn(0f32, 1.0, (3, 5), &dev)?,
            Tensor::randn(0f32, 1.0, (6, 3), &dev)?,
            Some(Tensor::rand(0.5f32, 1.5, 6, &dev)?),
            &settings(true),
        )?;
        let x = Tensor::randn(0f32, 1.0, (2, 4, 5), &dev)?;
        let scale = (layer.magnitude().as_tensor() / layer.weight_norm()?)?;
        let d = max_abs_diff(
            &layer.forward_dropped(&x, &x, &scale)?,
            &layer.forward_t(&x, false)?,
        );
        assert!(d < 1e-4, "{d}");
        // With dropout active the output is random but finite; in eval mode it is the plain form.
        let mut s = settings(true);
        s.dropout = 0.5;
        let lora = LoraLinear::from_weights(
            layer.lora().base().clone(),
            layer.lora().lora_a().as_tensor().clone(),
            layer.lora().lora_b().as_tensor().clone(),
            &s,
        )?;
        let dropped = DoraLinear::from_lora(lora, Some(layer.magnitude().as_tensor().clone()))?;
        let eval = dropped.forward_t(&x, false)?;
        assert!(max_abs_diff(&eval, &layer.forward_t(&x, false)?) < 1e-5);
        let train = dropped.forward_t(&x, true)?;
        assert!(max_abs_diff(&train, &eval) > 1e-3);
        Ok(())
    }

    #[test]
    fn bf16_base_with_f32_adapter_gets_f32_grads() -> Result<()> {
        let dev = Device::Cpu;
        let base = FrozenLinear::new(
            Tensor::randn(0f32, 1.0, (6, 5), &dev)?.to_dtype(DType::BF16)?,
            None,
        )?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let layer = AdaptedLinear::init(base, &settings(true), &mut rng)?;
        let x = Tensor::randn(0f32, 1.0, (3, 5), &dev)?.to_dtype(DType::BF16)?;
        let y = layer.forward_t(&x, true)?;
        assert_eq!(y.dtype(), DType::BF16);
        let grads = y.to_dtype(DType::F32)?.sqr()?.sum_all()?.backward()?;
        for (name, var) in layer.trainable_vars() {
            let g = grads.get(var.as_tensor()).expect(name);
            assert_eq!(g.dtype(), DType::F32, "{name}");
        }
        Ok(())
    }

    #[test]
    fn dora_norm_matches_dense_norm() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (6, 5), &dev)?;
        let a = Tensor::randn(0f32, 1.0, (3, 5), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (6, 3), &dev)?;
        let layer = DoraLinear::from_weights(
            FrozenLinear::new(w.clone(), None)?,
            a.clone(),
            b.clone(),
            None,
            &settings(true),
        )?;
        let dense = (w + (b.matmul(&a)? * 2.0)?)?.sqr()?.sum(1)?.sqrt()?;
        assert!(max_abs_diff(&layer.weight_norm()?, &dense) < 1e-4);
        // Magnitude from the effective weight: DoRA output == LoRA output.
        let x = Tensor::randn(0f32, 1.0, (4, 5), &dev)?;
        let lora = LoraLinear::from_weights(
            FrozenLinear::new(layer.lora().base().weight()?.clone(), None)?,
            a,
            b,
            &settings(false),
        )?;
        let d = max_abs_diff(&layer.forward_t(&x, false)?, &lora.forward_t(&x, false)?);
        assert!(d < 1e-4, "{d}");
        Ok(())
    }
}
