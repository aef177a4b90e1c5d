//! The decoding loop: prefill once (images included), then one token per row per step from the KV cache.

use super::{GenerationConfig, IncrementalDecoder, Sampler, SamplingParams, StopStrings};
use crate::error::{Error, Result};
use crate::model::{DecodeModel, KvCache, ModelInputs};
use candle_core::{DType, Tensor};
use tokenizers::Tokenizer;

/// What one row of a batch asks for.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends the answer when it appears (across token boundaries); it is trimmed from the answer.
    pub stop_strings: Vec<String>,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
        }
    }
}

/// Why a row stopped, with OpenAI's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
    /// The caller cancelled the row (a client went away).
    Cancelled,
}

/// One row's result.
#[derive(Debug, Clone)]
pub struct GeneratedSequence {
    /// New tokens, without the end-of-sequence token.
    pub token_ids: Vec<u32>,
    /// Decoded answer (special tokens skipped, cut before a stop string); empty without a tokenizer.
    pub text: String,
    pub finish_reason: FinishReason,
}

/// Everything the loop needs besides the model inputs.
pub struct Generator<'a> {
    /// Any family (`&Idefics2ForConditionalGeneration`, `&Idefics3ForConditionalGeneration`, `&VlmModel`).
    pub model: &'a dyn DecodeModel,
    pub generation_config: &'a GenerationConfig,
    /// Token ids that end a row, in addition to the generation config's (e.g. `<end_of_utterance>`).
    pub extra_eos_token_ids: Vec<u32>,
    /// Needed for text, streaming and stop strings; token-only generation without it.
    pub tokenizer: Option<&'a Tokenizer>,
}

/// One row's outcome in [`Generator::generate_rows`]: its sequence, or the error that ended that row alone.
pub type RowResult = std::result::Result<GeneratedSequence, Error>;

impl Generator<'_> {
    /// Generates for a left-padded batch. `prompt_ids[row]` are the row's real prompt tokens (for the repetition
    /// penalty). `on_delta(row, text)` receives streamed text; returning `false` cancels that row. Any row's
    /// error is the result (see [`Generator::generate_rows`] to keep the other rows).
    pub fn generate(
        &self,
        inputs: &ModelInputs,
        prompt_ids: &[Vec<u32>],
        requests: &[GenerationRequest],
        on_delta: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<GeneratedSequence>> {
        self.generate_rows(inputs, prompt_ids, requests, on_delta)?
            .into_iter()
            .collect()
    }

    /// [`Generator::generate`], with per-row errors: a row's own failure (its sampling parameters, a sampling
    /// error on its logits, decoding its text) ends that row only, with the text it already streamed left as it
    /// is. The other rows go on exactly as before: the failed row is fed the pad token like a finished row, and
    /// a row's logits depend on its own tokens only. Errors of the model itself fail the whole batch (`Err`).
    pub fn generate_rows(
        &self,
        inputs: &ModelInputs,
        prompt_ids: &[Vec<u32>],
        requests: &[GenerationRequest],
        mut on_delta: impl FnMut(usize, &str) -> bool,
    ) -> Result<Vec<RowResult>> {
        let batch = prompt_ids.len();
        if requests.len() != batch {
            return Err(Error::Input(format!(
                "{} generation requests for a batch of {batch} prompts",
                requests.len()
            )));
        }
        let mut eos: Vec<u32> = self.generation_config.eos_token_ids.clone();
        eos.extend(&self.extra_eos_token_ids);
        let mut rows = Vec::with_capacity(batch);
        for (prompt, request) in prompt_ids.iter().zip(requests) {
            let (sampler, error) = match Sampler::new(request.sampling.clone()) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(Error::Input(e.to_string()))),
            };
            rows.push(RowState {
                history: prompt.clone(),
                new_tokens: Vec::new(),
                sampler,
                stops: StopStrings::new(request.stop_strings.iter().cloned()),
                decoder: self.tokenizer.map(IncrementalDecoder::new),
                finished: None,
                error,
                max_new_tokens: request.max_new_tokens,
            });
        }
        for (i, row) in rows.iter_mut().enumerate() {
            if row.max_new_tokens == 0 && row.error.is_none() {
                row.finished = Some(FinishReason::Length);
                let _ = on_delta(i, "");
            }
        }
        if rows.iter().all(RowState::done) {
            return Ok(rows.into_iter().map(RowState::into_result).collect());
        }

        let mut cache: KvCache = self.model.new_cache();
        let mut logits = self.model.forward_last(inputs, &mut cache)?;
        let pad = self.generation_config.pad_token_id.unwrap_or(0);
        loop {
            let scores: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
            let mut next = vec![pad; batch];
            for (i, row) in rows.iter_mut().enumerate() {
                if row.done() {
                    continue;
                }
                let banned = self.generation_config.banned_after(&row.history);
                match row.step(i, &scores[i], &banned, &eos, &mut on_delta) {
                    Ok(token) => next[i] = token,
                    // This row ends here; it is fed the pad token from now on, like a finished row.
                    Err(e) => row.error = Some(e),
                }
            }
            if rows.iter().all(RowState::done) {
                break;
            }
            logits = self.model.decode_step(&next, &mut cache)?;
        }
        Ok(rows.into_iter().map(RowState::into_result).collect())
    }
}

struct RowState<'a> {
    history: Vec<u32>,
    new_tokens: Vec<u32>,
    /// `None` when the row's sampling parameters were refused (then `error` says why).
    sampler: Option<Sampler>,
    stops: StopStrings,
    decoder: Option<IncrementalDecoder<'a>>,
    finished: Option<FinishReason>,
    /// The error that ended this row (and only this row).
    error: Option<Error>,
    max_new_tokens: usize,
}

impl RowState<'_> {
    fn done(&self) -> bool {
        self.finished.is_some() || self.error.is_some()
    }

    /// Picks row `i`'s next token from its logits and streams its text; returns the token to feed back.
    fn step(
        &mut self,
        i: usize,
        scores: &[f32],
        banned: &[u32],
        eos: &[u32],
        on_delta: &mut impl FnMut(usize, &str) -> bool,
    ) -> Result<u32> {
        let sampler = self
            .sampler
            .as_mut()
            .ok_or_else(|| Error::Input(format!("row {i} has no sampler")))?;
        let token = sampler
            .next_token(scores, &self.history, banned)
            .map_err(|e| Error::Input(format!("sampling row {i}: {e}")))?;
        self.history.push(token);
        if eos.contains(&token) {
            self.finished = Some(FinishReason::Stop);
            let tail = self.flush()?;
            if !on_delta(i, &tail) {
                self.finished = Some(FinishReason::Cancelled);
            }
            return Ok(token);
        }
        self.new_tokens.push(token);
        let delta = match self.decoder.as_mut() {
            Some(decoder) => decoder
                .push(token)
                .map_err(|e| Error::Input(format!("decoding: {e}")))?,
            None => String::new(),
        };
        let (visible, stopped) = self.stops.push(&delta);
        if stopped {
            self.finished = Some(FinishReason::Stop);
        } else if self.new_tokens.len() >= self.max_new_tokens {
            self.finished = Some(FinishReason::Length);
        }
        let mut shown = visible;
        if self.finished == Some(FinishReason::Length) {
            shown.push_str(&self.flush()?);
        }
        if !on_delta(i, &shown) {
            self.finished = Some(FinishReason::Cancelled);
        }
        Ok(token)
    }

    /// The row ended without a stop string: release the text held back by the decoder and the stop matcher.
    fn flush(&mut self) -> Result<String> {
        let held = match self.decoder.as_mut() {
            Some(decoder) => decoder
                .finish()
                .map_err(|e| Error::Input(format!("decoding: {e}")))?,
            None => String::new(),
        };
        let (mut visible, _) = self.stops.push(&held);
        visible.push_str(&self.stops.finish());
        Ok(visible)
    }

    fn into_result(self) -> RowResult {
        if let Some(e) = self.error {
            return Err(e);
        }
        Ok(GeneratedSequence {
            token_ids: self.new_tokens,
            text: self.stops.text().to_string(),
            finish_reason: self.finished.unwrap_or(FinishReason::Length),
        })
    }
}

/// `[B, L]` u32 tensor of left-padded rows, and the matching attention mask.
pub fn left_padded_batch(
    rows: &[Vec<u32>],
    pad: u32,
    device: &candle_core::Device,
) -> Result<(Tensor, Tensor)> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let padding = width - row.len();
        ids.extend(std::iter::repeat_n(pad, padding).chain(row.iter().copied()));
        mask.extend(std::iter::repeat_n(0u32, padding).chain(std::iter::repeat_n(1u32, row.len())));
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), width), device)?,
        Tensor::from_vec(mask, (rows.len(), width), device)?,
    ))
}
