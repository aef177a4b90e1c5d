//! SigLIP pre-training of the vision tower on image-caption pairs (Zhai et al. 2023, "Sigmoid Loss for
//! Language Image Pre-Training").
//!
//! Loss, as the paper's Algorithm 1 writes it (big_vision's `siglip` gives the same value: per-image sums
//! of the pair terms, averaged over images):
//!   zimg = l2_normalize(img_emb), ztxt = l2_normalize(txt_emb)
//!   logits = exp(t') * zimg @ ztxt^T + b,     labels = 2 I - 1 (+1 on the diagonal, -1 elsewhere)
//!   loss = -sum_ij log_sigmoid(labels_ij * logits_ij) / n
//! with learnable t' (init log 10) and b (init -10), the paper's initialisation.
//!
//! One departure: pairs whose captions tokenise identically are positives of each other (`labels_ij = +1`),
//! not negatives. Web-scale batches almost never repeat a caption; synthetic ones do ("A plain red image."),
//! and counting the repeats as negatives asks one text embedding to match an image and reject its twin.
//!
//! Image side: our Idefics2 [`VisionTransformer`] at native resolution (aspect ratio kept, sides rounded to
//! whole patches), pooled over its patches (mean, max per feature, or both: [`PatchPool`]), then a linear head. A
//! parameter-free pooling rather than SigLIP's MAP head because the VLM consumes every patch output (through
//! the perceiver), not a pooled token: no pooling head is thrown away. The mean suits attributes spread over
//! the image (colour); what a few patches show (a shape's outline) is diluted by the background in a mean and
//! kept by a max.
//! Text side: the checkpoint's token embeddings (trainable copy), mean-pooled over the caption tokens, then a
//! linear head. A bag of embeddings suffices for the synthetic captions, whose content is carried by words
//! (colours, shapes, numbers, titles); it ignores word order, so relations ("left of") are not learned
//! contrastively. The text side is discarded after training; only the tower is written back.

use super::TrainError;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarBuilder;
use idefics::config::Idefics2Config;
use idefics::model::{PositionIdRule, VisionTransformer};
use idefics::nn::{Kernels, Linear};
use idefics_processor::image::NormalizeLut;
use idefics_processor::{resize, ResampleFilter, RgbImage};
use std::collections::{BTreeMap, HashMap};

/// Checkpoint-name prefix of the vision tower.
const VISION_PREFIX: &str = "model.vision_model.";

/// Initial t' (the paper: t = exp(t') = 10).
pub const INIT_T_PRIME: f64 = std::f64::consts::LN_10;
/// Initial logit bias (the paper: -10, so that the many negatives start with a small loss).
pub const INIT_BIAS: f64 = -10.0;

/// `x / ||x||` along the last dimension (a tiny epsilon keeps a zero row finite).
fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    x.broadcast_div(&norm)
}

/// `log(sigmoid(x))` from differentiable ops, stable for large |x|: `min(x, 0) - log(1 + exp(-|x|))`.
fn log_sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    let neg_part = x.minimum(0f64)?;
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    neg_part - soft
}

/// The sigmoid loss of a batch of `n` matching pairs: `img_emb [n, e]`, `txt_emb [n, e]`, scalars `t_prime`
/// and `bias` (see the module docs for the formula), with one positive per row (the diagonal).
pub fn sigmoid_loss(
    img_emb: &Tensor,
    txt_emb: &Tensor,
    t_prime: &Tensor,
    bias: &Tensor,
) -> Result<Tensor, TrainError> {
    let n = img_emb.dim(0)?;
    let positives = Tensor::eye(n, DType::F32, img_emb.device())?;
    sigmoid_loss_with_positives(img_emb, txt_emb, t_prime, bias, &positives)
}

/// Which pairs of a batch are positives: `[n, n]`, 1 where the captions' token ids are identical (always
/// on the diagonal), else 0.
pub fn identical_caption_positives(
    ids: &[Vec<u32>],
    device: &Device,
) -> Result<Tensor, TrainError> {
    let n = ids.len();
    let mut data = vec![0f32; n * n];
    for (i, a) in ids.iter().enumerate() {
        for (j, b) in ids.iter().enumerate() {
            if a == b {
                data[i * n + j] = 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(data, (n, n), device)?)
}

/// [`sigmoid_loss`] with the positives given: `positives [n, n]`, 1 for a matching image-caption pair, 0 for
/// a non-matching one.
pub fn sigmoid_loss_with_positives(
    img_emb: &Tensor,
    txt_emb: &Tensor,
    t_prime: &Tensor,
    bias: &Tensor,
    positives: &Tensor,
) -> Result<Tensor, TrainError> {
    let (n, e) = img_emb.dims2()?;
    if positives.dims() != [n, n] {
        return Err(TrainError::Invalid(format!(
            "sigmoid loss: positives {:?} must be [{n}, {n}]",
            positives.dims()
        )));
    }
    if txt_emb.dims() != [n, e] || n == 0 {
        return Err(TrainError::Invalid(format!(
            "sigmoid loss: image embeddings {:?} and text embeddings {:?} must both be [n > 0, e]",
            img_emb.dims(),
            txt_emb.dims()
        )));
    }
    let zimg = l2_normalize(&img_emb.to_dtype(DType::F32)?)?;
    let ztxt = l2_normalize(&txt_emb.to_dtype(DType::F32)?)?;
    let logits = zimg
        .matmul(&ztxt.t()?)?
        .broadcast_mul(&t_prime.exp()?)?
        .broadcast_add(bias)?;
    let labels = ((positives.to_dtype(DType::F32)? * 2.0)? - 1.0)?;
    let loss = log_sigmoid(&(labels * logits)?)?.sum_all()?.neg()? / n as f64;
    Ok(loss?)
}

/// How the tower's patch outputs are pooled into one image vector for the loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatchPool {
    /// Mean over the patches.
    #[default]
    Mean,
    /// Maximum over the patches, feature by feature.
    Max,
    /// Both, side by side (`[mean, max]`, twice the width): colour from the mean, outlines from the max.
    MeanMax,
}

impl PatchPool {
    /// Width of the pooled vector for a tower of width `d_vis`.
    pub fn width(self, d_vis: usize) -> usize {
        match self {
            PatchPool::Mean | PatchPool::Max => d_vis,
            PatchPool::MeanMax => 2 * d_vis,
        }
    }
}

/// Settings of the SigLIP stage.
#[derive(Debug, Clone)]
pub struct SiglipOptions {
    /// Width of the shared embedding space.
    pub embed_dim: usize,
    /// Images are resized so their longest side is one of these (then rounded to whole patches), taken in
    /// turn: batch k uses `longest_edges[k % len]`. Position ids are fractional buckets of the whole table
    /// (`PositionIdRule`), so a low resolution alone visits only some rows of it; the rows it never visits
    /// keep their random initialisation and reach the VLM when it runs at a higher resolution. Include the
    /// VLM's largest resolution so that every row is trained.
    pub longest_edges: Vec<usize>,
    /// Captions are cut to this many tokens.
    pub max_text_len: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub lr: f64,
    /// The learning rate of t' and b is `lr * scalar_lr_scale`. Big-batch SigLIP runs for 10^5 steps at
    /// one rate; a run of 10^3 steps moves t' by under 1 at the same rate, so t stays near its initial 10.
    pub scalar_lr_scale: f64,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Threads that share the tower's work in a step (size groups dealt to them; `siglip_parallel.rs`).
    /// 1 = the plain single-graph step.
    pub parallel_images: usize,
    /// Pooling of the patch outputs on the image side.
    pub pool: PatchPool,
    /// With a run folder ([`SiglipTrainer::set_run_dir`]): a resumable checkpoint every N steps (and always
    /// at the end).
    pub save_every: Option<u64>,
}

impl Default for SiglipOptions {
    fn default() -> Self {
        Self {
            embed_dim: 128,
            longest_edges: vec![112],
            max_text_len: 48,
            batch_size: 32,
            steps: 300,
            lr: 1e-3,
            scalar_lr_scale: 1.0,
            warmup_steps: 30,
            weight_decay: 1e-4,
            max_grad_norm: 1.0,
            seed: 0,
            parallel_images: 1,
            pool: PatchPool::Mean,
            save_every: None,
        }
    }
}

/// One image-caption pair, decoded.
#[derive(Debug, Clone)]
pub struct PairSample {
    pub image: RgbImage,
    pub text: String,
}

/// What a step reports.
#[derive(Debug, Clone, Copy)]
pub struct SiglipStep {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// exp(t') and b after the step.
    pub temperature: f64,
    pub bias: f64,
}

/// The SigLIP model: the Idefics2 tower (whose variables keep their checkpoint names), the pooling heads and the
/// text side.
pub struct SiglipModel {
    config: Idefics2Config,
    tower: VisionTransformer,
    vision_vars: BTreeMap<String, Var>,
    img_head: (Var, Var),
    text_embed: Var,
    txt_head: (Var, Var),
    t_prime: Var,
    bias: Var,
    lut: NormalizeLut,
    pool: PatchPool,
    device: Device,
}

fn linear_vars(
    out_dim: usize,
    in_dim: usize,
    seed: u64,
    name: &str,
    device: &Device,
) -> Result<(Var, Var), TrainError> {
    // A Linear's default: normal(0, 0.02) weight, zero bias (as `_init_weights`).
    let w = super::init::init_tensor(
        &format!("{name}.weight"),
        &[out_dim, in_dim],
        0.02,
        None,
        seed,
        device,
    )?;
    Ok((
        Var::from_tensor(&w)?,
        Var::zeros(out_dim, DType::F32, device)?,
    ))
}

fn head(vars: &(Var, Var)) -> Linear {
    Linear::new(vars.0.as_tensor().clone(), Some(vars.1.as_tensor().clone()))
}

impl SiglipModel {
    /// Builds the model from the tensors of an Idefics2 checkpoint (f32): the tower from `model.vision_model.*`,
    /// the text side from `model.text_model.embed_tokens.weight`; heads and (t', b) fresh.
    pub fn new(
        config: &Idefics2Config,
        tensors: &HashMap<String, Tensor>,
        opts: &SiglipOptions,
        lut: NormalizeLut,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let mut vision_vars = BTreeMap::new();
        for (name, t) in tensors {
            if name.starts_with(VISION_PREFIX) {
                let t = t.to_dtype(DType::F32)?.to_device(device)?;
                vision_vars.insert(name.clone(), Var::from_tensor(&t)?);
            }
        }
        let vb_map: HashMap<String, Tensor> = vision_vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let vb = VarBuilder::from_tensors(vb_map, DType::F32, device);
        // candle's fused kernels serve the no-gradient parts; with a variable involved, `nn::train_kernels` does.
        let kernels = Kernels::new(true);
        let tower = VisionTransformer::load(
            &config.vision_config,
            vb.pp("model").pp("vision_model"),
            &kernels,
        )
        .map_err(|e| TrainError::Invalid(format!("vision tower: {e}")))?;
        let emb_name = "model.text_model.embed_tokens.weight";
        let emb = tensors
            .get(emb_name)
            .ok_or_else(|| TrainError::Invalid(format!("the checkpoint has no {emb_name}")))?
            .to_dtype(DType::F32)?
            .to_device(device)?;
        let d_text = emb.dim(1)?;
        let d_vis = config.vision_config.hidden_size;
        let e = opts.embed_dim;
        Ok(Self {
            config: config.clone(),
            tower,
            vision_vars,
            img_head: linear_vars(
                e,
                opts.pool.width(d_vis),
                opts.seed,
                "siglip.img_head",
                device,
            )?,
            text_embed: Var::from_tensor(&emb)?,
            txt_head: linear_vars(e, d_text, opts.seed, "siglip.txt_head", device)?,
            t_prime: Var::from_tensor(&Tensor::new(INIT_T_PRIME as f32, device)?)?,
            bias: Var::from_tensor(&Tensor::new(INIT_BIAS as f32, device)?)?,
            lut,
            pool: opts.pool,
            device: device.clone(),
        })
    }

    /// Parameters with weight decay candidates (tower, heads, text embeddings), by name.
    pub fn main_params(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .vision_vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.push(("siglip.img_head.weight".into(), self.img_head.0.clone()));
        out.push(("siglip.img_head.bias".into(), self.img_head.1.clone()));
        out.push(("siglip.txt_head.weight".into(), self.txt_head.0.clone()));
        out.push(("siglip.txt_head.bias".into(), self.txt_head.1.clone()));
        out.push(("siglip.text_embed.weight".into(), self.text_embed.clone()));
        out
    }

    /// The temperature and bias scalars (never weight-decayed, as in big_vision).
    pub fn scalar_params(&self) -> Vec<(String, Var)> {
        vec![
            ("siglip.t_prime".into(), self.t_prime.clone()),
            ("siglip.logit_bias".into(), self.bias.clone()),
        ]
    }

    /// The tower's variables under their checkpoint names.
    pub fn vision_vars(&self) -> &BTreeMap<String, Var> {
        &self.vision_vars
    }

    /// Current exp(t') and b.
    pub fn temperature_and_bias(&self) -> Result<(f64, f64), TrainError> {
        let t = self.t_prime.as_tensor().to_scalar::<f32>()? as f64;
        let b = self.bias.as_tensor().to_scalar::<f32>()? as f64;
        Ok((t.exp(), b))
    }

    /// `image` resized (longest side `longest_edge`, both sides whole patches, Idefics2's bilinear filter) and
    /// normalised as the processor does: `[3, h, w]`.
    pub fn image_tensor(
        &self,
        image: &RgbImage,
        longest_edge: usize,
    ) -> Result<Tensor, TrainError> {
        let p = self.config.vision_config.patch_size;
        let (w, h) = (image.width(), image.height());
        if w == 0 || h == 0 {
            return Err(TrainError::Invalid("an image has a zero side".into()));
        }
        let scale = longest_edge as f64 / w.max(h) as f64;
        let side = |s: usize| (((s as f64 * scale / p as f64).round() as usize).max(1)) * p;
        let (tw, th) = (side(w), side(h));
        let resized = resize(image, tw, th, ResampleFilter::Bilinear)
            .map_err(|e| TrainError::Invalid(format!("resize: {e}")))?;
        let bytes = resized.as_bytes();
        let mut data = vec![0f32; 3 * th * tw];
        for (i, px) in bytes.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                data[c * th * tw + i] = self.lut.table[c][v as usize];
            }
        }
        Ok(Tensor::from_vec(data, (3, th, tw), &self.device)?)
    }

    /// Indices of the images of each size, sizes in ascending (height, width) order: images of equal size
    /// go through the tower together.
    fn size_groups(images: &[Tensor]) -> Result<Vec<Vec<usize>>, TrainError> {
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, img) in images.iter().enumerate() {
            let (_, h, w) = img.dims3()?;
            groups.entry((h, w)).or_default().push(i);
        }
        Ok(groups.into_values().collect())
    }

    /// Pooled tower outputs `[k, pool.width(d_vis)]` of the images `idx` (all of one size).
    fn pool_group(&self, images: &[Tensor], idx: &[usize]) -> Result<Tensor, TrainError> {
        let batch = Tensor::stack(
            &idx.iter()
                .filter_map(|&i| images.get(i))
                .collect::<Vec<_>>(),
            0,
        )?;
        let hidden = self.tower.forward(&batch, PositionIdRule::Hf5)?;
        Ok(match self.pool {
            PatchPool::Mean => hidden.mean(1)?,
            PatchPool::Max => hidden.max(1)?,
            PatchPool::MeanMax => Tensor::cat(&[hidden.mean(1)?, hidden.max(1)?], 1)?,
        })
    }

    /// Rows pooled group by group (`pooled[g]` holds the images `groups[g]`) put back in input order.
    fn in_input_order(&self, groups: &[&[usize]], pooled: &[Tensor]) -> Result<Tensor, TrainError> {
        let pooled = Tensor::cat(pooled, 0)?;
        let n: usize = groups.iter().map(|g| g.len()).sum();
        let mut inverse = vec![0u32; n];
        for (pos, &i) in groups.iter().flat_map(|g| g.iter()).enumerate() {
            inverse[i] = pos as u32;
        }
        let inverse = Tensor::new(inverse, &self.device)?;
        Ok(pooled.index_select(&inverse, 0)?)
    }

    /// Pooled tower outputs `[n, pool.width(d_vis)]` of every image, in input order.
    fn pool_images(&self, images: &[Tensor]) -> Result<Tensor, TrainError> {
        let groups = Self::size_groups(images)?;
        let pooled = groups
            .iter()
            .map(|idx| self.pool_group(images, idx))
            .collect::<Result<Vec<_>, _>>()?;
        let groups: Vec<&[usize]> = groups.iter().map(Vec::as_slice).collect();
        self.in_input_order(&groups, &pooled)
    }

    /// Image embeddings `[n, e]`.
    pub fn embed_images(&self, images: &[Tensor]) -> Result<Tensor, TrainError> {
        Ok(head(&self.img_head).forward(&self.pool_images(images)?)?)
    }

    /// Text embeddings `[n, e]` of token-id rows (each non-empty).
    pub fn embed_texts(&self, ids: &[Vec<u32>]) -> Result<Tensor, TrainError> {
        let n = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0);
        if t == 0 || ids.iter().any(Vec::is_empty) {
            return Err(TrainError::Invalid("a caption has no tokens".into()));
        }
        let mut flat = Vec::with_capacity(n * t);
        let mut mask = Vec::with_capacity(n * t);
        for row in ids {
            for j in 0..t {
                flat.push(row.get(j).copied().unwrap_or(0));
                mask.push(if j < row.len() { 1f32 } else { 0f32 });
            }
        }
        let flat = Tensor::from_vec(flat, n * t, &self.device)?;
        let d = self.text_embed.dim(1)?;
        let emb = self
            .text_embed
            .as_tensor()
            .index_select(&flat, 0)?
            .reshape((n, t, d))?;
        let mask = Tensor::from_vec(mask, (n, t, 1), &self.device)?;
        let counts = mask.sum(1)?;
        let pooled = emb.broadcast_mul(&mask)?.sum(1)?.broadcast_div(&counts)?;
        Ok(head(&self.txt_head).forward(&pooled)?)
    }

    /// The loss of a batch of prepared images and tokenised captions; identical captions are positives of
    /// each other (module docs).
    pub fn loss(&self, images: &[Tensor], ids: &[Vec<u32>]) -> Result<Tensor, TrainError> {
        self.loss_from_pooled(&self.pool_images(images)?, ids)
    }

    /// The loss from the pooled tower outputs `[n, pool.width(d_vis)]` (input order).
    fn loss_from_pooled(&self, pooled: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor, TrainError> {
        let zi = head(&self.img_head).forward(pooled)?;
        let zt = self.embed_texts(ids)?;
        let positives = identical_caption_positives(ids, &self.device)?;
        sigmoid_loss_with_positives(
            &zi,
            &zt,
            self.t_prime.as_tensor(),
            self.bias.as_tensor(),
            &positives,
        )
    }
}

#[path = "siglip_train.rs"]
mod train;
pub use train::{PairBatches, SiglipTask, SiglipTrainer};

#[path = "siglip_parallel.rs"]
mod parallel;

#[cfg(test)]
#[path = "siglip_tests.rs"]
mod tests;
