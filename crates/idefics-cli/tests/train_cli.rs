//! `idefics train` and `idefics merge` end to end on the tiny fixture model and the committed synthetic data:
//! outputs, refusal to overwrite a run, resume, NaN stop, merge = the run's merged checkpoint.

mod common;

use common::{idefics, idefics_ok, json_lines, root};
use std::path::Path;

fn recipe(out: &Path, lr: f64, steps: u64, tuning: &str, projection: &str) -> String {
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
max_seq_len = 400
split_fraction = 0.5
[trainable]
vision = "{tuning}"
projection = "{projection}"
text = "{tuning}"
[lora]
r = 4
alpha = 8
[optim]
lr = {lr:e}
warmup_steps = 1
[run]
steps = {steps}
batch_size = 2
save_every = 2
neftune_alpha = 5.0
eval_every = 2
[eval]
data = "{heldout}"
limit = 8
max_new_tokens = 4
"#,
        model = r.join("tests/fixtures/e2e/tiny-chat").display(),
        data = r.join("tests/fixtures/data/train").display(),
        heldout = r.join("tests/fixtures/data/heldout").display(),
        out = out.display(),
    )
}

#[test]
fn train_resume_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = dir.path().join("recipe.toml");
    std::fs::write(&cfg, recipe(&out, 3e-3, 2, "dora", "frozen")).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    idefics_ok(&["train", "--config", cfg_s]);
    for f in [
        "metrics.jsonl",
        "loss.png",
        "recipe.toml",
        "final/model.safetensors",
        "final/config.json",
        "final/tokenizer.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    // A second run into the same directory must not overwrite it.
    let o = idefics(&["train", "--config", cfg_s]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    // Longer recipe + --resume continues from step 2.
    std::fs::write(&cfg, recipe(&out, 3e-3, 4, "dora", "frozen")).unwrap();
    let o = idefics_ok(&["train", "--config", cfg_s, "--resume"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("step 2"));
    let metrics = json_lines(&out.join("metrics.jsonl"));
    let steps: Vec<u64> = metrics
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    // Evaluation during training: every 2 steps, beside the loss, over every task family of the held-out set.
    for v in &metrics {
        let step = v["step"].as_u64().unwrap();
        if step.is_multiple_of(2) {
            let eval = &v["eval"];
            assert_eq!(eval["n"].as_u64(), Some(8), "step {step}: {eval}");
            assert!(eval["overall"].as_f64().is_some(), "step {step}: {eval}");
            assert_eq!(
                eval["per_source"].as_object().unwrap().len(),
                5,
                "step {step}: {eval}"
            );
        } else {
            assert!(v.get("eval").is_none(), "step {step} has an evaluation");
        }
    }
    // Only adapters train here, so merging the saved adapter into the base gives the run's final checkpoint.
    let merged = dir.path().join("merged");
    idefics_ok(&[
        "merge",
        "--base",
        root()
            .join("tests/fixtures/e2e/tiny-chat")
            .to_str()
            .unwrap(),
        "--adapter",
        out.join("adapter").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        std::fs::read(out.join("final/model.safetensors")).unwrap()
    );
}

#[test]
fn divergence_stops_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cfg = dir.path().join("recipe.toml");
    // A huge learning rate without clipping sends the weights to inf within a few steps.
    let text =
        recipe(&out, 1e30, 6, "frozen", "full").replace("[optim]", "[optim]\nmax_grad_norm = 1e30");
    std::fs::write(&cfg, text).unwrap();
    let o = idefics(&["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("training stopped: non-finite"), "{err}");
}
