//! Greedy generation equals transformers' `generate()` token for token on every fixture checkpoint.

mod common;

use candle_core::DType;
use common::{case_inputs, cases, load_model, load_st, mask_rows};
use idefics::generate::{FinishReason, GenerationConfig, GenerationRequest, Generator};

/// The kwargs the fixture script passed to generate() (see each case's meta.json).
const MAX_NEW_TOKENS: usize = 8;
const EOS: [u32; 2] = [2, 322];

#[test]
fn greedy_generation_matches_transformers() {
    for case in cases() {
        let expected = load_st(&case.join("expected.safetensors"));
        let Some(reference) = expected.get("generated_ids") else {
            continue;
        };
        let inputs_st = load_st(&case.join("inputs.safetensors"));
        let model = load_model(&case);
        let inputs = case_inputs(&inputs_st, false);
        let mask = mask_rows(&inputs_st["attention_mask"]);
        let ids: Vec<Vec<i64>> = inputs_st["input_ids"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2()
            .unwrap();
        let prompt_ids: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(row, m)| {
                row.iter()
                    .zip(m)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&t, _)| t as u32)
                    .collect()
            })
            .collect();
        let generation_config = GenerationConfig {
            eos_token_ids: EOS.to_vec(),
            bad_words_ids: vec![vec![320], vec![321]],
            pad_token_id: Some(0),
            max_new_tokens: None,
        };
        let generator = Generator {
            model: &model,
            generation_config: &generation_config,
            extra_eos_token_ids: vec![],
            tokenizer: None,
        };
        let requests = vec![
            GenerationRequest {
                max_new_tokens: MAX_NEW_TOKENS,
                ..Default::default()
            };
            ids.len()
        ];
        let out = generator
            .generate(&inputs, &prompt_ids, &requests, |_, _| true)
            .unwrap();

        let reference: Vec<Vec<i64>> = reference.to_vec2().unwrap();
        let prompt_len = ids[0].len();
        for (row, (ours, theirs)) in out.iter().zip(&reference).enumerate() {
            let new: Vec<u32> = theirs[prompt_len..].iter().map(|&t| t as u32).collect();
            let (want, want_reason) = match new.iter().position(|t| EOS.contains(t)) {
                Some(end) => (new[..end].to_vec(), FinishReason::Stop),
                None => (new.clone(), FinishReason::Length),
            };
            assert_eq!(
                ours.token_ids,
                want,
                "{} row {row}: generated tokens differ from transformers",
                case.display()
            );
            assert_eq!(
                ours.finish_reason,
                want_reason,
                "{} row {row}",
                case.display()
            );
        }
    }
}
