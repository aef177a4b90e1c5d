//! Input checks and the image-token scatter shared by the model families' forward passes.

use super::idefics2::ModelInputs;
use super::text::KvCache;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// The checked text side of one forward call.
#[derive(Debug)]
pub struct StepInputs {
    pub batch: usize,
    /// `[B, L]` new token ids.
    pub ids: Tensor,
    /// The ids on the host (for the image-token scatter).
    pub ids_host: Vec<Vec<i64>>,
    /// Padding mask of the new tokens, one row per sample (1 = real).
    pub new_mask: Vec<Vec<u8>>,
    /// Padding mask of the cached tokens (empty rows without a cache).
    pub past: Vec<Vec<u8>>,
}

impl StepInputs {
    /// Validates shapes, token ids against `vocab`, and the batch against the cache.
    pub fn check(inputs: &ModelInputs, cache: Option<&KvCache>, vocab: usize) -> Result<Self> {
        let ids = inputs
            .input_ids
            .as_ref()
            .ok_or_else(|| Error::Input("input_ids are required".into()))?;
        let (b, l) = ids
            .dims2()
            .map_err(|_| Error::Input(format!("input_ids must be [B, L], got {:?}", ids.dims())))?;
        if b == 0 || l == 0 {
            return Err(Error::Input(format!(
                "input_ids is empty (shape [{b}, {l}])"
            )));
        }
        let ids_host: Vec<Vec<i64>> = ids.to_dtype(DType::I64)?.to_vec2()?;
        let vocab = vocab as i64;
        for row in &ids_host {
            if let Some(bad) = row.iter().find(|&&t| t < 0 || t >= vocab) {
                return Err(Error::Input(format!(
                    "input_ids contains token id {bad}, outside the vocabulary of {vocab}"
                )));
            }
        }
        let new_mask: Vec<Vec<u8>> = match &inputs.attention_mask {
            Some(mask) => {
                if mask.dims() != [b, l] {
                    return Err(Error::Input(format!(
                        "attention_mask has shape {:?}, expected [{b}, {l}] like input_ids (new tokens only)",
                        mask.dims()
                    )));
                }
                mask.to_dtype(DType::I64)?
                    .to_vec2::<i64>()?
                    .into_iter()
                    .map(|r| r.into_iter().map(|v| u8::from(v != 0)).collect())
                    .collect()
            }
            None => vec![vec![1u8; l]; b],
        };
        if let Some(p) = &inputs.position_ids {
            if p.dims() != [b, l] {
                return Err(Error::Input(format!(
                    "position_ids has shape {:?}, expected [{b}, {l}]",
                    p.dims()
                )));
            }
        }
        let past: Vec<Vec<u8>> = match cache {
            Some(c) if !c.is_empty() => {
                if c.batch_size() != b {
                    return Err(Error::Input(format!(
                        "batch size {b} does not match the cache's batch size {}",
                        c.batch_size()
                    )));
                }
                c.attention_mask().to_vec()
            }
            _ => vec![Vec::new(); b],
        };
        Ok(Self {
            batch: b,
            ids: ids.clone(),
            ids_host,
            new_mask,
            past,
        })
    }
}

/// Runs one single-token step `step(cache)` on the CPU: on a compute thread (`on_compute_threads`: a step is
/// hundreds of short parallel ops), after growing the cache here, on the caller's thread, which also ran the
/// prefill (grown on a worker, the cache's buffers came from that worker's malloc arena, apart from the memory
/// the prefill freed, and peak RSS rose).
pub fn on_compute_threads_with_room<R: Send>(
    cache: &mut KvCache,
    step: impl FnOnce(&mut KvCache) -> Result<R> + Send,
) -> Result<R> {
    cache.reserve(1)?;
    crate::nn::cpu_kernels::on_compute_threads(|| step(cache))
}

/// The inputs of one decoding step: `tokens` (one per row, all real) after a prefill of the same batch.
pub fn decode_inputs(tokens: &[u32], cache: &KvCache, device: &Device) -> Result<ModelInputs> {
    if cache.is_empty() || tokens.len() != cache.batch_size() {
        return Err(Error::Input(format!(
            "decode_step got {} tokens for a cache of batch size {} (prefill first)",
            tokens.len(),
            cache.batch_size()
        )));
    }
    let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), device)?;
    Ok(ModelInputs {
        input_ids: Some(ids),
        ..Default::default()
    })
}

/// Replaces the embeddings of `image_token` positions, row-major over the batch, with the feature rows in
/// order (transformers' `masked_scatter`). One `index_select` over `[text rows; feature rows]`, so that it is
/// differentiable for both.
pub fn scatter_image_rows(
    embeds: &Tensor,
    ids: &[Vec<i64>],
    features: &Tensor,
    image_token: u32,
    tokens_per_image: usize,
) -> Result<Tensor> {
    let (b, l, d) = embeds.dims3()?;
    let feat_rows = features.flatten_to(features.rank().saturating_sub(2))?;
    let n_feat = feat_rows.dim(0)?;
    let image_token = image_token as i64;
    let n_tokens = ids.iter().flatten().filter(|&&t| t == image_token).count();
    if n_tokens != n_feat {
        return Err(Error::Input(format!(
            "the prompt has {n_tokens} <image> tokens but the images give {n_feat} feature rows \
             ({tokens_per_image} per image); each image needs exactly {tokens_per_image} <image> tokens"
        )));
    }
    let mut next = 0u32;
    let index: Vec<u32> = ids
        .iter()
        .flatten()
        .enumerate()
        .map(|(pos, &t)| {
            if t == image_token {
                next += 1;
                (b * l) as u32 + next - 1
            } else {
                pos as u32
            }
        })
        .collect();
    let index = Tensor::from_vec(index, b * l, embeds.device())?;
    let table = Tensor::cat(
        &[
            &embeds.reshape((b * l, d))?,
            &feat_rows.to_dtype(embeds.dtype())?,
        ],
        0,
    )?;
    Ok(table.index_select(&index, 0)?.reshape((b, l, d))?)
}
