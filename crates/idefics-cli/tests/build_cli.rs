//! `idefics tokenizer train` -> `init` -> `pretrain-vision` -> `assemble` on a few synthetic samples: each
//! step's output is a checkpoint our loader accepts, with the tokenizer's vocabulary and special ids.

mod common;

use std::path::Path;

/// `idefics ARGS`, asserted to succeed; its stdout and stderr.
fn idefics(args: &[&str]) -> String {
    let out = common::idefics_ok(args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A small model: the tiny-chat fixture's config (vocabulary and ids are replaced by `init`).
fn fixture_config() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/e2e/tiny-chat/config.json")
        .display()
        .to_string()
}

#[test]
fn tokenizer_init_siglip_assemble_chain() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    idefics(&[
        "data",
        "synth",
        "--out",
        &p("data"),
        "--n",
        "3",
        "--seed",
        "5",
    ]);
    let out = idefics(&[
        "tokenizer",
        "train",
        "--data",
        &p("data/train"),
        "--vocab-size",
        "300",
        "--out",
        &p("tok"),
    ]);
    assert!(out.contains("300-token"), "{out}");
    let cfg = fixture_config();
    idefics(&[
        "init",
        "--config",
        &cfg,
        "--tokenizer",
        &p("tok"),
        "--out",
        &p("init"),
        "--seed",
        "1",
    ]);
    let config = idefics::Idefics2Config::from_file(&dir.path().join("init/config.json")).unwrap();
    assert_eq!(config.text_config.vocab_size, 300);
    assert_eq!(config.image_token_id, 298);
    idefics::Idefics2ForConditionalGeneration::load(&dir.path().join("init"), &Default::default())
        .unwrap();
    let out = idefics(&[
        "pretrain-vision",
        "--model",
        &p("init"),
        "--data",
        &p("data/train"),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--longest-edge",
        "32",
        "--embed-dim",
        "8",
        "--out",
        &p("siglip"),
    ]);
    assert!(out.contains("2 steps"), "{out}");
    // A second init with another seed plays the language model.
    idefics(&[
        "init",
        "--config",
        &cfg,
        "--tokenizer",
        &p("tok"),
        "--out",
        &p("lm"),
        "--seed",
        "2",
    ]);
    let (lm, siglip) = (p("lm"), p("siglip"));
    let assemble = |out: &str, latents_std: &str| -> Vec<String> {
        [
            "assemble", "--text", &lm, "--vision", &siglip, "--out", out, "--seed", "3",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--latents-std={latents_std}")])
        .collect()
    };
    let args = assemble(&p("vlm"), "0.02");
    let out = idefics(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("new connector tensors"), "{out}");
    // The recipe's small random latents (not transformers' ones) are what was written.
    let tensors = idefics_train::hf_checkpoint::load_tensors(
        &dir.path().join("vlm"),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let latents = tensors["model.connector.perceiver_resampler.latents"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let rms = (latents.iter().map(|x| x * x).sum::<f32>() / latents.len() as f32).sqrt();
    assert!((0.01..0.04).contains(&rms), "latents RMS {rms}");
    // A non-positive std is refused with a message naming the flag.
    let args = assemble(&p("vlm_bad"), "-1");
    let bad = common::idefics(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("--latents-std must be a positive number"),
        "{err}"
    );
    idefics::Idefics2ForConditionalGeneration::load(&dir.path().join("vlm"), &Default::default())
        .unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "processor_config.json",
    ] {
        assert!(dir.path().join("vlm").join(f).is_file(), "{f}");
    }
}

/// `pretrain-vision` keeps metrics.jsonl and checkpoints in its run folder; a run that lost its last
/// checkpoint (killed after step 1's) continues with `--resume` and writes the same tower, bit for bit, as
/// the uninterrupted run. Without `--resume`, a run folder holding checkpoints is refused.
#[test]
fn pretrain_vision_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    idefics(&[
        "data",
        "synth",
        "--out",
        &p("data"),
        "--n",
        "6",
        "--seed",
        "5",
    ]);
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/e2e/tiny-chat")
        .display()
        .to_string();
    let args = |out: &str, run: &str| -> Vec<String> {
        [
            "pretrain-vision",
            "--model",
            &model,
            "--data",
            &p("data/train"),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--longest-edge",
            "32",
            "--embed-dim",
            "8",
            "--save-every",
            "1",
            "--out",
            &p(out),
            "--run-dir",
            &p(run),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let run = |args: &[String]| idefics(&args.iter().map(String::as_str).collect::<Vec<_>>());
    run(&args("full", "full.run"));
    let metrics = common::json_lines(&dir.path().join("full.run/metrics.jsonl"));
    assert_eq!(metrics.len(), 2);
    assert!(
        metrics[1]["temperature"].as_f64().is_some(),
        "{:?}",
        metrics[1]
    );

    // The same run, then its step-2 checkpoint removed: as if killed after logging step 2.
    run(&args("cut", "cut.run"));
    std::fs::remove_dir_all(dir.path().join("cut.run/checkpoints/step-00000002")).unwrap();
    std::fs::remove_dir_all(dir.path().join("cut")).unwrap();
    let refused = common::idefics(
        &args("cut", "cut.run")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--resume"), "{err}");

    let mut resume = args("cut", "cut.run");
    resume.push("--resume".into());
    let out = run(&resume);
    assert!(
        out.contains("resumed from") && out.contains("(step 1)"),
        "{out}"
    );
    // Timings differ between runs; everything else is equal.
    let without_timings = |lines: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        lines
            .into_iter()
            .map(|mut m| {
                for k in ["tokens_per_s", "step_time_s", "elapsed_s", "eta_s"] {
                    m[k] = serde_json::Value::Null;
                }
                m
            })
            .collect()
    };
    assert_eq!(
        without_timings(common::json_lines(
            &dir.path().join("cut.run/metrics.jsonl")
        )),
        without_timings(metrics)
    );
    let load = |d: &str| {
        idefics_train::hf_checkpoint::load_tensors(
            &dir.path().join(d),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (full, cut) = (load("full"), load("cut"));
    assert_eq!(full.len(), cut.len());
    for (name, t) in &full {
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = cut[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a == b, "{name} differs after the resume");
    }
}
