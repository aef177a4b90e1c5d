//! SigLIP vision tower at native resolution (NaViT-style), as transformers' `Idefics2VisionTransformer`.
//!
//! transformers runs all images of a batch padded to the batch-max size and masks padded patches as keys.
//! Masked keys get exactly zero attention weight (`exp(finfo.min - max) == 0`), so running each image alone at
//! its valid size gives the same values for its valid patches; we do that, grouping images of equal
//! valid size into one batch. The output therefore holds valid patches only.
//!
//! Idefics3 / SmolVLM feed every patch of the padded grid (padded ones included) to their pixel shuffle, so for
//! them [`VisionTransformer::forward_grid`] runs the padded grid with transformers' key mask and position ids.

use crate::config::VisionConfig;
use crate::nn::{
    attention, join_path, mask_min_value, Kernels, LayerNorm, Linear, ParamVisitor, VisitParams,
};
use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use super::parts::{builders, visit_parts, Part};

/// How fractional patch coordinates are bucketed into the position-embedding grid (changed across transformers
/// versions: 5.x clamps, 4.55-4.57 used a ceiling division).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionIdRule {
    /// transformers 5.x: `min(f32(h) * f32(1/n), f32(1 - 1e-6))` bucketed against `f32(k/N)`, all in f32.
    #[default]
    Hf5,
    /// transformers 4.55 - 4.57 in f32: `bucket(0) = 0`, `bucket(h) = ceil(N h / n) - 1`.
    Hf4_55To4_57,
}

impl PositionIdRule {
    /// Grid row (or column) of patch `h` of a side with `n` valid patches, on a grid of side `num_per_side`.
    pub fn bucket(&self, h: usize, n: usize, num_per_side: usize) -> usize {
        match self {
            Self::Hf5 => {
                let step = 1.0f32 / n as f32;
                let x = (h as f32 * step).min((1.0f64 - 1e-6) as f32);
                // Boundaries are torch.arange(1/N, 1, 1/N) in f32, i.e. f32(k/N) for k = 1..N-1; right=True
                // bucketize counts the boundaries <= x.
                (1..num_per_side)
                    .filter(|&k| ((k as f64 / num_per_side as f64) as f32) <= x)
                    .count()
            }
            Self::Hf4_55To4_57 => {
                if h == 0 {
                    0
                } else {
                    // h >= n happens only on padded grids (Idefics3), where bucketize saturates at N - 1.
                    ((num_per_side * h).div_ceil(n) - 1).min(num_per_side.saturating_sub(1))
                }
            }
        }
    }

    /// Parses `hf5` / `5` / `hf4.55-4.57` style names (for CLI options).
    pub fn parse(s: &str) -> Option<Self> {
        match s
            .to_ascii_lowercase()
            .replace(['_', '.', ' '], "-")
            .as_str()
        {
            "hf5" | "5" | "5x" | "hf5x" | "hf-5" | "hf-5x" | "clamp" => Some(Self::Hf5),
            "hf4-55-to-4-57" | "hf4-55-4-57" | "4-55-4-57" | "4-57" | "hf4-57" | "hf4" | "4" => {
                Some(Self::Hf4_55To4_57)
            }
            _ => None,
        }
    }
}

/// Position ids of an `nb_h x nb_w` patch grid, row-major: `bucket(i; nb_h) * N + bucket(j; nb_w)`.
pub fn patch_position_ids(
    rule: PositionIdRule,
    nb_h: usize,
    nb_w: usize,
    num_per_side: usize,
) -> Vec<u32> {
    let rows: Vec<usize> = (0..nb_h)
        .map(|i| rule.bucket(i, nb_h, num_per_side))
        .collect();
    let cols: Vec<usize> = (0..nb_w)
        .map(|j| rule.bucket(j, nb_w, num_per_side))
        .collect();
    rows.iter()
        .flat_map(|r| cols.iter().map(move |c| (r * num_per_side + c) as u32))
        .collect()
}

/// Which patches of a pixel mask count as valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PatchRule {
    /// Idefics2: all pixels of the patch are valid.
    #[default]
    AllPixels,
    /// Idefics3 / SmolVLM: at least one pixel of the patch is valid.
    AnyPixel,
}

/// Position ids of a padded `valid` patch grid as transformers 5.x `Idefics3VisionEmbeddings` assigns them:
/// `nb_h` = valid patches in column 0, `nb_w` = in row 0; a valid patch `(i, j)` gets
/// `bucket(i; nb_h) * N + bucket(j; nb_w)`, an invalid one 0. Errors when a valid patch exists but row 0 or
/// column 0 has none (transformers divides by zero there).
pub fn grid_position_ids(
    rule: PositionIdRule,
    valid: &[Vec<bool>],
    num_per_side: usize,
) -> std::result::Result<Vec<u32>, String> {
    let nb_h = valid
        .iter()
        .filter(|row| row.first().copied().unwrap_or(false))
        .count();
    let nb_w = valid
        .first()
        .map_or(0, |row| row.iter().filter(|&&v| v).count());
    let any = valid.iter().any(|row| row.iter().any(|&v| v));
    if any && (nb_h == 0 || nb_w == 0) {
        return Err("its first patch row or column has no valid patch".into());
    }
    let mut ids = Vec::with_capacity(valid.len() * valid.first().map_or(0, Vec::len));
    for (i, row) in valid.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            ids.push(if v {
                (rule.bucket(i, nb_h, num_per_side) * num_per_side
                    + rule.bucket(j, nb_w, num_per_side)) as u32
            } else {
                0
            });
        }
    }
    Ok(ids)
}

/// Patch embedding (a stride = kernel conv, done as reshape + matmul) plus bucketed position embeddings.
#[derive(Debug, Clone)]
pub struct VisionEmbeddings {
    patch_embedding: Linear,
    position_embedding: Tensor,
    patch_size: usize,
    num_channels: usize,
    num_patches_per_side: usize,
}

impl VisionEmbeddings {
    pub fn load(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let n = cfg.num_patches_per_side();
        let pe = vb.pp("patch_embedding");
        // Conv weight [D, C, p, p] flattened in (channel, y, x) order matches the patch flattening below.
        let weight = pe.get((d, c, p, p), "weight")?.reshape((d, c * p * p))?;
        let bias = pe.get(d, "bias")?;
        Ok(Self {
            patch_embedding: Linear::new(weight, Some(bias)).with_stored_shape(vec![d, c, p, p]),
            position_embedding: vb.pp("position_embedding").get((n * n, d), "weight")?,
            patch_size: p,
            num_channels: c,
            num_patches_per_side: n,
        })
    }

    /// `pixels [g, C, nb_h * p, nb_w * p]` (all patches valid) -> `[g, nb_h * nb_w, D]`.
    pub fn forward(&self, pixels: &Tensor, rule: PositionIdRule) -> Result<Tensor> {
        let (g, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
        let (nb_h, nb_w) = (h / p, w / p);
        if c != self.num_channels || h % p != 0 || w % p != 0 {
            candle_core::bail!(
                "vision embeddings: pixels {:?} do not tile into {p}x{p} patches",
                pixels.dims()
            );
        }
        let patches = pixels
            .reshape((g, c, nb_h, p, nb_w, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((g, nb_h * nb_w, c * p * p))?;
        let embeds = self.patch_embedding.forward(&patches)?;
        let ids = patch_position_ids(rule, nb_h, nb_w, self.num_patches_per_side);
        let ids = Tensor::from_vec(ids, nb_h * nb_w, pixels.device())?;
        let pos = self.position_embedding.index_select(&ids, 0)?;
        embeds.broadcast_add(&pos)
    }

    /// `pixels [n, C, gh * p, gw * p]` with a per-image patch validity grid `valid[n][gh][gw]` ->
    /// `[n, gh * gw, D]`, position ids by [`grid_position_ids`].
    pub fn forward_grid(
        &self,
        pixels: &Tensor,
        valid: &[Vec<Vec<bool>>],
        rule: PositionIdRule,
    ) -> Result<Tensor> {
        let (n, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        if c != self.num_channels || h % p != 0 || w % p != 0 || valid.len() != n {
            candle_core::bail!(
                "vision embeddings: pixels {:?} do not tile into {p}x{p} patches for {} masks",
                pixels.dims(),
                valid.len()
            );
        }
        let patches = pixels
            .reshape((n, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, gh * gw, c * p * p))?;
        let embeds = self.patch_embedding.forward(&patches)?;
        let mut ids = Vec::with_capacity(n * gh * gw);
        for (k, grid) in valid.iter().enumerate() {
            if grid.len() != gh || grid.iter().any(|r| r.len() != gw) {
                candle_core::bail!("vision embeddings: patch mask of image {k} is not {gh}x{gw}");
            }
            let image_ids = grid_position_ids(rule, grid, self.num_patches_per_side)
                .map_err(|e| candle_core::Error::Msg(format!("image {k}: {e}")))?;
            ids.extend(image_ids);
        }
        let ids = Tensor::from_vec(ids, n * gh * gw, pixels.device())?;
        let pos = self
            .position_embedding
            .index_select(&ids, 0)?
            .reshape((n, gh * gw, ()))?;
        embeds + pos
    }
}

/// Multi-head self-attention with biases (non-causal).
#[derive(Debug, Clone)]
pub struct VisionAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    num_heads: usize,
    head_dim: usize,
    kernels: Kernels,
}

impl VisionAttention {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both read this list).
    const PARTS: [&'static str; 4] = ["q_proj", "k_proj", "v_proj", "out_proj"];

    fn parts_mut(&mut self) -> [Part<'_>; 4] {
        [
            Part::Linear(&mut self.q_proj),
            Part::Linear(&mut self.k_proj),
            Part::Linear(&mut self.v_proj),
            Part::Linear(&mut self.out_proj),
        ]
    }

    pub fn load(cfg: &VisionConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        let d = cfg.hidden_size;
        let [q, k, v, out] = builders(&vb, Self::PARTS);
        Ok(Self {
            q_proj: Linear::load(q, d, d, true)?,
            k_proj: Linear::load(k, d, d, true)?,
            v_proj: Linear::load(v, d, d, true)?,
            out_proj: Linear::load(out, d, d, true)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            kernels: kernels.clone(),
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_masked(xs, None)
    }

    /// With an additive key mask broadcastable to `[B, H, S, S]` (padded patches of a grid).
    pub fn forward_masked(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        let heads = |t: Tensor| {
            t.reshape((b, s, self.num_heads, self.head_dim))?
                .transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(xs)?)?;
        let k = heads(self.k_proj.forward(xs)?)?;
        let v = heads(self.v_proj.forward(xs)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = attention(&q, &k, &v, mask, scale, &self.kernels)?;
        self.out_proj.forward(&out)
    }
}

/// `fc2(act(fc1(x)))` with biases.
#[derive(Debug, Clone)]
pub struct VisionMlp {
    fc1: Linear,
    fc2: Linear,
    act: crate::nn::Activation,
}

impl VisionMlp {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both read this list).
    const PARTS: [&'static str; 2] = ["fc1", "fc2"];

    fn parts_mut(&mut self) -> [Part<'_>; 2] {
        [Part::Linear(&mut self.fc1), Part::Linear(&mut self.fc2)]
    }

    pub fn load(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let [fc1, fc2] = builders(&vb, Self::PARTS);
        Ok(Self {
            fc1: Linear::load(fc1, cfg.hidden_size, cfg.intermediate_size, true)?,
            fc2: Linear::load(fc2, cfg.intermediate_size, cfg.hidden_size, true)?,
            act: cfg.hidden_act,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(xs)?)?)
    }
}

/// Pre-LN transformer block.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: VisionAttention,
    layer_norm2: LayerNorm,
    mlp: VisionMlp,
}

impl EncoderLayer {
    /// Checkpoint names of the parts, in field order (loading and `visit_params` both read this list).
    const PARTS: [&'static str; 4] = ["layer_norm1", "self_attn", "layer_norm2", "mlp"];

    fn parts_mut(&mut self) -> [Part<'_>; 4] {
        [
            Part::Block(&mut self.layer_norm1),
            Part::Block(&mut self.self_attn),
            Part::Block(&mut self.layer_norm2),
            Part::Block(&mut self.mlp),
        ]
    }

    pub fn load(cfg: &VisionConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let [ln1, attn, ln2, mlp] = builders(&vb, Self::PARTS);
        Ok(Self {
            layer_norm1: LayerNorm::load(ln1, d, eps, kernels)?,
            self_attn: VisionAttention::load(cfg, attn, kernels)?,
            layer_norm2: LayerNorm::load(ln2, d, eps, kernels)?,
            mlp: VisionMlp::load(cfg, mlp)?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_masked(xs, None)
    }

    pub fn forward_masked(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let xs = (xs
            + self
                .self_attn
                .forward_masked(&self.layer_norm1.forward(xs)?, mask)?)?;
        &xs + self.mlp.forward(&self.layer_norm2.forward(&xs)?)?
    }
}

/// `Idefics2VisionTransformer`: embeddings, encoder layers, post layer norm.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    embeddings: VisionEmbeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl VisionTransformer {
    pub fn load(cfg: &VisionConfig, vb: VarBuilder, kernels: &Kernels) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(cfg, vb.pp("encoder.layers").pp(i), kernels))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: VisionEmbeddings::load(cfg, vb.pp("embeddings"))?,
            layers,
            post_layernorm: LayerNorm::load(
                vb.pp("post_layernorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
                kernels,
            )?,
        })
    }

    /// `pixels [g, C, nb_h * p, nb_w * p]`, every patch valid -> last hidden state `[g, nb_h * nb_w, D]`.
    pub fn forward(&self, pixels: &Tensor, rule: PositionIdRule) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(pixels, rule)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        self.post_layernorm.forward(&xs)
    }

    /// The whole padded grid, as transformers runs Idefics3 / SmolVLM: `pixels [n, C, gh * p, gw * p]`,
    /// `valid[n][gh][gw]` -> `[n, gh * gw, D]` for every patch. Invalid patches are masked as keys (finfo.min)
    /// but still computed as queries, since the pixel shuffle consumes them.
    pub fn forward_grid(
        &self,
        pixels: &Tensor,
        valid: &[Vec<Vec<bool>>],
        rule: PositionIdRule,
    ) -> Result<Tensor> {
        let mut xs = self.embeddings.forward_grid(pixels, valid, rule)?;
        let mask = if valid.iter().flatten().flatten().all(|&v| v) {
            // transformers adds a mask of zeros here: numerically the same as none.
            None
        } else {
            let dtype = xs.dtype();
            let min = mask_min_value(dtype) as f32;
            let keys: Vec<f32> = valid
                .iter()
                .flatten()
                .flatten()
                .map(|&v| if v { 0.0 } else { min })
                .collect();
            let s = xs.dim(1)?;
            Some(Tensor::from_vec(keys, (valid.len(), 1, 1, s), xs.device())?.to_dtype(dtype)?)
        };
        for layer in &self.layers {
            xs = layer.forward_masked(&xs, mask.as_ref())?;
        }
        self.post_layernorm.forward(&xs)
    }
}

/// Which patches of a pixel mask are valid: a patch is valid iff all its `p*p` pixels are (trailing partial
/// patches are dropped). `mask [n, H, W]` of any numeric dtype -> `[n][H/p][W/p]`.
pub fn patch_valid_mask(mask: &Tensor, patch: usize) -> Result<Vec<Vec<Vec<bool>>>> {
    patch_valid_mask_with(mask, patch, PatchRule::AllPixels)
}

/// [`patch_valid_mask`] under either family's rule: the sum of a patch's mask values equals `p*p`
/// ([`PatchRule::AllPixels`]) or is positive ([`PatchRule::AnyPixel`]).
pub fn patch_valid_mask_with(
    mask: &Tensor,
    patch: usize,
    rule: PatchRule,
) -> Result<Vec<Vec<Vec<bool>>>> {
    let (n, h, w) = mask.dims3()?;
    let (gh, gw) = (h / patch, w / patch);
    if gh == 0 || gw == 0 {
        return Ok(vec![vec![vec![false; gw]; gh]; n]);
    }
    let m = mask
        .narrow(1, 0, gh * patch)?
        .narrow(2, 0, gw * patch)?
        .to_dtype(candle_core::DType::F32)?
        .reshape((n, gh, patch, gw, patch))?
        .sum(D::Minus1)?
        .sum(2)?;
    let full = (patch * patch) as f32;
    Ok(m.to_vec3::<f32>()?
        .into_iter()
        .map(|img| {
            img.into_iter()
                .map(|row| {
                    row.into_iter()
                        .map(|s| match rule {
                            PatchRule::AllPixels => s == full,
                            PatchRule::AnyPixel => s > 0.0,
                        })
                        .collect()
                })
                .collect()
        })
        .collect())
}

impl VisitParams for VisionEmbeddings {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        v.linear(
            &join_path(prefix, "patch_embedding"),
            &mut self.patch_embedding,
        )?;
        v.tensor(
            &join_path(prefix, "position_embedding.weight"),
            &mut self.position_embedding,
        )
    }
}

impl VisitParams for VisionAttention {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}

impl VisitParams for VisionMlp {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}

impl VisitParams for EncoderLayer {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        visit_parts(prefix, v, Self::PARTS, self.parts_mut())
    }
}

impl VisitParams for VisionTransformer {
    fn visit_params(&mut self, prefix: &str, v: &mut dyn ParamVisitor) -> Result<()> {
        self.embeddings
            .visit_params(&join_path(prefix, "embeddings"), v)?;
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit_params(&join_path(prefix, &format!("encoder.layers.{i}")), v)?;
        }
        self.post_layernorm
            .visit_params(&join_path(prefix, "post_layernorm"), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf4_55_to_4_57_rule_matches_spec_examples() {
        let r = PositionIdRule::Hf4_55To4_57;
        let side = |n: usize| (0..n).map(|h| r.bucket(h, n, 70)).collect::<Vec<_>>();
        let s35 = side(35);
        assert_eq!(&s35[..5], &[0, 1, 3, 5, 7]);
        assert_eq!(*s35.last().unwrap(), 67);
        assert_eq!(&side(27)[..8], &[0, 2, 5, 7, 10, 12, 15, 18]);
        // A full side: rows 0 and 1 share id 0, 69 is never used.
        let full = side(70);
        assert_eq!(&full[..3], &[0, 0, 1]);
        assert_eq!(*full.last().unwrap(), 68);
    }

    #[test]
    fn hf5_rule_is_floor_except_listed_boundary_cases() {
        let r = PositionIdRule::Hf5;
        let exceptions: &[(usize, &[usize])] = &[
            (25, &[5, 10, 15, 20]),
            (49, &[7, 14, 28, 35]),
            (50, &[5, 10, 15, 20, 30, 40]),
            (55, &[11, 22, 33, 44]),
        ];
        for n in 1..=70 {
            for h in 0..n {
                let floor = 70 * h / n;
                let exc = exceptions
                    .iter()
                    .any(|(en, hs)| *en == n && hs.contains(&h));
                let want = if exc { floor - 1 } else { floor };
                assert_eq!(r.bucket(h, n, 70), want, "n={n} h={h}");
            }
        }
        assert_eq!(
            (0..70).map(|h| r.bucket(h, 70, 70)).collect::<Vec<_>>(),
            (0..70).collect::<Vec<_>>()
        );
        // No exceptions on the grids of other checkpoints.
        for big_n in [24usize, 26, 27, 32] {
            for n in 1..=big_n {
                for h in 0..n {
                    assert_eq!(
                        r.bucket(h, n, big_n),
                        big_n * h / n,
                        "N={big_n} n={n} h={h}"
                    );
                }
            }
        }
    }

    #[test]
    fn position_ids_are_row_major_on_the_grid() {
        let ids = patch_position_ids(PositionIdRule::Hf5, 2, 3, 4);
        // rows 0,2 ; cols 0,1,2 (floor(4*j/3))
        assert_eq!(ids, vec![0, 1, 2, 8, 9, 10]);
    }

    #[test]
    fn grid_position_ids_follow_the_valid_rectangle_and_zero_the_rest() {
        // 3x4 grid, valid 2x3 top-left: nb_h = 2, nb_w = 3 on an N = 4 table.
        let valid: Vec<Vec<bool>> = (0..3)
            .map(|i| (0..4).map(|j| i < 2 && j < 3).collect())
            .collect();
        let ids = grid_position_ids(PositionIdRule::Hf5, &valid, 4).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 0, 8, 9, 10, 0, 0, 0, 0, 0]);
        // All padding (SmolVLM's kept padding image): every id 0.
        let none = vec![vec![false; 2]; 2];
        assert_eq!(
            grid_position_ids(PositionIdRule::Hf5, &none, 4).unwrap(),
            vec![0; 4]
        );
        // A valid patch while column 0 has none: transformers divides by zero; refused.
        let odd = vec![vec![false, true], vec![false, false]];
        assert!(grid_position_ids(PositionIdRule::Hf5, &odd, 4).is_err());
    }

    #[test]
    fn any_pixel_rule_counts_partial_patches() {
        // 1 image 6x6, patch 4 (trailing 2 px dropped from the grid), valid pixels: rows 0..5, cols 0..3.
        let mut m = vec![0f32; 36];
        for y in 0..5 {
            for x in 0..3 {
                m[y * 6 + x] = 1.0;
            }
        }
        let mask = Tensor::from_vec(m, (1, 6, 6), &candle_core::Device::Cpu).unwrap();
        let all = patch_valid_mask_with(&mask, 4, PatchRule::AllPixels).unwrap();
        let any = patch_valid_mask_with(&mask, 4, PatchRule::AnyPixel).unwrap();
        assert_eq!(all, vec![vec![vec![false]]]);
        assert_eq!(any, vec![vec![vec![true]]]);
        let mask =
            Tensor::zeros((1, 8, 8), candle_core::DType::U8, &candle_core::Device::Cpu).unwrap();
        let any = patch_valid_mask_with(&mask, 4, PatchRule::AnyPixel).unwrap();
        assert_eq!(any, vec![vec![vec![false; 2]; 2]]);
    }

    #[test]
    fn rule_names_parse() {
        assert_eq!(PositionIdRule::parse("hf5"), Some(PositionIdRule::Hf5));
        assert_eq!(
            PositionIdRule::parse("hf4.57"),
            Some(PositionIdRule::Hf4_55To4_57)
        );
        assert_eq!(
            PositionIdRule::parse("hf4_55_to_4_57"),
            Some(PositionIdRule::Hf4_55To4_57)
        );
        assert_eq!(PositionIdRule::parse("arange"), None);
    }
}
