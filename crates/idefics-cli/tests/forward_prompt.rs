//! `idefics forward --prompt ... --image ...` writes the processor's tensors next to the logits, equal to what
//! transformers' processor gives for the same prompt and image (tests/fixtures/e2e/single_image).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
mod common;

use common::root;
use std::process::Command;

fn load(path: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn prompt_mode_writes_inputs_equal_to_transformers_processor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_idefics"))
        .arg("forward")
        .arg("--model")
        .arg(root().join("tests/fixtures/e2e/tiny-chat"))
        .arg("--prompt")
        .arg("User:<image>What do we see in this image?<end_of_utterance>\nAssistant:")
        .arg("--image")
        .arg(root().join("tests/fixtures/images_e2e/landscape_120x80.png"))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let ours = load(&out);
    let theirs = load(&root().join("tests/fixtures/e2e/single_image.safetensors"));
    let ids = |t: &Tensor| t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    assert_eq!(ids(&ours["input_ids"]), ids(&theirs["input_ids"]));
    assert_eq!(ids(&ours["attention_mask"]), ids(&theirs["attention_mask"]));
    let flat = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(ours["pixel_values"].dims(), theirs["pixel_values"].dims());
    assert_eq!(flat(&ours["pixel_values"]), flat(&theirs["pixel_values"]));
    assert_eq!(
        flat(&ours["pixel_attention_mask"]),
        flat(&theirs["pixel_attention_mask"])
    );
    let (b, l, v) = ours["logits"].dims3().unwrap();
    assert_eq!((b, l, v), (1, ids(&theirs["input_ids"])[0].len(), 323));
}

#[test]
fn prompt_with_wrong_number_of_images_is_one_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_idefics"))
        .arg("forward")
        .arg("--model")
        .arg(root().join("tests/fixtures/e2e/tiny-chat"))
        .arg("--prompt")
        .arg("<image><image>two slots")
        .arg("--image")
        .arg(root().join("tests/fixtures/images_e2e/square_33x33.png"))
        .arg("--out")
        .arg("/dev/null")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("2") && stderr.contains("1"), "{stderr}");
}
