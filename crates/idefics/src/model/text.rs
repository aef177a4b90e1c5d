//! Mistral / Llama decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, sliding-window causal mask,
//! left-padding mask and a KV cache for incremental decoding. The Llama decoder of Idefics3 / SmolVLM is the same
//! network without the sliding window, with the options of [`DecoderOptions`] (transformers' `LlamaModel`).

use super::parts::{builders, visit_parts, Part};
use crate::config::TextConfig;
use crate::nn::rope::RopeTables;
use crate::nn::{
    attention, join_path, mask_min_value, Embedding, GatedMlp, Kernels, Linear, ParamVisitor,
    RmsNorm, RopeScaling, RotaryEmbedding, VisitParams,
};
use crate::quant::{reborrow, QuantSource, QuantizeLinears, Role};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

/// Keys and values of one layer: buffers `[B, Hkv, capacity, D]` of which the first `len` positions are filled.
///
/// New positions are written in place (`slice_set`); the buffers grow geometrically ([`grown_capacity`]), so decoding copies the cache
/// only when it outgrows its capacity instead of concatenating all of it at every token. Clones share the buffers
/// until one of them appends: `owner` counts the sharers, and a shared buffer is copied before it is written
/// (copy on write), so clones never see each other's tokens.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
    owner: std::sync::Arc<()>,
}

impl LayerKv {
    fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    /// Buffers for `capacity` positions holding a copy of `k, v` (`[B, Hkv, L, D]`, L <= capacity) at the start.
    fn with_capacity(k: &Tensor, v: &Tensor, capacity: usize) -> Result<Self> {
        let (b, h, l, d) = k.dims4()?;
        let alloc = |src: &Tensor| -> Result<Tensor> {
            let buf = Tensor::zeros((b, h, capacity, d), src.dtype(), src.device())?;
            buf.slice_set(&src.contiguous()?, 2, 0)?;
            Ok(buf)
        };
        Ok(Self {
            k: alloc(k)?,
            v: alloc(v)?,
            len: l,
            owner: std::sync::Arc::new(()),
        })
    }

    fn filled(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }

    /// Moves the filled positions into buffers of [`grown_capacity`] for `needed` positions.
    fn grow(&mut self, needed: usize) -> Result<()> {
        let (pk, pv) = self.filled()?;
        let capacity = grown_capacity(self.capacity(), needed);
        *self = Self::with_capacity(&pk, &pv, capacity)?;
        Ok(())
    }

    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let l = k.dim(2)?;
        let needed = self.len + l;
        if needed > self.capacity() || std::sync::Arc::strong_count(&self.owner) > 1 {
            self.grow(needed)?;
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = needed;
        Ok(())
    }
}

/// Positions are allocated in steps of this many.
const KV_STEP: usize = 256;

/// Capacity of a new cache for `needed` positions (a prompt): the next whole step.
fn initial_capacity(needed: usize) -> usize {
    needed.max(1).next_multiple_of(KV_STEP)
}

/// Capacity when `needed` positions outgrow `current`: a quarter more (then the next whole step), so a generation
/// of n tokens copies O(n) positions, while the unused tail stays under a quarter of the cache plus a step (powers
/// of two left up to half of it unused: a 4097-token context took the memory of 8192).
fn grown_capacity(current: usize, needed: usize) -> usize {
    needed.max(current + current / 4).next_multiple_of(KV_STEP)
}

/// What a Llama decoder has beyond a Mistral one (`LlamaConfig.attention_bias`, `mlp_bias`, `rope_parameters`).
/// The default is Mistral's: no biases, unscaled rope.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DecoderOptions {
    /// Biases on q/k/v/o projections.
    pub attention_bias: bool,
    /// Biases on gate/up/down projections.
    pub mlp_bias: bool,
    pub rope_scaling: RopeScaling,
}

/// Keys and values of every layer for the tokens seen so far, plus their padding mask.
///
/// The cache owns the attention-mask history, so each call only describes its NEW tokens.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// `mask[b][j]` = 1 if cached token j of row b is a real token (0 = padding).
    mask: Vec<Vec<u8>>,
}

impl KvCache {
    /// An empty cache for a decoder of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
            mask: Vec::new(),
        }
    }

    /// Number of cached positions (the same for every row).
    pub fn seq_len(&self) -> usize {
        self.mask.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.seq_len() == 0
    }

    /// Batch size the cache was filled with (0 when empty).
    pub fn batch_size(&self) -> usize {
        self.mask.len()
    }

    /// Padding mask of the cached positions, one row per sample.
    pub fn attention_mask(&self) -> &[Vec<u8>] {
        &self.mask
    }

    /// Drops everything (reuse the allocation for a new prompt).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.mask.clear();
    }

    /// Position id the next real token of each row gets (= real tokens so far), as `generate()` counts.
    pub fn next_positions(&self) -> Vec<i64> {
        self.mask
            .iter()
            .map(|r| r.iter().filter(|&&m| m != 0).count() as i64)
            .collect()
    }

    /// Grows every filled layer that cannot take `positions` more without reallocating. Appending grows a
    /// layer anyway; this lets the caller choose the thread, hence the malloc arena, that holds the buffers
    /// (see `step::on_compute_threads_with_room`).
    pub fn reserve(&mut self, positions: usize) -> Result<()> {
        for layer in self.layers.iter_mut().flatten() {
            let needed = layer.len + positions;
            if needed > layer.capacity() {
                layer.grow(needed)?;
            }
        }
        Ok(())
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let slot = match self.layers.get_mut(layer) {
            Some(s) => s,
            None => candle_core::bail!("kv cache has no layer {layer}"),
        };
        match slot {
            None => {
                let layer = LayerKv::with_capacity(k, v, initial_capacity(k.dim(2)?))?;
                let filled = layer.filled()?;
                *slot = Some(layer);
                Ok(filled)
            }
            Some(layer) => {
                layer.append(k, v)?;
                layer.filled()
            }
        }
    }
}

/// Everything a decoder call needs about positions: rope tables and the additive attention mask.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub rope: RopeTables,
    /// Additive `[B, 1, L, past + L]` mask in the activation dtype.
    pub mask: Tensor,
}

/// Grouped-query self-attention with rotary embeddings.
#[derive(Debug, Clone)]
pub struct TextAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    kernels: Kernels,
}

impl TextAttention {
    pub fn load(cfg: &TextConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        Self::load_with(cfg, vb, kernels, false)
    }

    /// As [`Self::load`], with biases on the four projections when `bias`.
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both use this list).
    const PARTS: [&'static str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

    fn parts_mut(&mut self) -> [Part<'_>; 4] {
        [
            Part::Linear(&mut self.q_proj),
            Part::Linear(&mut self.k_proj),
            Part::Linear(&mut self.v_proj),
            Part::Linear(&mut self.o_proj),
        ]
    }

    pub fn load_with(
        cfg: &TextConfig,
        vb: VarBuilder,
        kernels: &Kernels,
        bias: bool,
    ) -> Result<Self> {
        let (d, h, kv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let [q, k, v, o] = builders(&vb, Self::PARTS);
        Ok(Self {
            q_proj: Linear::load(q, d, h * hd, bias)?,
            k_proj: Linear::load(k, d, kv * hd, bias)?,
            v_proj: Linear::load(v, d, kv * hd, bias)?,
            o_proj: Linear::load(o, h * hd, d, bias)?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
            kernels: kernels.clone(),
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rotary: &RotaryEmbedding,
        ctx: &StepContext,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let q = self
            .q_proj
            .forward(xs)?
            .reshape((b, l, self.num_heads, self.head_dim))?
            .transpose(1, 2)?;
        let k = self
            .k_proj
            .forward(xs)?
            .reshape((b, l, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let v = self
            .v_proj
            .forward(xs)?
            .reshape((b, l, self.num_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let q = rotary.apply(&q, &ctx.rope)?;
        let k = rotary.apply(&k, &ctx.rope)?.contiguous()?;
        let v = v.contiguous()?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = attention(&q, &k, &v, Some(&ctx.mask), scale, &self.kernels)?;
        self.o_proj.forward(&out)
    }
}

/// Pre-norm decoder block.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: TextAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

impl DecoderLayer {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both use this list).
    const PARTS: [&'static str; 4] = [
        "input_layernorm",
        "self_attn",
        "post_attention_layernorm",
        "mlp",
    ];

    fn parts_mut(&mut self) -> [Part<'_>; 4] {
        [
            Part::Block(&mut self.input_layernorm),
            Part::Block(&mut self.self_attn),
            Part::Block(&mut self.post_attention_layernorm),
            Part::Block(&mut self.mlp),
        ]
    }

    pub fn load(cfg: &TextConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        Self::load_with(cfg, vb, kernels, &DecoderOptions::default())
    }

    pub fn load_with(
        cfg: &TextConfig,
        vb: VarBuilder,
        kernels: &Kernels,
        opts: &DecoderOptions,
    ) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let [ln1, attn, ln2, mlp] = builders(&vb, Self::PARTS);
        Ok(Self {
            input_layernorm: RmsNorm::load(ln1, d, eps, kernels)?,
            self_attn: TextAttention::load_with(cfg, attn, kernels, opts.attention_bias)?,
            post_attention_layernorm: RmsNorm::load(ln2, d, eps, kernels)?,
            mlp: GatedMlp::load_with_bias(
                mlp,
                d,
                cfg.intermediate_size,
                d,
                cfg.hidden_act,
                opts.mlp_bias,
            )?,
        })
    }
}

/// `MistralModel`: token embeddings, decoder layers, final norm (no lm head).
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rotary: RotaryEmbedding,
    sliding_window: Option<usize>,
    /// Activation dtype (a quantized embedding dequantizes into it).
    dtype: DType,
}

impl TextModel {
    pub fn load(cfg: &TextConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        Self::load_with(cfg, vb, kernels, &DecoderOptions::default())
    }

    /// A decoder with Llama's options (biases, rope scaling); `cfg.sliding_window` None for Llama.
    pub fn load_with(
        cfg: &TextConfig,
        vb: VarBuilder,
        kernels: &Kernels,
        opts: &DecoderOptions,
    ) -> Result<Self> {
        Self::load_quantized(cfg, vb, kernels, opts, None)
    }

    /// As [`Self::load_with`]; with `quant`, every layer's linears and the token embeddings take their quantized
    /// weights from `quant` right after they are read. Loading a checkpoint, the `VarBuilder` has already
    /// quantized each weight as it was read (`crate::quant::streaming`) and `quant` hands over its blocks; on other
    /// `VarBuilder`s `quant` quantizes the layer's dense tensors, which are then dropped.
    pub fn load_quantized(
        cfg: &TextConfig,
        vb: VarBuilder,
        kernels: &Kernels,
        opts: &DecoderOptions,
        mut quant: Option<&mut dyn QuantSource>,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let mut layer = DecoderLayer::load_with(cfg, vb.pp("layers").pp(i), kernels, opts)?;
            if let Some(source) = reborrow(&mut quant) {
                let path = join_path(&vb.prefix(), &format!("layers.{i}"));
                layer.visit_params(&path, &mut QuantizeLinears { source })?;
            }
            layers.push(layer);
        }
        let table = vb
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let name = join_path(&vb.prefix(), "embed_tokens.weight");
        let embed_tokens = match quant {
            Some(source) => match source.quantize(&name, &table, Role::Embedding)? {
                Some(q) => Embedding::Quantized(q),
                None => Embedding::Dense(table),
            },
            None => Embedding::Dense(table),
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm: RmsNorm::load(vb.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps, kernels)?,
            rotary: RotaryEmbedding::with_scaling(
                cfg.rope_theta,
                cfg.head_dim,
                &opts.rope_scaling,
                vb.device(),
                kernels,
            )?,
            sliding_window: cfg.sliding_window,
            dtype: vb.dtype(),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The token embeddings `[V, D]` (an untied lm head is separate).
    pub fn embed_tokens(&self) -> &Embedding {
        &self.embed_tokens
    }

    /// An output head tied to the embeddings (sharing the matrix, quantized or not).
    pub fn tied_head(&self) -> Linear {
        match &self.embed_tokens {
            Embedding::Dense(t) => Linear::new(t.clone(), None),
            Embedding::Quantized(q) => Linear::from_quantized(q.clone(), None),
        }
    }

    /// `ids [B, L]` (u32) -> `[B, L, D]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        ids.dims2()?;
        self.embed_tokens.forward(ids, self.dtype)
    }

    /// Rope tables and mask for `new_mask` (one row per sample, 1 = real token) appended after the cache.
    /// `position_ids [B, L]` default to `generate()`'s rule: running count of real tokens minus one, and 1 on
    /// padding.
    pub fn step_context(
        &self,
        new_mask: &[Vec<u8>],
        position_ids: Option<&Tensor>,
        past: &[Vec<u8>],
        dtype: DType,
        device: &Device,
    ) -> Result<StepContext> {
        let b = new_mask.len();
        let l = new_mask.first().map_or(0, Vec::len);
        let t = past.first().map_or(0, Vec::len);
        let position_ids = match position_ids {
            Some(p) => p.to_dtype(DType::I64)?,
            None => {
                let mut pos = Vec::with_capacity(b * l);
                for (bi, row) in new_mask.iter().enumerate() {
                    let past_row = past.get(bi).map_or(&[][..], Vec::as_slice);
                    let mut count = past_row.iter().filter(|&&m| m != 0).count() as i64;
                    for &m in row {
                        if m != 0 {
                            count += 1;
                            pos.push(count - 1);
                        } else {
                            pos.push(1);
                        }
                    }
                }
                Tensor::from_vec(pos, (b, l), device)?
            }
        };
        let rope = self.rotary.tables(&position_ids, dtype)?;
        // Key j (cache index) is visible to query i = t + q iff j <= i, j > i - window and j is a real token.
        let min = mask_min_value(dtype) as f32;
        let total = t + l;
        let mut mask = vec![0f32; b * l * total];
        for bi in 0..b {
            let key_real = |j: usize| -> bool {
                if j < t {
                    past.get(bi).and_then(|r| r.get(j)).is_some_and(|&m| m != 0)
                } else {
                    new_mask[bi].get(j - t).is_some_and(|&m| m != 0)
                }
            };
            for q in 0..l {
                let i = t + q;
                let row = &mut mask[(bi * l + q) * total..(bi * l + q + 1) * total];
                for (j, m) in row.iter_mut().enumerate() {
                    let in_window = self.sliding_window.is_none_or(|w| j.saturating_add(w) > i);
                    if !(j <= i && in_window && key_real(j)) {
                        *m = min;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, l, total), device)?.to_dtype(dtype)?;
        Ok(StepContext { rope, mask })
    }

    /// Runs the decoder on `embeds [B, L, D]` and returns the final-normed hidden states. With a cache, keys and
    /// values are appended and `new_mask` is recorded.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        ctx: &StepContext,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = xs.clone();
            let h = layer.input_layernorm.forward(&xs)?;
            let h = layer.self_attn.forward(
                &h,
                &self.rotary,
                ctx,
                cache.as_deref_mut().map(|c| (c, i)),
            )?;
            xs = (residual + h)?;
            let h = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&xs)?)?;
            xs = (xs + h)?;
        }
        self.norm.forward(&xs)
    }

    /// Records the padding mask of the tokens just appended to `cache` (after [`Self::forward_embeds`]).
    pub fn commit_mask(cache: &mut KvCache, new_mask: &[Vec<u8>]) {
        if cache.mask.is_empty() {
            cache.mask = new_mask.to_vec();
        } else {
            for (row, new) in cache.mask.iter_mut().zip(new_mask) {
                row.extend_from_slice(new);
            }
        }
    }
}

impl VisitParams for TextAttention {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}

impl VisitParams for DecoderLayer {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}

impl VisitParams for TextModel {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        let name = join_path(prefix, "embed_tokens.weight");
        match &mut self.embed_tokens {
            Embedding::Dense(table) => v.tensor(&name, table)?,
            Embedding::Quantized(q) => v.quantized(&name, q)?,
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_params(&join_path(prefix, &format!("layers.{i}")), v)?;
        }
        self.norm.visit_params(&join_path(prefix, "norm"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(b: usize, l: usize, start: f32) -> Result<Tensor> {
        Tensor::arange(start, start + (b * 2 * l * 3) as f32, &Device::Cpu)?.reshape((b, 2, l, 3))
    }

    #[test]
    fn cache_capacity_leaves_at_most_a_quarter_and_a_step_unused() {
        assert_eq!(initial_capacity(1), 256);
        assert_eq!(initial_capacity(512), 512);
        assert_eq!(grown_capacity(512, 513), 768);
        assert_eq!(grown_capacity(4096, 4097), 5120);
        // Decoding one token at a time from a 300-token prompt to 20k: every capacity leaves less than a quarter
        // of it plus a step unused, and the copies on growth add up to O(n) positions.
        let (mut capacity, mut copied) = (initial_capacity(300), 0);
        for len in 301..=20_000 {
            if len > capacity {
                copied += len - 1;
                capacity = grown_capacity(capacity, len);
            }
            assert!(
                capacity >= len && capacity - len < len / 4 + KV_STEP,
                "{len}: {capacity}"
            );
        }
        assert!(copied < 5 * 20_000, "{copied}");
    }

    #[test]
    fn reserve_grows_full_layers_only_and_keeps_their_positions() -> Result<()> {
        let mut cache = KvCache::new(2);
        cache.reserve(1)?; // nothing filled yet: nothing to grow
        assert!(cache.layers.iter().all(Option::is_none));
        let prompt = kv(1, 256, 0.0)?;
        cache.append(0, &prompt, &prompt)?;
        let short = kv(1, 10, 0.0)?;
        cache.append(1, &short, &short)?;
        cache.reserve(1)?;
        let capacity = |c: &KvCache, i: usize| c.layers[i].as_ref().map(LayerKv::capacity);
        // Layer 0 was full (256 of 256): grown; layer 1 has room: left as it was.
        assert_eq!(capacity(&cache, 0), Some(grown_capacity(256, 257)));
        assert_eq!(capacity(&cache, 1), Some(256));
        let (k, v) = cache.layers[0].as_ref().unwrap().filled()?;
        assert_eq!((&k - &prompt)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        assert_eq!((&v - &prompt)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        // The reserved position is then written in place: same buffer, no second growth.
        let buffer = |c: &KvCache| -> usize {
            let (storage, _) = c.layers[0].as_ref().unwrap().k.storage_and_layout();
            match &*storage {
                candle_core::Storage::Cpu(s) => s.as_slice::<f32>().unwrap().as_ptr() as usize,
                _ => unreachable!("a CPU test"),
            }
        };
        let before = buffer(&cache);
        let new = kv(1, 1, 1.0e4)?;
        let (k, _) = cache.append(0, &new, &new)?;
        assert_eq!(buffer(&cache), before);
        assert_eq!(
            k.narrow(2, 256, 1)?.flatten_all()?.to_vec1::<f32>()?,
            new.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn cache_appends_in_place_across_growth_and_clones_stay_apart() -> Result<()> {
        let mut cache = KvCache::new(1);
        let mut want_k = kv(2, 250, 0.0)?;
        let (k, _) = cache.append(0, &want_k, &want_k)?;
        assert_eq!(k.dims(), [2, 2, 250, 3]);
        // Ten single tokens cross the first capacity (256).
        for step in 0..10 {
            let new = kv(2, 1, 1000.0 * (step + 1) as f32)?;
            let (k, v) = cache.append(0, &new, &new)?;
            want_k = Tensor::cat(&[&want_k, &new], 2)?;
            let diff = (&k - &want_k)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "step {step}");
            assert_eq!((&v - &want_k)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        }
        // A clone appends its own token without changing the original, and the other way round.
        let mut other = cache.clone();
        let a = kv(2, 1, -1.0e4)?;
        let b = kv(2, 1, -2.0e4)?;
        let (ka, _) = other.append(0, &a, &a)?;
        let (kb, _) = cache.append(0, &b, &b)?;
        let last =
            |t: &Tensor| -> Result<Vec<f32>> { t.narrow(2, 260, 1)?.flatten_all()?.to_vec1() };
        assert_eq!(last(&ka)?, a.flatten_all()?.to_vec1::<f32>()?);
        assert_eq!(last(&kb)?, b.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
