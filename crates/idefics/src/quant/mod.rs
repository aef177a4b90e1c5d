//! Quantized inference: the text decoder's weights in GGUF block formats, quantized while the checkpoint loads.
//!
//! What is quantized (as llama.cpp's and mistral.rs's in-situ quantization do): every linear layer of the text
//! decoder, the token embeddings and the output head. The vision tower and the connector stay in f32 unless
//! [`QuantConfig::vision`] is set: they are a small part of the weights, compute-bound, and the most sensitive
//! to rounding. A layer whose input width is not a multiple of the type's block falls back as llama.cpp's do
//! (q4k to q5_0, q6k to q8_0: block 32), or stays dense when even that does not fit; [`QuantReport`] counts them.
//!
//! Quantization is streamed: the text decoder quantizes each layer right after loading it, so peak memory is
//! the quantized model plus one layer in f32 (see `docs/quantization.md`).

pub mod kernels;
mod qweight;
pub mod store;
pub mod streaming;

pub use qweight::{DecodePath, QWeight, GEMM_MIN_ROWS, KERNEL_MIN_BYTES};

use crate::nn::{Linear, ParamVisitor};
use candle_core::quantized::GgmlDType;
use candle_core::{Result, Tensor};
use std::fmt;
use std::str::FromStr;

/// A weight format, named as in GGUF / llama.cpp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum QuantType {
    /// 8-bit, one f16 scale per 32 weights: 8.5 bits per weight.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 5-bit, one f16 scale per 32 weights: 5.5 bits per weight. llama.cpp's stand-in for q4k where rows fit no
    /// super-block of 256 (SmolVLM's 576 / 960).
    #[serde(rename = "q5_0")]
    Q5_0,
    /// 4-bit k-quant, super-blocks of 256 with 6-bit scales and mins: 4.5 bits per weight.
    #[serde(rename = "q4k")]
    Q4K,
    /// 6-bit k-quant, super-blocks of 256 with 8-bit scales: 6.5625 bits per weight.
    #[serde(rename = "q6k")]
    Q6K,
    /// bfloat16: each weight rounded to its f32's upper 16 bits (8-bit exponent, 7-bit mantissa), 16 bits per
    /// weight; any row width. Products keep f32 activations and sums.
    #[serde(rename = "bf16")]
    Bf16,
}

impl QuantType {
    pub const ALL: [QuantType; 5] = [
        QuantType::Q8_0,
        QuantType::Q5_0,
        QuantType::Q4K,
        QuantType::Q6K,
        QuantType::Bf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q5_0 => "q5_0",
            QuantType::Q4K => "q4k",
            QuantType::Q6K => "q6k",
            QuantType::Bf16 => "bf16",
        }
    }

    pub fn ggml(self) -> GgmlDType {
        qweight::ggml_of(self)
    }

    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q8_0 => Some(QuantType::Q8_0),
            GgmlDType::Q5_0 => Some(QuantType::Q5_0),
            GgmlDType::Q4K => Some(QuantType::Q4K),
            GgmlDType::Q6K => Some(QuantType::Q6K),
            GgmlDType::BF16 => Some(QuantType::Bf16),
            _ => None,
        }
    }

    /// Weights per block: a row must be a whole number of blocks.
    pub fn block_size(self) -> usize {
        self.ggml().block_size()
    }

    /// Storage bits per weight (block bytes * 8 / block weights).
    pub fn bits_per_weight(self) -> f64 {
        self.ggml().type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// True when rows of `in_dim` weights can be stored in this type.
    pub fn fits(self, in_dim: usize) -> bool {
        in_dim > 0 && in_dim.is_multiple_of(self.block_size())
    }

    /// The type a layer with rows of `in_dim` gets when `self` is asked for: `self`, else its block-32 stand-in
    /// ([`Self::fallback`]), else none (kept dense).
    pub fn for_width(self, in_dim: usize) -> Option<Self> {
        [Some(self), self.fallback()]
            .into_iter()
            .flatten()
            .find(|t| t.fits(in_dim))
    }

    /// What llama.cpp stores where rows fit no super-block of 256 (`llama_tensor_get_type`): q5_0 for q4k,
    /// q8_0 for q6k. Block-32 types have none (a row that fits no 32-block fits no other block either).
    pub fn fallback(self) -> Option<Self> {
        match self {
            QuantType::Q4K => Some(QuantType::Q5_0),
            QuantType::Q6K => Some(QuantType::Q8_0),
            QuantType::Q8_0 | QuantType::Q5_0 | QuantType::Bf16 => None,
        }
    }

    /// The output head's type: llama.cpp's "_M" mixes keep the head at q6k for 4-bit models (it sets every
    /// token's logits); other types use themselves.
    pub fn head_type(self) -> Self {
        match self {
            QuantType::Q4K => QuantType::Q6K,
            t => t,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "q8_0" | "q8" => Ok(QuantType::Q8_0),
            "q5_0" | "q5" => Ok(QuantType::Q5_0),
            "q4k" | "q4_k" | "q4_k_m" => Ok(QuantType::Q4K),
            "q6k" | "q6_k" => Ok(QuantType::Q6K),
            "bf16" => Ok(QuantType::Bf16),
            other => Err(format!(
                "unknown quantization {other:?}: expected q8_0, q5_0, q4k, q6k or bf16"
            )),
        }
    }
}

/// What to quantize when a model loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantConfig {
    /// Type of the text decoder's linear layers and token embeddings.
    pub weights: QuantType,
    /// Quantize the vision tower and the connector too (off: they stay in the load dtype).
    pub vision: bool,
}

impl QuantConfig {
    pub fn new(weights: QuantType) -> Self {
        Self {
            weights,
            vision: false,
        }
    }
}

/// How a model's weights ended up: counts and bytes, for the load log and the benchmarks.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QuantReport {
    /// Tensors quantized, per type name.
    pub quantized: std::collections::BTreeMap<String, usize>,
    /// Tensors asked to quantize that kept their dtype because their rows fit no block (names).
    pub kept_dense: Vec<String>,
    /// Bytes of the quantized tensors before (as f32) and after.
    pub f32_bytes: usize,
    pub quantized_bytes: usize,
}

impl QuantReport {
    fn record(&mut self, ty: QuantType, weight: &QWeight) {
        *self.quantized.entry(ty.name().to_string()).or_default() += 1;
        self.f32_bytes += weight.out_dim() * weight.in_dim() * 4;
        self.quantized_bytes += weight.size_in_bytes();
    }

    /// Adds another part's report.
    pub fn merge(&mut self, other: QuantReport) {
        for (k, v) in other.quantized {
            *self.quantized.entry(k).or_default() += v;
        }
        self.kept_dense.extend(other.kept_dense);
        self.f32_bytes += other.f32_bytes;
        self.quantized_bytes += other.quantized_bytes;
    }

    pub fn summary(&self) -> String {
        let counts: Vec<String> = self
            .quantized
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!(
            "{} tensors quantized ({}), {:.1} MB -> {:.1} MB{}",
            self.quantized.values().sum::<usize>(),
            counts.join(", "),
            self.f32_bytes as f64 / 1e6,
            self.quantized_bytes as f64 / 1e6,
            if self.kept_dense.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} kept dense (rows fit no block), e.g. {}",
                    self.kept_dense.len(),
                    self.kept_dense[0]
                )
            }
        )
    }
}

/// Where a layer's quantized weight comes from.
pub trait QuantSource {
    /// The quantized weight for the tensor `name` whose dense value is `dense` (`[out, in]`), or `None` to keep
    /// it dense. `role` picks the type policy.
    fn quantize(&mut self, name: &str, dense: &Tensor, role: Role) -> Result<Option<QWeight>>;
    /// What has been quantized so far.
    fn report(&self) -> QuantReport;
    /// Weights prepared for layers that never took them (must be empty once a model is built).
    fn unclaimed(&self) -> Vec<String> {
        Vec::new()
    }
}

/// What a tensor is, for the type policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A linear layer inside the decoder (or the vision tower / connector with `--quant-vision`).
    Layer,
    /// The token embedding matrix.
    Embedding,
    /// The output head.
    Head,
}

/// Quantizes dense weights by the policy of the module docs.
#[derive(Debug, Clone)]
pub struct InSituQuantizer {
    pub ty: QuantType,
    pub report: QuantReport,
}

impl InSituQuantizer {
    pub fn new(ty: QuantType) -> Self {
        Self {
            ty,
            report: QuantReport::default(),
        }
    }
}

impl InSituQuantizer {
    /// The type tensor `name` (a `role` with rows of `in_dim`) gets, or `None` (kept dense, and reported).
    pub fn choose(&mut self, name: &str, role: Role, in_dim: usize) -> Option<QuantType> {
        let wanted = match role {
            Role::Head => self.ty.head_type(),
            Role::Layer | Role::Embedding => self.ty,
        };
        let ty = wanted.for_width(in_dim);
        if ty.is_none() {
            self.report.kept_dense.push(name.to_string());
        }
        ty
    }

    /// Counts a weight quantized outside [`QuantSource::quantize`].
    pub fn record(&mut self, weight: &QWeight) {
        self.report.record(weight.quant_type(), weight);
    }
}

impl QuantSource for InSituQuantizer {
    fn quantize(&mut self, name: &str, dense: &Tensor, role: Role) -> Result<Option<QWeight>> {
        match self.choose(name, role, dense.dim(1)?) {
            Some(ty) => {
                let q = QWeight::quantize(dense, ty)?;
                self.report.record(ty, &q);
                Ok(Some(q))
            }
            None => Ok(None),
        }
    }

    fn report(&self) -> QuantReport {
        self.report.clone()
    }
}

/// Builds with an in-place quantizer when `quant` asks for one (the `VarMap` / `VarBuilder` path of the models'
/// `new`): `build` gets the source and whether the vision side is included; returns what it built and the report.
pub fn build_in_situ<T, E>(
    quant: Option<QuantConfig>,
    build: impl FnOnce(Option<&mut dyn QuantSource>, bool) -> std::result::Result<T, E>,
) -> std::result::Result<(T, Option<QuantReport>), E> {
    let mut quantizer = quant.map(|q| InSituQuantizer::new(q.weights));
    let vision = quant.is_some_and(|q| q.vision);
    let built = build(
        quantizer.as_mut().map(|q| q as &mut dyn QuantSource),
        vision,
    )?;
    Ok((built, quantizer.map(|q| q.report)))
}

/// Reborrows an optional source for one call (`Option::as_deref_mut` cannot shorten the trait object's lifetime).
pub fn reborrow<'a>(
    source: &'a mut Option<&mut dyn QuantSource>,
) -> Option<&'a mut dyn QuantSource> {
    match source {
        Some(s) => Some(&mut **s),
        None => None,
    }
}

/// Quantizes the linear layers of a loaded block (the vision tower or the connector) whose checkpoint path is
/// `prefix`.
pub fn quantize_block(
    block: &mut dyn crate::nn::VisitParams,
    prefix: &str,
    source: &mut dyn QuantSource,
) -> Result<()> {
    block.visit_params(prefix, &mut QuantizeLinears { source })
}

/// Quantizes an untied output head stored as `name` (its type follows [`QuantType::head_type`]).
pub fn quantize_head(head: &mut Linear, name: &str, source: &mut dyn QuantSource) -> Result<()> {
    if let Some(dense) = head.dense_weight() {
        if let Some(q) = source.quantize(name, dense, Role::Head)? {
            head.set_quantized(q);
        }
    }
    Ok(())
}

/// A [`ParamVisitor`] that swaps every linear layer it visits for its quantized form from `source`; other
/// tensors (norms, biases, embeddings) are left alone.
pub struct QuantizeLinears<'a> {
    pub source: &'a mut dyn QuantSource,
}

impl ParamVisitor for QuantizeLinears<'_> {
    fn linear(&mut self, path: &str, layer: &mut Linear) -> Result<()> {
        let Some(dense) = layer.dense_weight() else {
            return Ok(()); // already quantized, or hooked by a trainer
        };
        if dense.rank() != 2 || layer.stored_shape().is_some() {
            return Ok(()); // the conv patch embedding is stored 4-D: it stays as it is
        }
        let name = format!("{path}.weight");
        if let Some(q) = self.source.quantize(&name, dense, Role::Layer)? {
            layer.set_quantized(q);
        }
        Ok(())
    }

    fn tensor(&mut self, _name: &str, _tensor: &mut Tensor) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
