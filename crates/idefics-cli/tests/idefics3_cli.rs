//! `idefics forward --prompt` and `idefics ask` on a SmolVLM checkpoint give what transformers 5.24 gives for the
//! same files (tests/fixtures/idefics3/e2e/smolvlm_tied, made by tools/reference/make_idefics3_e2e_fixtures.py).

use candle_core::{DType, Device, IndexOp, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
mod common;

use common::{idefics, root};

fn case_dir() -> PathBuf {
    root().join("tests/fixtures/idefics3/e2e/smolvlm_tied")
}

fn fixture_request(name: &str) -> serde_json::Value {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir().join("requests.json")).unwrap())
            .unwrap();
    fixture["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("request {name} in requests.json"))
        .clone()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_close(what: &str, ours: &[f32], theirs: &[f32]) {
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

#[test]
fn forward_prompt_on_smolvlm_matches_transformers() {
    let request = fixture_request("raw_prompt");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let image = root().join(request["images"][0].as_str().unwrap());
    let output = idefics(&[
        "forward",
        "--model",
        case_dir().to_str().unwrap(),
        "--prompt",
        request["raw_prompt"].as_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ours: HashMap<String, Tensor> = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    let theirs: HashMap<String, Tensor> =
        candle_core::safetensors::load(case_dir().join("outputs.safetensors"), &Device::Cpu)
            .unwrap();

    let want: Vec<i64> = request["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let ids: Vec<Vec<i64>> = ours["input_ids"]
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(ids, vec![want.clone()]);

    let logits = ours["logits"].i(0).unwrap();
    let (len, _) = logits.dims2().unwrap();
    assert_eq!(len, want.len());
    assert_close(
        "last-position logits",
        &flat(&logits.i(len - 1).unwrap()),
        &flat(&theirs["raw_prompt/logits_last"]),
    );
    let positions: Vec<u32> = request["logits_positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let rows = logits
        .index_select(&Tensor::new(positions.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    assert_close(
        "logits at sampled positions",
        &flat(&rows),
        &flat(&theirs["raw_prompt/logits_at"]),
    );
}

#[test]
fn ask_on_smolvlm_answers_what_transformers_generates() {
    // `ask --image X "question"` builds the chat [image, question] of the fixture's chat_one_image request.
    let request = fixture_request("chat_one_image");
    let content = &request["conversation"][0]["content"];
    assert_eq!(content[0]["type"], "image");
    let image = root().join(content[0]["path"].as_str().unwrap());
    let question = content[1]["text"].as_str().unwrap();
    let expected = request["generated_text"].as_str().unwrap();
    let n_new = request["generated_ids"]
        .as_array()
        .unwrap()
        .len()
        .to_string();
    let model = case_dir();
    let args = [
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--max-new-tokens",
        &n_new,
    ];

    let mut json_args = args.to_vec();
    json_args.extend(["--json", question]);
    let output = idefics(&json_args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["answer"].as_str().unwrap(), expected);
    assert_eq!(
        report["prompt_tokens"].as_u64().unwrap() as usize,
        request["input_ids"].as_array().unwrap().len()
    );

    let mut stream_args = args.to_vec();
    stream_args.push(question);
    let output = idefics(&stream_args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert_eq!(printed.trim_end_matches('\n'), expected);
}
