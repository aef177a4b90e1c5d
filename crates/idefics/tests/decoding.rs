//! Incremental decoding and batching: KV-cache steps equal the full forward, a batch equals its samples run one by
//! one, and greedy decoding with the cache reproduces transformers' `generate()` tokens.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use common::*;
use idefics::ModelInputs;

/// Prefill up to the last image token (at least 5 tokens from the end), then feed one token at a time.
#[test]
fn kv_cache_steps_equal_full_forward() {
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let model = load_model(&case);
        let t = load_st(&case.join("inputs.safetensors"));
        let full = model.forward(&case_inputs(&t, false), None).unwrap();
        let ids = &t["input_ids"];
        let mask = &t["attention_mask"];
        let (_, l) = ids.dims2().unwrap();
        let image_id = model.config().image_token_id as i64;
        let last_image = mask_rows(ids)
            .iter()
            .filter_map(|r| r.iter().rposition(|&x| x == image_id))
            .max()
            .map_or(1, |p| p + 1);
        let prefill = last_image.max(l.saturating_sub(5));
        assert!(prefill < l, "{name}: nothing left to decode");
        let mut cache = model.new_cache();
        let first = ModelInputs {
            input_ids: Some(ids.narrow(1, 0, prefill).unwrap()),
            attention_mask: Some(mask.narrow(1, 0, prefill).unwrap()),
            pixel_values: t.get("pixel_values").cloned(),
            pixel_attention_mask: t.get("pixel_attention_mask").cloned(),
            ..Default::default()
        };
        let mut pieces = vec![model.forward(&first, Some(&mut cache)).unwrap()];
        for pos in prefill..l {
            let step = ModelInputs {
                input_ids: Some(ids.narrow(1, pos, 1).unwrap()),
                attention_mask: Some(mask.narrow(1, pos, 1).unwrap()),
                ..Default::default()
            };
            pieces.push(model.forward(&step, Some(&mut cache)).unwrap());
        }
        assert_eq!(cache.seq_len(), l);
        let stepped = Tensor::cat(&pieces, 1).unwrap();
        let (diff, ref_max) = masked_logit_diff(&stepped, &full, &mask_rows(mask));
        let tol = 1e-4 * ref_max.max(1.0);
        println!("{name}: cache vs full forward max diff {diff:.3e} (tol {tol:.3e})");
        assert!(
            diff <= tol,
            "{name}: KV-cache decoding differs from the full forward by {diff:e}"
        );
    }
}

/// Each sample alone (left padding removed, its own images only) gives the batch's logits on real tokens.
#[test]
fn batch_equals_per_sample() {
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let model = load_model(&case);
        let t = load_st(&case.join("inputs.safetensors"));
        let batch = model.forward(&case_inputs(&t, false), None).unwrap();
        let rows = mask_rows(&t["attention_mask"]);
        for (b, row) in rows.iter().enumerate() {
            let start = row.iter().position(|&m| m == 1).unwrap();
            let len = row.len() - start;
            let single = ModelInputs {
                input_ids: Some(t["input_ids"].i((b..b + 1, start..)).unwrap()),
                attention_mask: None,
                position_ids: None,
                pixel_values: t.get("pixel_values").map(|p| p.i(b..b + 1).unwrap()),
                pixel_attention_mask: t
                    .get("pixel_attention_mask")
                    .map(|p| p.i(b..b + 1).unwrap()),
                inputs_embeds: None,
            };
            let alone = model.forward(&single, None).unwrap();
            let theirs = batch.i((b..b + 1, start..)).unwrap();
            let (diff, ref_max) = masked_logit_diff(&alone, &theirs, &[vec![1; len]]);
            let tol = 1e-4 * ref_max.max(1.0);
            println!("{name} sample {b}: alone vs batch max diff {diff:.3e}");
            assert!(
                diff <= tol,
                "{name} sample {b}: alone vs batched logits differ by {diff:e}"
            );
        }
    }
}

/// Greedy decoding through the incremental API (prefill, then `decode_step`) reproduces the fixture's
/// `generated_ids` (transformers `generate`, bad words 320/321 banned, eos 2/322), up to each row's eos.
#[test]
fn greedy_decoding_matches_transformers_generate() {
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let expected = load_st(&case.join("expected.safetensors"));
        let Some(generated) = expected.get("generated_ids") else {
            continue;
        };
        let model = load_model(&case);
        let t = load_st(&case.join("inputs.safetensors"));
        let (b, l) = t["input_ids"].dims2().unwrap();
        let want = mask_rows(generated);
        let new_tokens = want[0].len() - l;
        let mut cache = model.new_cache();
        let mut logits = model
            .forward_last(&case_inputs(&t, false), &mut cache)
            .unwrap();
        let mut done = vec![false; b];
        let vocab = model.config().text_config.vocab_size;
        let mut ban = vec![0f32; vocab];
        ban[320] = f32::NEG_INFINITY;
        ban[321] = f32::NEG_INFINITY;
        let ban = Tensor::from_vec(ban, (1, vocab), &Device::Cpu).unwrap();
        for step in 0..new_tokens {
            let next: Vec<u32> = logits
                .to_dtype(DType::F32)
                .unwrap()
                .broadcast_add(&ban)
                .unwrap()
                .argmax(D::Minus1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let was_done = done.clone();
            for bi in 0..b {
                if done[bi] {
                    continue;
                }
                assert_eq!(
                    next[bi] as i64,
                    want[bi][l + step],
                    "{name}: row {bi} token {step} differs from transformers generate()"
                );
                done[bi] = next[bi] == 2 || next[bi] == 322;
            }
            if done.iter().all(|&d| d) {
                break;
            }
            // Finished rows keep going with the pad token, as generate() does.
            let feed: Vec<u32> = next
                .iter()
                .zip(&was_done)
                .map(|(&n, &d)| if d { 0 } else { n })
                .collect();
            logits = model.decode_step(&feed, &mut cache).unwrap();
        }
        println!("{name}: greedy decoding matches generate()");
    }
}
