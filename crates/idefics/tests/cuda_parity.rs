//! The CUDA build (`--features cuda`) against transformers 5.24 on the committed Idefics2 and Idefics3 / SmolVLM
//! fixtures (tests/fixtures/idefics2, tests/fixtures/idefics3): the model loaded on `cuda:0`, logits on real tokens
//! within the CPU parity tests' tolerance (1e-4 * max(1, max|ref|)), and greedy generation with the KV cache token
//! for token. Compiled only with the `cuda` feature and run on a GPU machine (tools/cuda/run-on-gpu.sh); the
//! fixtures are found under `$IDEFICS_FIXTURES` when set (a bundle carried to another machine), else in this
//! checkout.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use idefics::generate::{FinishReason, GenerationConfig, GenerationRequest, Generator};
use idefics::model::VlmModel;
use idefics::{LoadOptions, ModelInputs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The kwargs the fixture scripts passed to generate() (each case's meta.json).
const MAX_NEW_TOKENS: usize = 8;
const EOS: [u32; 2] = [2, 322];

fn fixtures_root() -> PathBuf {
    match std::env::var_os("IDEFICS_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"),
    }
}

fn gpu() -> Device {
    Device::new_cuda(0).unwrap_or_else(|e| panic!("cuda:0 is needed for these tests: {e}"))
}

/// `(name, case dir, input-set suffix)` for every `inputs*.safetensors` of every case of both families.
fn input_sets() -> Vec<(String, PathBuf, String)> {
    let mut out = Vec::new();
    for family in ["idefics2", "idefics3"] {
        let root = fixtures_root().join(family);
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("model/config.json").exists())
            .collect();
        cases.sort();
        for case in cases {
            let mut sets: Vec<String> = std::fs::read_dir(&case)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_prefix("inputs")
                        .and_then(|s| s.strip_suffix(".safetensors"))
                        .map(str::to_string)
                })
                .collect();
            sets.sort();
            for set in sets {
                let name = format!(
                    "{family}/{}{set}",
                    case.file_name().unwrap().to_string_lossy()
                );
                out.push((name, case.clone(), set));
            }
        }
    }
    // 4 Idefics2 cases and at least 4 Idefics3 input sets are committed.
    assert!(out.len() >= 8, "expected fixture input sets, found {out:?}");
    out
}

fn load_st(path: &Path, device: &Device) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, device)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn inputs_on(t: &HashMap<String, Tensor>) -> ModelInputs {
    ModelInputs {
        input_ids: t.get("input_ids").cloned(),
        attention_mask: t.get("attention_mask").cloned(),
        position_ids: None,
        pixel_values: t.get("pixel_values").cloned(),
        pixel_attention_mask: t.get("pixel_attention_mask").cloned(),
        inputs_embeds: None,
    }
}

fn load_model(case: &Path, device: &Device) -> VlmModel {
    let opts = LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    };
    VlmModel::load(&case.join("model"), &opts).unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

fn mask_rows(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_dtype(DType::I64).unwrap().to_vec2().unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    let t = t.to_dtype(DType::F32).unwrap().abs().unwrap();
    t.flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Max |a - b| over rows of `[B, L, V]` logits where `mask[b][l] == 1`, and max |b| there (both on the CPU).
fn masked_logit_diff(ours: &Tensor, reference: &Tensor, mask: &[Vec<i64>]) -> (f32, f32) {
    let ours = ours.to_device(&Device::Cpu).unwrap();
    let mut worst = 0f32;
    let mut ref_max = 0f32;
    for (bi, row) in mask.iter().enumerate() {
        for (li, &m) in row.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let o = ours.get(bi).unwrap().get(li).unwrap();
            let r = reference.get(bi).unwrap().get(li).unwrap();
            worst = worst.max(max_abs(&(o - &r).unwrap()));
            ref_max = ref_max.max(max_abs(&r));
        }
    }
    (worst, ref_max)
}

#[test]
fn logits_on_cuda_match_transformers() {
    let dev = gpu();
    let mut failures = Vec::new();
    for (name, case, set) in input_sets() {
        let model = load_model(&case, &dev);
        assert!(model.device().is_cuda(), "{name}: model not on the GPU");
        let inputs = load_st(&case.join(format!("inputs{set}.safetensors")), &dev);
        let expected = load_st(
            &case.join(format!("expected{set}.safetensors")),
            &Device::Cpu,
        );
        let mask = mask_rows(&inputs["attention_mask"]);
        let reference = &expected["logits"];
        let logits = model
            .forward(&inputs_on(&inputs), None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(logits.device().is_cuda(), "{name}: logits not on the GPU");
        assert_eq!(logits.dims(), reference.dims(), "{name}: logits shape");
        let (diff, ref_max) = masked_logit_diff(&logits, reference, &mask);
        let tol = 1e-4 * ref_max.max(1.0);
        println!("{name}: max|cuda - transformers| = {diff:.3e} (tol {tol:.3e})");
        if diff > tol {
            failures.push(format!("{name}: logits differ by {diff:e} > {tol:e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn greedy_generation_on_cuda_matches_transformers() {
    let dev = gpu();
    let generation_config = GenerationConfig {
        eos_token_ids: EOS.to_vec(),
        bad_words_ids: vec![vec![320], vec![321]],
        pad_token_id: Some(0),
        max_new_tokens: None,
    };
    let mut checked = 0;
    for (name, case, set) in input_sets() {
        let expected = load_st(
            &case.join(format!("expected{set}.safetensors")),
            &Device::Cpu,
        );
        let Some(reference) = expected.get("generated_ids") else {
            continue;
        };
        let model = load_model(&case, &dev);
        let inputs = load_st(&case.join(format!("inputs{set}.safetensors")), &dev);
        let ids: Vec<Vec<i64>> = mask_rows(&inputs["input_ids"]);
        let mask = mask_rows(&inputs["attention_mask"]);
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
            .generate(&inputs_on(&inputs), &prompt_ids, &requests, |_, _| true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference: Vec<Vec<i64>> = reference.to_vec2().unwrap();
        let prompt_len = ids[0].len();
        for (row, (ours, theirs)) in out.iter().zip(&reference).enumerate() {
            let new: Vec<u32> = theirs[prompt_len..].iter().map(|&t| t as u32).collect();
            let (want, want_reason) = match new.iter().position(|t| EOS.contains(t)) {
                Some(end) => (new[..end].to_vec(), FinishReason::Stop),
                None => (new.clone(), FinishReason::Length),
            };
            assert_eq!(
                ours.token_ids, want,
                "{name} row {row}: tokens differ from transformers"
            );
            assert_eq!(ours.finish_reason, want_reason, "{name} row {row}");
        }
        println!("{name}: {} rows generated as transformers", out.len());
        checked += 1;
    }
    assert!(checked >= 2, "no fixture with generated_ids was found");
}
