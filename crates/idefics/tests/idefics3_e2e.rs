//! End to end for Idefics3 and SmolVLM against transformers 5.24 (tests/fixtures/idefics3/e2e, made by
//! tools/reference/make_idefics3_e2e_fixtures.py): checkpoint folder -> `Pipeline::load` -> chat or raw prompt +
//! image files -> input_ids and pixel_values (identical) -> prompt logits (within 1e-4 x max(1, max|ref|)) ->
//! greedy generation and decoded text (identical).

use candle_core::{DType, Device, IndexOp, Tensor};
use idefics::generate::{FinishReason, GenerationRequest};
use idefics::pipeline::{Pipeline, Prompt, PromptInput};
use idefics::processor::{decode_image_file, ChatMessage, DecodeLimits};
use idefics::LoadOptions;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// sha256 of f32 values as little-endian bytes (how the fixtures record pixel_values too large to store).
fn sha256_le_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    format!("{:x}", Sha256::digest(&bytes))
}

/// The image files of a fixture request (paths relative to the repository root), decoded.
fn load_images(paths: &serde_json::Value) -> Vec<idefics::processor::RgbImage> {
    paths
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            decode_image_file(&root().join(p.as_str().unwrap()), &DecodeLimits::default()).unwrap()
        })
        .collect()
}

/// Largest |ours - theirs| and the tolerance 1e-4 x max(1, max|theirs|).
fn check_close(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    let scale = theirs.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max |diff| {diff} > 1e-4 x {scale}"
    );
}

fn check_case(case: &str, opts: &LoadOptions) {
    let dir = root().join("tests/fixtures/idefics3/e2e").join(case);
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("requests.json")).unwrap()).unwrap();
    let outputs: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("outputs.safetensors"), &Device::Cpu).unwrap();
    let pipeline = Pipeline::load(&dir, opts).unwrap();
    assert_eq!(
        pipeline.model.family().model_type(),
        fixture["model_type"].as_str().unwrap()
    );
    let max_new_tokens = fixture["generate"]["max_new_tokens"].as_u64().unwrap() as usize;
    let eos = ids(&fixture["generate"]["eos_token_id"]);
    for request in fixture["requests"].as_array().unwrap() {
        let name = format!("{case}/{}", request["name"].as_str().unwrap());
        let images = load_images(&request["images"]);
        let prompt = match request["raw_prompt"].as_str() {
            Some(raw) => Prompt::Raw(raw.to_string()),
            None => Prompt::Chat(
                serde_json::from_value::<Vec<ChatMessage>>(request["conversation"].clone())
                    .unwrap(),
            ),
        };
        let splitting = request["do_image_splitting"].as_bool().unwrap();
        let prepared = pipeline
            .prepare(&[PromptInput { prompt, images }], Some(splitting))
            .unwrap();

        let want_ids = ids(&request["input_ids"]);
        assert_eq!(
            prepared.prompt_ids[0], want_ids,
            "{name}: input_ids differ from transformers"
        );

        match request.get("pixel_values_shape") {
            Some(shape) => {
                let pv = prepared.inputs.pixel_values.as_ref().expect("pixel_values");
                let shape: Vec<usize> = ids(shape).iter().map(|&d| d as usize).collect();
                assert_eq!(pv.dims(), shape.as_slice(), "{name}: pixel_values shape");
                let values = flat(pv);
                if request["pixel_values_stored"].as_bool().unwrap() {
                    let theirs = flat(
                        &outputs[&format!("{}/pixel_values", request["name"].as_str().unwrap())],
                    );
                    assert_eq!(values, theirs, "{name}: pixel_values differ");
                }
                assert_eq!(
                    sha256_le_f32(&values),
                    request["pixel_values_sha256_le_f32"].as_str().unwrap(),
                    "{name}: pixel_values sha256"
                );
            }
            None => assert!(prepared.inputs.pixel_values.is_none(), "{name}"),
        }

        let logits = pipeline.model.forward(&prepared.inputs, None).unwrap();
        let logits = logits.i(0).unwrap();
        let (len, _) = logits.dims2().unwrap();
        assert_eq!(len, want_ids.len(), "{name}: logits length");
        let key = |k: &str| format!("{}/{k}", request["name"].as_str().unwrap());
        check_close(
            &format!("{name}: last-position logits"),
            &flat(&logits.i(len - 1).unwrap()),
            &flat(&outputs[&key("logits_last")]),
        );
        let positions: Vec<u32> = ids(&request["logits_positions"]);
        let rows = logits
            .index_select(&Tensor::new(positions.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap();
        check_close(
            &format!("{name}: logits at {positions:?}"),
            &flat(&rows),
            &flat(&outputs[&key("logits_at")]),
        );

        let request_cfg = GenerationRequest {
            max_new_tokens,
            ..Default::default()
        };
        let out = pipeline
            .generate(&prepared, &[request_cfg], |_, _| true)
            .unwrap();
        let mut want = ids(&request["generated_ids"]);
        let stopped = request["stopped_on_eos"].as_bool().unwrap();
        if stopped {
            // transformers keeps the end-of-sequence token; our token_ids hold the answer only.
            let last = want.pop().unwrap();
            assert!(eos.contains(&last), "{name}: stopped on {last}");
        }
        assert_eq!(
            out[0].token_ids, want,
            "{name}: generated tokens differ from transformers"
        );
        let reason = if stopped {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        assert_eq!(out[0].finish_reason, reason, "{name}");
        assert_eq!(
            out[0].text,
            request["generated_text"].as_str().unwrap(),
            "{name}: decoded text"
        );
    }
}

#[test]
fn smolvlm_requests_match_transformers_end_to_end() {
    check_case("smolvlm_tied", &LoadOptions::default());
}

#[test]
fn idefics3_requests_match_transformers_end_to_end() {
    check_case("idefics3_llama3", &LoadOptions::default());
}

fn u32_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|r| r.iter().map(|&v| v as u32).collect())
        .collect()
}

/// Two conversations in one call, left-padded (batch.json, made by the same script): padded input_ids and masks,
/// pixel_values (with an all-zero padding image), logits at real positions with generate()'s position rule, and
/// each row's greedy generation.
fn check_batch(case: &str) {
    let dir = root().join("tests/fixtures/idefics3/e2e").join(case);
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("batch.json")).unwrap()).unwrap();
    let tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("batch.safetensors"), &Device::Cpu).unwrap();
    let requests: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("requests.json")).unwrap()).unwrap();
    let max_new_tokens = requests["generate"]["max_new_tokens"].as_u64().unwrap() as usize;
    let pipeline = Pipeline::load(&dir, &LoadOptions::default()).unwrap();
    let rows = fixture["rows"].as_array().unwrap();
    let batch: Vec<PromptInput> = rows
        .iter()
        .map(|row| PromptInput {
            prompt: Prompt::Chat(serde_json::from_value(row["conversation"].clone()).unwrap()),
            images: load_images(&row["images"]),
        })
        .collect();
    let prepared = pipeline.prepare(&batch, Some(true)).unwrap();
    for (b, row) in rows.iter().enumerate() {
        assert_eq!(
            prepared.prompt_ids[b],
            ids(&row["input_ids"]),
            "{case} row {b}: input_ids"
        );
    }
    let inputs = &prepared.inputs;
    assert_eq!(
        u32_rows(inputs.input_ids.as_ref().unwrap()),
        u32_rows(&tensors["input_ids"]),
        "{case}: padded input_ids (left padding)"
    );
    let mask = inputs
        .attention_mask
        .as_ref()
        .expect("a padded batch has a mask");
    assert_eq!(
        u32_rows(mask),
        u32_rows(&tensors["attention_mask"]),
        "{case}: attention_mask"
    );
    let pv = inputs.pixel_values.as_ref().unwrap();
    let shape: Vec<usize> = ids(&fixture["pixel_values_shape"])
        .iter()
        .map(|&d| d as usize)
        .collect();
    assert_eq!(pv.dims(), shape.as_slice(), "{case}: pixel_values shape");
    assert_eq!(
        sha256_le_f32(&flat(pv)),
        fixture["pixel_values_sha256_le_f32"].as_str().unwrap(),
        "{case}: pixel_values sha256"
    );
    let pm = inputs.pixel_attention_mask.as_ref().unwrap();
    assert_eq!(
        flat(pm),
        flat(&tensors["pixel_attention_mask"]),
        "{case}: pixel_attention_mask"
    );

    let logits = pipeline.model.forward(inputs, None).unwrap();
    let logits_last = tensors["logits_last"].clone();
    let logits_at = tensors["logits_at"].clone();
    let (_, len, _) = logits.dims3().unwrap();
    for (b, row) in rows.iter().enumerate() {
        check_close(
            &format!("{case} row {b}: last-position logits"),
            &flat(&logits.i((b, len - 1)).unwrap()),
            &flat(&logits_last.i(b).unwrap()),
        );
        let positions = ids(&row["logits_positions"]);
        let picked = logits
            .i(b)
            .unwrap()
            .index_select(&Tensor::new(positions.as_slice(), &Device::Cpu).unwrap(), 0)
            .unwrap();
        check_close(
            &format!("{case} row {b}: logits at {positions:?}"),
            &flat(&picked),
            &flat(&logits_at.i(b).unwrap()),
        );
    }

    let request = GenerationRequest {
        max_new_tokens,
        ..Default::default()
    };
    let out = pipeline
        .generate(&prepared, &vec![request; rows.len()], |_, _| true)
        .unwrap();
    for (b, row) in rows.iter().enumerate() {
        let mut want = ids(&row["generated_ids"]);
        if row["stopped_on_eos"].as_bool().unwrap() {
            want.pop();
        }
        assert_eq!(out[b].token_ids, want, "{case} row {b}: generated tokens");
        assert_eq!(
            out[b].text,
            row["generated_text"].as_str().unwrap(),
            "{case} row {b}: decoded text"
        );
    }
}

/// Weights stored transposed, and the layout the inference commands load with (text decoder and an untied head
/// in column panels); a tied head stays as it is.
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
        check_case("smolvlm_tied", &opts);
        check_case("idefics3_llama3", &opts);
    }
}

#[test]
fn smolvlm_left_padded_batch_matches_transformers() {
    check_batch("smolvlm_tied");
}

#[test]
fn idefics3_left_padded_batch_matches_transformers() {
    check_batch("idefics3_llama3");
}
