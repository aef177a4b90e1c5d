//! The text decoder alone, dense or quantized, for `idefics bench-quant`: its peak memory, prefill and decode
//! speed, and how far its next-token distributions move from f32's.
//!
//! Only the text model and the head are loaded (the vision tower is the same in every variant and would hide
//! the difference in memory).

use crate::config::TextConfig;
use crate::error::{Error, Result};
use crate::model::idefics3_config::{read_model_type, Idefics3Config};
use crate::model::text::{DecoderOptions, KvCache, TextModel};
use crate::model::ModelFamily;
use crate::nn::{Kernels, Linear, ParamVisitor, VisitParams};
use crate::quant::{quantize_head, QuantConfig, QuantReport};
use crate::weights::ModelWeights;
use crate::Idefics2Config;
use candle_core::{DType, Device, Tensor, D};
use std::path::Path;

/// A text decoder and its output head.
pub struct TextOnlyModel {
    text: TextModel,
    head: Linear,
    config: TextConfig,
    report: Option<QuantReport>,
}

impl TextOnlyModel {
    /// Loads the text decoder and head of the checkpoint (or saved quantized model) in `dir`, in f32,
    /// quantized as `quant` asks.
    pub fn load(dir: &Path, quant: Option<QuantConfig>) -> Result<Self> {
        let model_type = read_model_type(dir)?;
        let config_path = dir.join("config.json");
        let (config, decoder, tied) = match ModelFamily::from_model_type(&model_type) {
            Some(ModelFamily::Idefics2) => {
                let c = Idefics2Config::from_file(&config_path)?;
                (
                    c.text_config,
                    DecoderOptions::default(),
                    c.tie_word_embeddings,
                )
            }
            Some(ModelFamily::Idefics3 | ModelFamily::SmolVlm) => {
                let c = Idefics3Config::from_file(&config_path)?;
                (c.text_config, c.decoder, c.tie_word_embeddings)
            }
            None => {
                return Err(Error::Config(format!(
                    "{}: model_type {model_type:?} is not supported",
                    config_path.display()
                )))
            }
        };
        let mut weights = ModelWeights::open(dir, DType::F32, &Device::Cpu, quant)?;
        let vb = weights.vb.clone();
        let kernels = Kernels::default();
        let mut text = TextModel::load_quantized(
            &config,
            vb.pp("model.text_model"),
            &kernels,
            &decoder,
            weights.source(),
        )
        .map_err(|e| weights.explain(e.into()))?;
        // A tied config uses the embeddings as the head (a stored head that differs, which the full model
        // detects, is not looked at here).
        let mut head = if tied {
            text.tied_head()
        } else {
            let mut head = Linear::load(
                vb.pp("lm_head"),
                config.hidden_size,
                config.vocab_size,
                false,
            )
            .map_err(|e| weights.explain(e.into()))?;
            if let Some(source) = weights.source() {
                quantize_head(&mut head, "lm_head.weight", source)?;
            }
            head
        };
        // Dense f32 layers in column panels, as every inference command stores the text decoder, so that the
        // reference is the f32 model users run (quantized layers stay as they are; a tied head keeps the rows
        // of the embedding it shares).
        struct Panels;
        impl ParamVisitor for Panels {
            fn linear(&mut self, _: &str, layer: &mut Linear) -> candle_core::Result<()> {
                layer.use_panel_layout().map(|_| ())
            }
            fn tensor(&mut self, _: &str, _: &mut Tensor) -> candle_core::Result<()> {
                Ok(())
            }
        }
        text.visit_params("", &mut Panels)?;
        if !tied {
            head.use_panel_layout()?;
        }
        Ok(Self {
            text,
            head,
            config,
            report: weights.quant_report(),
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    pub fn quant_report(&self) -> Option<&QuantReport> {
        self.report.as_ref()
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.text.num_layers())
    }

    /// Appends `ids` (one sequence) to the cache and returns the logits `[L, V]` of the last `logit_rows`
    /// positions.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, logit_rows: usize) -> Result<Tensor> {
        if ids.len() == 1 {
            // As the models' `decode_step`.
            return crate::model::step::on_compute_threads_with_room(cache, |cache| {
                self.forward_here(ids, cache, logit_rows)
            });
        }
        self.forward_here(ids, cache, logit_rows)
    }

    fn forward_here(&self, ids: &[u32], cache: &mut KvCache, logit_rows: usize) -> Result<Tensor> {
        let dev = Device::Cpu;
        let input = Tensor::new(ids, &dev)?.unsqueeze(0)?;
        let embeds = self.text.embed(&input)?;
        let new_mask = vec![vec![1u8; ids.len()]];
        let past = cache.attention_mask().to_vec();
        let ctx = self
            .text
            .step_context(&new_mask, None, &past, DType::F32, &dev)?;
        let hidden = self.text.forward_embeds(&embeds, &ctx, Some(cache))?;
        TextModel::commit_mask(cache, &new_mask);
        let rows = logit_rows.min(ids.len());
        let last = hidden.narrow(1, ids.len() - rows, rows)?.squeeze(0)?;
        Ok(self.head.forward(&last)?)
    }
}

/// How a quantized model's next-token distributions differ from the reference's on one token sequence.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Divergence {
    /// KL(reference || quantized) per position: mean and max.
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Fraction of positions whose most likely next token is the same.
    pub top1_agreement: f64,
    /// Perplexity of the sequence's own next tokens under each model.
    pub reference_ppl: f64,
    pub quantized_ppl: f64,
}

/// Compares logits `[L, V]` of the same positions; `next[i]` is the token that follows position i (the last
/// position has none and is left out of the perplexity).
pub fn divergence(reference: &Tensor, quantized: &Tensor, next: &[u32]) -> Result<Divergence> {
    let lp = candle_nn::ops::log_softmax(&reference.to_dtype(DType::F32)?, D::Minus1)?;
    let lq = candle_nn::ops::log_softmax(&quantized.to_dtype(DType::F32)?, D::Minus1)?;
    let kl: Vec<f32> = (lp.exp()? * (&lp - &lq)?)?.sum(D::Minus1)?.to_vec1()?;
    let a: Vec<u32> = lp.argmax(D::Minus1)?.to_vec1()?;
    let b: Vec<u32> = lq.argmax(D::Minus1)?.to_vec1()?;
    let n = kl.len().max(1) as f64;
    let nll = |lx: &Tensor| -> Result<f64> {
        let rows = next.len().min(lx.dim(0)?);
        if rows == 0 {
            return Ok(f64::NAN);
        }
        let idx = Tensor::new(&next[..rows], lx.device())?.unsqueeze(1)?;
        let picked: Vec<f32> = lx
            .narrow(0, 0, rows)?
            .gather(&idx, 1)?
            .squeeze(1)?
            .to_vec1()?;
        Ok(-picked.iter().map(|&v| v as f64).sum::<f64>() / rows as f64)
    };
    Ok(Divergence {
        mean_kl: kl.iter().map(|&v| v as f64).sum::<f64>() / n,
        max_kl: kl.iter().fold(0f64, |m, &v| m.max(v as f64)),
        top1_agreement: a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / n,
        reference_ppl: nll(&lp)?.exp(),
        quantized_ppl: nll(&lq)?.exp(),
    })
}
