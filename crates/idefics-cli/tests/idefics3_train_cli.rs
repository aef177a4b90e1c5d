//! `idefics train` and `idefics merge` on Idefics3 / SmolVLM checkpoints (the family comes from config.json's
//! model_type): LoRA on the tiny SmolVLM (tied head), DoRA and full fine-tuning on the tiny Idefics3 (Llama-3
//! rope, untied head), with chat and pair sources and evaluation during training; merging the saved adapter gives
//! the run's final checkpoint, which loads and answers.

mod common;

use common::{idefics, idefics_ok, json_lines, root};
use std::path::{Path, PathBuf};

fn model(case: &str) -> PathBuf {
    root().join("tests/fixtures/idefics3/e2e").join(case)
}

fn recipe(model: &Path, out: &Path, trainable: &str, steps: u64) -> String {
    let r = root();
    format!(
        r#"
[model]
path = "{model}"
[output]
dir = "{out}"
[[data.sources]]
kind = "cauldron"
paths = ["{data}/chat_shapes.parquet", "{data}/chat_ocr.parquet"]
weight = 3.0
[[data.sources]]
kind = "pairs"
paths = ["{data}/pairs.parquet"]
[data.collate]
max_seq_len = 600
split_fraction = 0.5
[trainable]
{trainable}
[lora]
r = 4
alpha = 8
[optim]
lr = 3e-3
warmup_steps = 1
[run]
steps = {steps}
batch_size = 2
save_every = 2
eval_every = 2
[eval]
data = "{heldout}"
limit = 4
max_new_tokens = 3
"#,
        model = model.display(),
        data = r.join("tests/fixtures/data/train").display(),
        heldout = r.join("tests/fixtures/data/heldout").display(),
        out = out.display(),
    )
}

fn train(model: &Path, trainable: &str, steps: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = dir.path().join("recipe.toml");
    std::fs::write(&cfg, recipe(model, &out, trainable, steps)).unwrap();
    idefics_ok(&["train", "--config", cfg.to_str().unwrap()]);
    let metrics = json_lines(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len() as u64, steps);
    for v in &metrics {
        let loss = v["loss"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{v}");
    }
    assert!(
        metrics[1]["eval"]["overall"].as_f64().is_some(),
        "{}",
        metrics[1]
    );
    (dir, out)
}

#[test]
fn lora_on_smolvlm_then_merge() {
    let base = model("smolvlm_tied");
    let (dir, out) = train(
        &base,
        "vision = \"lora\"\nprojection = \"lora\"\ntext = \"lora\"",
        2,
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["use_dora"], false);
    let targets = cfg["target_modules"].as_array().unwrap();
    assert!(targets
        .iter()
        .any(|t| t == "model.connector.modality_projection.proj"));
    // The tied head is not written: transformers re-ties it.
    let merged = dir.path().join("merged");
    idefics_ok(&[
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        out.join("adapter").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        std::fs::read(out.join("final/model.safetensors")).unwrap()
    );
    let o = idefics_ok(&[
        "ask",
        "--model",
        merged.to_str().unwrap(),
        "--max-new-tokens",
        "3",
        "--json",
        "Hello?",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["completion_tokens"].as_u64().unwrap() >= 1, "{v}");
}

#[test]
fn dora_and_full_on_idefics3() {
    let base = model("idefics3_llama3");
    let (_dir, out) = train(
        &base,
        "vision = \"dora\"\nprojection = \"dora\"\ntext = \"dora\"",
        2,
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["use_dora"], true);
    // Full fine-tuning of the connector and the untied head: no adapter, a changed checkpoint.
    let (_dir2, out2) = train(&base, "projection = \"full\"\nlm_head = \"full\"", 2);
    assert!(!out2.join("adapter").exists());
    let before = std::fs::read(base.join("model.safetensors")).unwrap();
    let after = std::fs::read(out2.join("final/model.safetensors")).unwrap();
    assert_ne!(before, after);
}

#[test]
fn a_recipe_on_an_unknown_model_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("model");
    std::fs::create_dir_all(&fake).unwrap();
    for f in std::fs::read_dir(model("smolvlm_tied")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, fake.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = std::fs::read_to_string(fake.join("config.json"))
        .unwrap()
        .replace("\"smolvlm\"", "\"llava\"");
    std::fs::write(fake.join("config.json"), cfg).unwrap();
    let recipe_path = dir.path().join("recipe.toml");
    std::fs::write(
        &recipe_path,
        recipe(&fake, &dir.path().join("run"), "text = \"lora\"", 1),
    )
    .unwrap();
    let o = idefics(&["train", "--config", recipe_path.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("llava"), "{err}");
}
