//! One handle over the model families, chosen from `config.json`'s `model_type`, for code that only runs a
//! model (generation, pipeline, forward, bench): every family takes the same [`ModelInputs`] and [`KvCache`].

use super::idefics2::{
    CpuWeightLayout, Idefics2ForConditionalGeneration, LoadOptions, ModelInputs,
};
use super::idefics3::Idefics3ForConditionalGeneration;
use super::idefics3_config::read_model_type;
use super::text::KvCache;
use crate::error::{Error, Result};
use crate::nn::{Linear, ParamVisitor, VisitParams};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// What the decoding loop needs from a model: a cache, a prefill that returns the last position's logits, and
/// one-token steps. Implemented by every family and by [`VlmModel`], so that [`crate::generate::Generator`] runs
/// any of them.
pub trait DecodeModel: Send + Sync {
    /// An empty KV cache for this model.
    fn new_cache(&self) -> KvCache;
    /// Prefill (images included) and return the last position's logits `[B, V]`.
    fn forward_last(&self, inputs: &ModelInputs, cache: &mut KvCache) -> Result<Tensor>;
    /// Appends one token per row and returns the next-token logits `[B, V]`.
    fn decode_step(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor>;
}

/// The logits entry points of a model, written once from its `forward_hidden`, `lm_head()` and `device()`: the
/// inherent `forward` / `forward_last` / `decode_step` of every family and of [`VlmModel`], and their
/// [`DecodeModel`] impl.
macro_rules! impl_logits {
    ($t:ty) => {
        impl $t {
            /// Logits `[B, L, V]` for the new tokens. With a cache, its keys/values and mask are extended (prefill
            /// when empty, then decoding steps).
            pub fn forward(
                &self,
                inputs: &ModelInputs,
                cache: Option<&mut KvCache>,
            ) -> Result<Tensor> {
                let hidden = self.forward_hidden(inputs, cache)?;
                Ok(self.lm_head().forward(&hidden)?)
            }

            /// Prefill (or continue) with `inputs` and return the logits of the last position of each row,
            /// `[B, V]`. Use left padding so that the last position is a real token in every row.
            pub fn forward_last(
                &self,
                inputs: &ModelInputs,
                cache: &mut KvCache,
            ) -> Result<Tensor> {
                let hidden = self.forward_hidden(inputs, Some(cache))?;
                let l = hidden.dim(1)?;
                Ok(self
                    .lm_head()
                    .forward(&hidden.narrow(1, l - 1, 1)?.squeeze(1)?)?)
            }

            /// One decoding step: appends `tokens` (one per row, all real) and returns the next-token logits
            /// `[B, V]`.
            pub fn decode_step(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
                if !self.device().is_cpu() {
                    let inputs = super::step::decode_inputs(tokens, cache, self.device())?;
                    return self.forward_last(&inputs, cache);
                }
                super::step::on_compute_threads_with_room(cache, |cache| {
                    let inputs = super::step::decode_inputs(tokens, cache, self.device())?;
                    self.forward_last(&inputs, cache)
                })
            }
        }

        impl DecodeModel for $t {
            fn new_cache(&self) -> KvCache {
                <$t>::new_cache(self)
            }
            fn forward_last(&self, inputs: &ModelInputs, cache: &mut KvCache) -> Result<Tensor> {
                <$t>::forward_last(self, inputs, cache)
            }
            fn decode_step(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
                <$t>::decode_step(self, tokens, cache)
            }
        }
    };
}

impl_logits!(Idefics2ForConditionalGeneration);
impl_logits!(Idefics3ForConditionalGeneration);
impl_logits!(VlmModel);

/// The architecture families, one definition for the processor and the model.
pub use idefics_processor::ModelFamily;

/// A loaded model of any supported family (boxed: the handles differ in size).
#[derive(Debug, Clone)]
pub enum VlmModel {
    Idefics2(Box<Idefics2ForConditionalGeneration>),
    /// Idefics3 and SmolVLM.
    Idefics3(Box<Idefics3ForConditionalGeneration>),
}

impl VlmModel {
    /// Loads the checkpoint in `dir`, picking the family from `config.json`'s `model_type`.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let model_type = read_model_type(dir)?;
        let mut model = match ModelFamily::from_model_type(&model_type) {
            Some(ModelFamily::Idefics2) => {
                Self::Idefics2(Box::new(Idefics2ForConditionalGeneration::load(dir, opts)?))
            }
            Some(ModelFamily::Idefics3 | ModelFamily::SmolVlm) => {
                Self::Idefics3(Box::new(Idefics3ForConditionalGeneration::load(dir, opts)?))
            }
            None => {
                return Err(Error::Config(format!(
                    "{}: model_type \"{model_type}\" is not supported (idefics2, idefics3 and smolvlm are)",
                    dir.join("config.json").display()
                )))
            }
        };
        let n = model.use_cpu_weight_layout(opts.cpu_weight_layout)?;
        tracing::debug!(layers = n, layout = ?opts.cpu_weight_layout,
            "linear weights stored for CPU inference");
        Ok(model)
    }

    /// Stores the eligible linear weights as `layout` says (transposed or in panels: [`CpuWeightLayout`]), never
    /// a head tied to the embeddings (the lookup needs the rows). Inference only; returns how many layers changed.
    pub fn use_cpu_weight_layout(&mut self, layout: CpuWeightLayout) -> Result<usize> {
        struct Relayout {
            layout: CpuWeightLayout,
            skip_head: bool,
            changed: usize,
        }
        impl ParamVisitor for Relayout {
            fn linear(&mut self, path: &str, layer: &mut Linear) -> candle_core::Result<()> {
                let is_head = path == "lm_head";
                if is_head && self.skip_head {
                    return Ok(());
                }
                // The text decoder and the head decode one token at a time: panels serve that and the prefill.
                let decodes = is_head || path.starts_with("model.text_model.");
                let changed = if self.layout == CpuWeightLayout::Panels && decodes {
                    layer.use_panel_layout()?
                } else {
                    layer.use_transposed_layout()?
                };
                self.changed += usize::from(changed);
                Ok(())
            }
            fn tensor(&mut self, _: &str, _: &mut Tensor) -> candle_core::Result<()> {
                Ok(())
            }
        }
        if layout == CpuWeightLayout::Checkpoint {
            return Ok(0);
        }
        let mut visitor = Relayout {
            layout,
            skip_head: self.is_tied(),
            changed: 0,
        };
        self.visit_params("", &mut visitor)?;
        Ok(visitor.changed)
    }

    pub fn family(&self) -> ModelFamily {
        match self {
            Self::Idefics2(_) => ModelFamily::Idefics2,
            Self::Idefics3(m) => match m.config().model_type {
                super::idefics3_config::Idefics3Family::Idefics3 => ModelFamily::Idefics3,
                super::idefics3_config::Idefics3Family::Smolvlm => ModelFamily::SmolVlm,
            },
        }
    }

    /// Final-normed hidden states `[B, L, Dt]`.
    pub fn forward_hidden(
        &self,
        inputs: &ModelInputs,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        match self {
            Self::Idefics2(m) => m.forward_hidden(inputs, cache),
            Self::Idefics3(m) => m.forward_hidden(inputs, cache),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        match self {
            Self::Idefics2(m) => m.new_cache(),
            Self::Idefics3(m) => m.new_cache(),
        }
    }

    /// The `<image>` token id of the checkpoint.
    pub fn image_token_id(&self) -> u32 {
        match self {
            Self::Idefics2(m) => m.config().image_token_id,
            Self::Idefics3(m) => m.config().image_token_id,
        }
    }

    /// `<image>` tokens per image (Idefics2) or per tile (Idefics3 / SmolVLM).
    pub fn image_seq_len(&self) -> usize {
        match self {
            Self::Idefics2(m) => m.config().image_seq_len(),
            Self::Idefics3(m) => m.config().image_seq_len(),
        }
    }

    /// The vision tower's sizes (the same SigLIP config in every family).
    pub fn vision_config(&self) -> &crate::config::VisionConfig {
        match self {
            Self::Idefics2(m) => &m.config().vision_config,
            Self::Idefics3(m) => &m.config().vision_config,
        }
    }

    /// The text decoder's sizes (Mistral or Llama).
    pub fn text_config(&self) -> &crate::config::TextConfig {
        match self {
            Self::Idefics2(m) => &m.config().text_config,
            Self::Idefics3(m) => &m.config().text_config,
        }
    }

    /// Most positions the text model was trained for (prompt + answer).
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            Self::Idefics2(m) => m.config().text_config.max_position_embeddings,
            Self::Idefics3(m) => m.config().text_config.max_position_embeddings,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Idefics2(m) => m.config().text_config.vocab_size,
            Self::Idefics3(m) => m.config().text_config.vocab_size,
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Self::Idefics2(m) => m.dtype(),
            Self::Idefics3(m) => m.dtype(),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Self::Idefics2(m) => m.device(),
            Self::Idefics3(m) => m.device(),
        }
    }

    /// The output head (for a tied head, a linear whose weight is the embedding matrix).
    pub fn lm_head(&self) -> &crate::nn::Linear {
        match self {
            Self::Idefics2(m) => m.lm_head(),
            Self::Idefics3(m) => m.lm_head(),
        }
    }

    /// The text decoder (token embeddings included).
    pub fn text_model(&self) -> &super::text::TextModel {
        match self {
            Self::Idefics2(m) => m.text_model(),
            Self::Idefics3(m) => m.text_model(),
        }
    }

    /// Whether the output head is the embedding matrix (Idefics3 / SmolVLM: as loaded, since a stored head that
    /// differs from the embeddings is kept untied, as transformers does).
    pub fn is_tied(&self) -> bool {
        match self {
            Self::Idefics2(m) => m.config().tie_word_embeddings,
            Self::Idefics3(m) => m.is_tied(),
        }
    }

    pub fn set_use_fused_kernels(&self, fused: bool) {
        match self {
            Self::Idefics2(m) => m.set_use_fused_kernels(fused),
            Self::Idefics3(m) => m.set_use_fused_kernels(fused),
        }
    }

    /// What was quantized at load (`None`: a dense model).
    pub fn quant_report(&self) -> Option<&crate::quant::QuantReport> {
        match self {
            Self::Idefics2(m) => m.quant_report(),
            Self::Idefics3(m) => m.quant_report(),
        }
    }

    /// Saves this quantized model (loaded from `src_dir` with `quant`) as `out_dir/model.gguf` plus the
    /// directory's config, tokenizer and processor files, so that loading `out_dir` skips quantization.
    pub fn save_quantized(
        &mut self,
        quant: crate::quant::QuantConfig,
        src_dir: &Path,
        out_dir: &Path,
    ) -> Result<()> {
        if self.quant_report().is_none() {
            return Err(Error::Weights(
                "save_quantized: the model was loaded without quantization".to_string(),
            ));
        }
        let tied = self.is_tied();
        crate::quant::store::save(self, quant, tied, src_dir, out_dir)
    }
}

impl From<Idefics2ForConditionalGeneration> for VlmModel {
    fn from(model: Idefics2ForConditionalGeneration) -> Self {
        Self::Idefics2(Box::new(model))
    }
}

impl From<Idefics3ForConditionalGeneration> for VlmModel {
    fn from(model: Idefics3ForConditionalGeneration) -> Self {
        Self::Idefics3(Box::new(model))
    }
}

impl VisitParams for VlmModel {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> candle_core::Result<()> {
        match self {
            Self::Idefics2(m) => m.visit_params(prefix, v),
            Self::Idefics3(m) => m.visit_params(prefix, v),
        }
    }
}
