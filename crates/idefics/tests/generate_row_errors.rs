//! One row's failure inside the decoding loop ends that row only: the other rows of the batch finish with exactly
//! the tokens and streamed text they produce alone, each delta sent once.
//!
//! The model is a stand-in whose next-token logits depend on the row's last token only (as a real model's
//! depend on the row's own tokens only), so "alone" and "in a batch" must agree exactly. Its logits are all NaN
//! after one chosen token: the row that produces it fails with a sampling error mid-answer.

use candle_core::{Device, Tensor};
use idefics::generate::{GenerationConfig, GenerationRequest, Generator, SamplingParams};
use idefics::model::{DecodeModel, KvCache, ModelInputs};
use idefics::Result;
use tokenizers::Tokenizer;

const VOCAB: usize = 300;
/// Token ids used, in the tokenizer's ordinary vocabulary (no special tokens).
const BASE: u32 = 200;
/// After this token the model's logits are NaN: nothing can be sampled.
const POISON: u32 = BASE + 22;

/// Greedy next token of the stand-in: `BASE + (t * 7 + 3) % 50` for last token `BASE + t`.
fn next_of(last: u32) -> u32 {
    BASE + ((last - BASE) * 7 + 3) % 50
}

struct StandIn;

impl StandIn {
    fn logits(&self, last: &[u32]) -> Result<Tensor> {
        let mut out = vec![0f32; last.len() * VOCAB];
        for (row, &t) in last.iter().enumerate() {
            let scores = &mut out[row * VOCAB..(row + 1) * VOCAB];
            if t == POISON {
                scores.fill(f32::NAN);
            } else if t >= BASE {
                scores[next_of(t) as usize] = 10.0;
            }
        }
        Ok(Tensor::from_vec(out, (last.len(), VOCAB), &Device::Cpu)?)
    }
}

impl DecodeModel for StandIn {
    fn new_cache(&self) -> KvCache {
        KvCache::new(0)
    }
    fn forward_last(&self, inputs: &ModelInputs, _cache: &mut KvCache) -> Result<Tensor> {
        let ids: Vec<Vec<u32>> = inputs.input_ids.as_ref().unwrap().to_vec2()?;
        let last: Vec<u32> = ids.iter().map(|r| *r.last().unwrap()).collect();
        self.logits(&last)
    }
    fn decode_step(&self, tokens: &[u32], _cache: &mut KvCache) -> Result<Tensor> {
        self.logits(tokens)
    }
}

fn tokenizer() -> Tokenizer {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/e2e/tiny-chat/tokenizer.json");
    Tokenizer::from_file(path).unwrap()
}

/// Rows are single-token prompts (no padding needed).
fn run(
    prompts: &[u32],
    requests: &[GenerationRequest],
) -> (Vec<idefics::generate::RowResult>, Vec<Vec<String>>) {
    let tok = tokenizer();
    let config = GenerationConfig::default();
    let generator = Generator {
        model: &StandIn,
        generation_config: &config,
        extra_eos_token_ids: Vec::new(),
        tokenizer: Some(&tok),
    };
    let ids = Tensor::from_vec(prompts.to_vec(), (prompts.len(), 1), &Device::Cpu).unwrap();
    let inputs = ModelInputs {
        input_ids: Some(ids),
        ..Default::default()
    };
    let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|&p| vec![p]).collect();
    let mut deltas = vec![Vec::new(); prompts.len()];
    let rows = generator
        .generate_rows(&inputs, &prompt_ids, requests, |row, text| {
            deltas[row].push(text.to_string());
            true
        })
        .unwrap();
    (rows, deltas)
}

fn greedy(max_new_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        max_new_tokens,
        ..Default::default()
    }
}

#[test]
fn a_row_failing_mid_answer_fails_alone() {
    // Row 1 reaches POISON after two tokens (BASE+2 -> BASE+17 -> BASE+22); rows 0 and 2 never do.
    let prompts = [BASE + 1, BASE + 2, BASE + 5];
    let requests = [greedy(6), greedy(6), greedy(6)];
    let (batch, batch_deltas) = run(&prompts, &requests);

    let failed = batch[1].as_ref().unwrap_err().to_string();
    assert!(failed.contains("sampling"), "{failed}");
    // What the failing row streamed before failing stays as sent, once: its two tokens.
    let (alone_1, alone_deltas_1) = run(&prompts[1..2], &requests[1..2]);
    assert!(alone_1[0].is_err());
    assert_eq!(batch_deltas[1], alone_deltas_1[0]);
    assert_eq!(batch_deltas[1].len(), 2);

    for row in [0, 2] {
        let (alone, alone_deltas) = run(&prompts[row..row + 1], &requests[row..row + 1]);
        let alone = alone[0].as_ref().unwrap();
        let in_batch = batch[row].as_ref().unwrap();
        assert_eq!(in_batch.token_ids, alone.token_ids, "row {row}");
        assert_eq!(in_batch.token_ids.len(), 6, "row {row}");
        assert_eq!(in_batch.text, alone.text, "row {row}");
        // Streamed exactly as alone: the same deltas, in order, none repeated, adding up to the answer.
        assert_eq!(batch_deltas[row], alone_deltas[0], "row {row}");
        assert_eq!(batch_deltas[row].concat(), in_batch.text, "row {row}");
    }
}

#[test]
fn a_row_with_invalid_sampling_parameters_fails_alone() {
    let prompts = [BASE + 1, BASE + 5];
    let bad = GenerationRequest {
        max_new_tokens: 4,
        sampling: SamplingParams {
            temperature: Some(f32::NAN),
            ..Default::default()
        },
        ..Default::default()
    };
    let (batch, deltas) = run(&prompts, &[bad, greedy(4)]);
    assert!(batch[0].is_err());
    assert!(
        deltas[0].is_empty(),
        "the failed row streamed {:?}",
        deltas[0]
    );
    let (alone, _) = run(&prompts[1..], &[greedy(4)]);
    assert_eq!(
        batch[1].as_ref().unwrap().token_ids,
        alone[0].as_ref().unwrap().token_ids
    );
    // `generate` (all-or-nothing) still reports the row's error.
    let tok = tokenizer();
    let config = GenerationConfig::default();
    let generator = Generator {
        model: &StandIn,
        generation_config: &config,
        extra_eos_token_ids: Vec::new(),
        tokenizer: Some(&tok),
    };
    let inputs = ModelInputs {
        input_ids: Some(Tensor::new(&[[BASE + 1]], &Device::Cpu).unwrap()),
        ..Default::default()
    };
    let bad = GenerationRequest {
        sampling: SamplingParams {
            temperature: Some(-1.0),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(generator
        .generate(&inputs, &[vec![BASE + 1]], &[bad], |_, _| true)
        .is_err());
}
