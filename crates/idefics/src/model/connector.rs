//! Connector: SwiGLU modality projection, then the perceiver resampler (transformers' `Idefics2Connector`).

use crate::config::{Idefics2Config, PerceiverConfig};
use crate::nn::{
    attention, join_path, mask_min_value, GatedMlp, Kernels, Linear, ParamVisitor, RmsNorm,
    VisitParams,
};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::parts::{builders, visit_parts, Part};

/// Cross-attention of the latents over `[context, latents]` (context FIRST), grouped kv heads, no positions.
#[derive(Debug, Clone)]
pub struct PerceiverAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    kernels: Kernels,
}

impl PerceiverAttention {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both read this list).
    const PARTS: [&'static str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

    fn parts_mut(&mut self) -> [Part<'_>; 4] {
        [
            Part::Linear(&mut self.q_proj),
            Part::Linear(&mut self.k_proj),
            Part::Linear(&mut self.v_proj),
            Part::Linear(&mut self.o_proj),
        ]
    }

    pub fn load(cfg: &PerceiverConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        let (d, h, kv, hd) = (
            cfg.hidden_size,
            cfg.resampler_n_heads,
            cfg.num_key_value_heads,
            cfg.resampler_head_dim,
        );
        let [q, k, v, o] = builders(&vb, Self::PARTS);
        Ok(Self {
            q_proj: Linear::load(q, d, h * hd, false)?,
            k_proj: Linear::load(k, d, kv * hd, false)?,
            v_proj: Linear::load(v, d, kv * hd, false)?,
            o_proj: Linear::load(o, h * hd, d, false)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
            kernels: kernels.clone(),
        })
    }

    /// `latents [n, L, D]`, `context [n, S, D]` (both already normed), `mask` additive `[n, 1, 1, S + L]`.
    pub fn forward(
        &self,
        latents: &Tensor,
        context: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (n, l, _) = latents.dims3()?;
        let s = context.dim(1)?;
        let kv_in = Tensor::cat(&[context, latents], 1)?;
        let q = self
            .q_proj
            .forward(latents)?
            .reshape((n, l, self.num_heads, self.head_dim))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(&kv_in)?
            .reshape((n, s + l, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(&kv_in)?
            .reshape((n, s + l, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = attention(&q, &k, &v, mask, scale, &self.kernels)?;
        self.o_proj.forward(&out)
    }
}

/// One resampler block: latent cross-attention then MLP, both residual.
#[derive(Debug, Clone)]
pub struct PerceiverLayer {
    input_latents_norm: RmsNorm,
    input_context_norm: RmsNorm,
    self_attn: PerceiverAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

impl PerceiverLayer {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both read this list).
    const PARTS: [&'static str; 5] = [
        "input_latents_norm",
        "input_context_norm",
        "self_attn",
        "post_attention_layernorm",
        "mlp",
    ];

    fn parts_mut(&mut self) -> [Part<'_>; 5] {
        [
            Part::Block(&mut self.input_latents_norm),
            Part::Block(&mut self.input_context_norm),
            Part::Block(&mut self.self_attn),
            Part::Block(&mut self.post_attention_layernorm),
            Part::Block(&mut self.mlp),
        ]
    }

    pub fn load(cfg: &PerceiverConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let [latents_norm, context_norm, attn, post_norm, mlp] = builders(&vb, Self::PARTS);
        Ok(Self {
            input_latents_norm: RmsNorm::load(latents_norm, d, eps, kernels)?,
            input_context_norm: RmsNorm::load(context_norm, d, eps, kernels)?,
            self_attn: PerceiverAttention::load(cfg, attn, kernels)?,
            post_attention_layernorm: RmsNorm::load(post_norm, d, eps, kernels)?,
            // The perceiver MLP is 4x wide and uses the perceiver's own activation.
            mlp: GatedMlp::load(mlp, d, 4 * d, d, cfg.hidden_act)?,
        })
    }

    /// `context` is the ORIGINAL (projected) context: transformers norms it afresh in every layer.
    pub fn forward(
        &self,
        latents: &Tensor,
        context: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let normed_latents = self.input_latents_norm.forward(latents)?;
        let normed_context = self.input_context_norm.forward(context)?;
        let latents = (latents
            + self
                .self_attn
                .forward(&normed_latents, &normed_context, mask)?)?;
        &latents
            + self
                .mlp
                .forward(&self.post_attention_layernorm.forward(&latents)?)?
    }
}

/// Compresses a variable number of patch features into `resampler_n_latents` vectors.
#[derive(Debug, Clone)]
pub struct PerceiverResampler {
    latents: Tensor,
    layers: Vec<PerceiverLayer>,
    norm: RmsNorm,
}

impl PerceiverResampler {
    pub fn load(cfg: &PerceiverConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        let layers = (0..cfg.resampler_depth)
            .map(|i| PerceiverLayer::load(cfg, vb.pp("layers").pp(i), kernels))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            latents: vb.get((cfg.resampler_n_latents, cfg.hidden_size), "latents")?,
            layers,
            norm: RmsNorm::load(vb.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps, kernels)?,
        })
    }

    /// `context [n, S, D]`, optional `patch_mask [n, S]` (nonzero = valid patch) -> `[n, n_latents, D]`.
    pub fn forward(&self, context: &Tensor, patch_mask: Option<&Tensor>) -> Result<Tensor> {
        let n = context.dim(0)?;
        let (l, d) = self.latents.dims2()?;
        let mut latents = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((n, l, d))?
            .contiguous()?;
        // Key mask over [context patches, latents]; latents are always visible.
        let mask = match patch_mask {
            None => None,
            Some(pm) => {
                let dtype = context.dtype();
                let valid = pm.ne(0.0)?.to_dtype(DType::F32)?;
                let ones = Tensor::ones((n, l), DType::F32, context.device())?;
                let keep = Tensor::cat(&[&valid, &ones], 1)?;
                let additive = keep
                    .affine(-mask_min_value(dtype), mask_min_value(dtype))?
                    .to_dtype(dtype)?;
                Some(additive.unsqueeze(1)?.unsqueeze(1)?)
            }
        };
        for layer in &self.layers {
            latents = layer.forward(&latents, context, mask.as_ref())?;
        }
        self.norm.forward(&latents)
    }
}

/// `Idefics2Connector`: modality projection (vision width -> text width) then resampling.
#[derive(Debug, Clone)]
pub struct Connector {
    modality_projection: GatedMlp,
    perceiver_resampler: PerceiverResampler,
}

impl Connector {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both read this list).
    const PARTS: [&'static str; 2] = ["modality_projection", "perceiver_resampler"];

    fn parts_mut(&mut self) -> [Part<'_>; 2] {
        [
            Part::Block(&mut self.modality_projection),
            Part::Block(&mut self.perceiver_resampler),
        ]
    }

    pub fn load(cfg: &Idefics2Config, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        let t = &cfg.text_config;
        let [projection, resampler] = builders(&vb, Self::PARTS);
        Ok(Self {
            // The projection uses the TEXT config's width and activation (transformers' Idefics2Connector).
            modality_projection: GatedMlp::load(
                projection,
                cfg.vision_config.hidden_size,
                t.intermediate_size,
                t.hidden_size,
                t.hidden_act,
            )?,
            perceiver_resampler: PerceiverResampler::load(
                &cfg.perceiver_config,
                resampler,
                kernels,
            )?,
        })
    }

    /// `vision [n, S, Dv]`, optional patch mask `[n, S]` -> `[n, n_latents, Dt]`.
    pub fn forward(&self, vision: &Tensor, patch_mask: Option<&Tensor>) -> Result<Tensor> {
        let context = self.modality_projection.forward(vision)?;
        self.perceiver_resampler.forward(&context, patch_mask)
    }
}

impl VisitParams for PerceiverAttention {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}

impl VisitParams for PerceiverLayer {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}

impl VisitParams for PerceiverResampler {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        v.tensor(&join_path(prefix, "latents"), &mut self.latents)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_params(&join_path(prefix, &format!("layers.{i}")), v)?;
        }
        self.norm.visit_params(&join_path(prefix, "norm"), v)
    }
}

impl VisitParams for Connector {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}
