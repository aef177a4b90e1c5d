//! End to end against transformers 5.24 (tests/fixtures/e2e, made by tools/reference/make_e2e_fixtures.py):
//! image files + chat -> input_ids, pixel_values, pixel_attention_mask -> greedy generation, all identical.

use candle_core::{DType, Device, Tensor};
use idefics::generate::{FinishReason, GenerationRequest};
use idefics::pipeline::{Pipeline, Prompt, PromptInput};
use idefics::processor::{decode_image_file, ChatMessage, DecodeLimits, RgbImage};
use idefics::LoadOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn image_paths(conversation: &serde_json::Value) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for message in conversation.as_array().unwrap() {
        if let Some(parts) = message["content"].as_array() {
            for part in parts {
                if part["type"] == "image" {
                    out.push(root().join(part["path"].as_str().unwrap()));
                }
            }
        }
    }
    out
}

/// Our decode of a fixture image: it must equal Pillow's pixels exactly (PNG and JPEG alike).
fn load_image(path: &Path, pillow: &HashMap<String, Tensor>) -> RgbImage {
    let ours = decode_image_file(path, &DecodeLimits::default()).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let reference = &pillow[name];
    let (h, w, _) = reference.dims3().unwrap();
    assert_eq!(
        (ours.height(), ours.width()),
        (h, w),
        "{name}: size after EXIF orientation"
    );
    let theirs: Vec<u8> = reference.flatten_all().unwrap().to_vec1().unwrap();
    let max_diff = ours
        .as_bytes()
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0);
    assert_eq!(max_diff, 0, "{name}: decode differs from Pillow");
    ours
}

fn check_checkpoint(checkpoint: &Path, opts: &LoadOptions) {
    let pillow: HashMap<String, Tensor> = candle_core::safetensors::load(
        root().join("tests/fixtures/images_e2e/decoded.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/e2e/cases.json")).unwrap(),
    )
    .unwrap();
    let pipeline = Pipeline::load(checkpoint, opts).unwrap();
    let max_new_tokens = cases["generate"]["max_new_tokens"].as_u64().unwrap() as usize;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let splitting = case["do_image_splitting"].as_bool().unwrap();
        let batch: Vec<PromptInput> = case["conversations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|conversation| PromptInput {
                prompt: Prompt::Chat(
                    serde_json::from_value::<Vec<ChatMessage>>(conversation.clone()).unwrap(),
                ),
                images: image_paths(conversation)
                    .iter()
                    .map(|p| load_image(p, &pillow))
                    .collect(),
            })
            .collect();
        let prepared = pipeline.prepare(&batch, Some(splitting)).unwrap();
        let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(
            root().join(case["tensors_file"].as_str().unwrap()),
            &Device::Cpu,
        )
        .unwrap();

        for (row, expected) in case["rows"].as_array().unwrap().iter().enumerate() {
            let want: Vec<u32> = expected["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                prepared.prompt_ids[row], want,
                "{name} row {row}: input_ids differ from transformers"
            );
        }
        let ours_ids: Vec<Vec<u32>> = prepared
            .inputs
            .input_ids
            .as_ref()
            .unwrap()
            .to_vec2()
            .unwrap();
        let theirs_ids: Vec<Vec<i64>> = tensors["input_ids"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2()
            .unwrap();
        let theirs_ids: Vec<Vec<u32>> = theirs_ids
            .iter()
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect();
        assert_eq!(ours_ids, theirs_ids, "{name}: padded input_ids differ");

        if let Some(values) = tensors.get("pixel_values") {
            let ours = prepared.inputs.pixel_values.as_ref().expect("pixel_values");
            assert_eq!(ours.dims(), values.dims(), "{name}: pixel_values shape");
            let diff = (ours - values)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{name}: pixel_values differ"
            );
        }
        if let Some(mask) = tensors.get("pixel_attention_mask") {
            let ours = prepared
                .inputs
                .pixel_attention_mask
                .as_ref()
                .expect("pixel_attention_mask");
            assert_eq!(
                ours.dims(),
                mask.dims(),
                "{name}: pixel_attention_mask shape"
            );
            let ours: Vec<u8> = ours
                .to_dtype(DType::U8)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let theirs: Vec<u8> = mask
                .to_dtype(DType::U8)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(ours, theirs, "{name}: pixel_attention_mask differs");
        }

        let requests = vec![
            GenerationRequest {
                max_new_tokens,
                ..Default::default()
            };
            batch.len()
        ];
        let out = pipeline
            .generate(&prepared, &requests, |_, _| true)
            .unwrap();
        for (row, expected) in case["rows"].as_array().unwrap().iter().enumerate() {
            let mut want: Vec<u32> = expected["generated_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let stopped = expected["stopped_on_eos"].as_bool().unwrap();
            if stopped {
                // transformers keeps the end-of-sequence token; our token_ids hold the answer only.
                let eos = want.pop().unwrap();
                assert!(eos == 2 || eos == 322, "{name}: stopped on {eos}");
            }
            assert_eq!(
                out[row].token_ids, want,
                "{name} row {row}: generated tokens differ from transformers"
            );
            let reason = if stopped {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            assert_eq!(out[row].finish_reason, reason, "{name} row {row}");
            assert_eq!(
                out[row].text,
                expected["generated_text"].as_str().unwrap(),
                "{name} row {row}: decoded text"
            );
        }
    }
}

#[test]
fn chat_processing_and_generation_match_transformers() {
    check_checkpoint(
        &root().join("tests/fixtures/e2e/tiny-chat"),
        &LoadOptions::default(),
    );
}

/// Weights stored transposed for the CPU GEMM, and the layout the inference commands load with (vision side
/// transposed, text decoder in column panels): same tokens and logits within the same tolerance.
#[test]
fn transposed_and_panel_weight_layouts_match_transformers_too() {
    for layout in [
        idefics::model::CpuWeightLayout::Transposed,
        idefics::model::CpuWeightLayout::Panels,
    ] {
        let opts = LoadOptions {
            cpu_weight_layout: layout,
            ..LoadOptions::default()
        };
        check_checkpoint(&root().join("tests/fixtures/e2e/tiny-chat"), &opts);
    }
}

#[test]
fn hub_layout_checkpoint_gives_the_same_results() {
    check_checkpoint(
        &root().join("tests/fixtures/e2e/tiny-chat-hub-layout"),
        &LoadOptions::default(),
    );
}
