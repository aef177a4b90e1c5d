//! Loss, AdamW, schedules, gradient accumulation and checkpoints, against torch / transformers
//! fixtures where a reference exists (tools/reference/make_train_fixtures.py).

use candle_core::{DType, Device, Tensor, Var};
use idefics_train::accumulate::GradAccumulator;
use idefics_train::checkpoint::{
    load_checkpoint, save_checkpoint, verify_checkpoint, CheckpointContents, TrainerState,
};
use idefics_train::loss::{causal_lm_loss, causal_lm_loss_sum, causal_lm_loss_sum_from_hidden};
use idefics_train::optimizer::{clip_grad_norm, no_weight_decay, AdamW, AdamWConfig};
use idefics_train::peft::PeftAdapter;
use idefics_train::rng::TrainRng;
use idefics_train::schedule::{Decay, LrSchedule};
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/train")
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .expect("a");
    let b = b
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .expect("b");
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let num = (&a - &b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max(0))
        .expect("diff");
    let den = b.abs().and_then(|d| d.max(0)).expect("max");
    num.to_scalar::<f32>().expect("f32") / den.to_scalar::<f32>().expect("f32").max(1e-12)
}

#[test]
fn cross_entropy_matches_transformers() -> TestResult {
    let f = candle_core::safetensors::load(fixtures().join("ce.safetensors"), &Device::Cpu)?;
    let logits = Var::from_tensor(&f["logits"])?;
    let loss = causal_lm_loss(logits.as_tensor(), &f["labels"])?;
    assert!(rel_diff(&loss.reshape(1)?, &f["loss"]) <= 1e-5);
    let grads = loss.backward()?;
    let r = rel_diff(
        grads.get(logits.as_tensor()).expect("grad"),
        &f["grad.logits"],
    );
    assert!(r <= 1e-4, "grad rel diff {r}");
    let sum = causal_lm_loss_sum(logits.as_tensor(), &f["labels"])?;
    assert_eq!(sum.n_tokens as i64, f["n_items"].to_vec1::<i64>()?[0]);

    // bf16 logits are upcast to f32 first; the gradient comes back in bf16.
    let logits = Var::from_tensor(&f["logits_bf16"])?;
    let loss = causal_lm_loss(logits.as_tensor(), &f["labels"])?;
    assert_eq!(loss.dtype(), DType::F32);
    assert!(rel_diff(&loss.reshape(1)?, &f["loss_bf16"]) <= 1e-5);
    let g = loss
        .backward()?
        .get(logits.as_tensor())
        .expect("grad")
        .clone();
    assert_eq!(g.dtype(), DType::BF16);
    assert!(rel_diff(&g, &f["grad.logits_bf16"]) <= 1e-2);
    Ok(())
}

#[test]
fn cross_entropy_bad_labels() -> TestResult {
    let dev = Device::Cpu;
    let logits = Tensor::randn(0f32, 1.0, (1, 4, 5), &dev)?;
    let all_ignored = Tensor::new(&[[3i64, -100, -100, -100]], &dev)?; // position 0 is never a target
    let err = causal_lm_loss(&logits, &all_ignored)
        .unwrap_err()
        .to_string();
    assert!(err.contains("-100"), "{err}");
    assert_eq!(causal_lm_loss_sum(&logits, &all_ignored)?.n_tokens, 0);
    let out_of_range = Tensor::new(&[[0i64, 1, 5, 2]], &dev)?;
    let err = causal_lm_loss(&logits, &out_of_range)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 5 at [0, 2]"), "{err}");
    let wrong_shape = Tensor::new(&[[0i64, 1, 2]], &dev)?;
    assert!(causal_lm_loss(&logits, &wrong_shape).is_err());
    Ok(())
}

/// The loss from hidden states (labelled positions only through the head when labels are sparse) gives the
/// token losses and gradients of the full logits path, for sparse labels (answer-only fine-tuning), dense
/// labels (the full path) and padding rows; and the same errors.
#[test]
fn cross_entropy_from_hidden_states_matches_full_logits() -> TestResult {
    let dev = Device::Cpu;
    let (b, t, d, v) = (3, 7, 5, 11);
    let hidden = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, d), &dev)?)?;
    let weight = Var::from_tensor(&Tensor::randn(0f32, 0.5, (v, d), &dev)?)?;
    let head = |h: &Tensor| h.broadcast_matmul(&weight.as_tensor().t()?);
    let sparse = Tensor::new(
        &[
            [-100i64, -100, -100, -100, 4, 9, -100],
            [-100, -100, -100, -100, -100, -100, -100],
            [-100, -100, 3, -100, -100, 0, 10],
        ],
        &dev,
    )?;
    let dense = Tensor::new(
        &[
            [1i64, 2, 3, 4, 5, 6, 7],
            [8, 9, 10, 0, 1, 2, 3],
            [-100, 4, 5, 6, 7, 8, 9],
        ],
        &dev,
    )?;
    for labels in [&sparse, &dense] {
        let full = causal_lm_loss_sum(&head(hidden.as_tensor())?, labels)?;
        let from_hidden = causal_lm_loss_sum_from_hidden(hidden.as_tensor(), head, v, labels)?;
        assert_eq!(full.n_tokens, from_hidden.n_tokens);
        let (a, c) = (
            full.sum.to_scalar::<f32>()?,
            from_hidden.sum.to_scalar::<f32>()?,
        );
        assert!((a - c).abs() <= 1e-5 * a.abs().max(1.0), "loss {a} vs {c}");
        let (ga, gc) = (full.sum.backward()?, from_hidden.sum.backward()?);
        for var in [&hidden, &weight] {
            let r = rel_diff(
                gc.get(var.as_tensor()).expect("grad"),
                ga.get(var.as_tensor()).expect("grad"),
            );
            assert!(r <= 1e-5, "grad rel diff {r}");
        }
    }
    // Rows without labels get exactly zero gradient on the sparse path.
    let g = causal_lm_loss_sum_from_hidden(hidden.as_tensor(), head, v, &sparse)?
        .sum
        .backward()?;
    let row1 = g.get(hidden.as_tensor()).expect("grad").get(1)?;
    assert_eq!(row1.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);

    let out_of_range = sparse
        .clone()
        .slice_assign(&[0..1, 4..5], &Tensor::new(&[[11i64]], &dev)?)?;
    let err = causal_lm_loss_sum_from_hidden(hidden.as_tensor(), head, v, &out_of_range)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 11 at [0, 4]"), "{err}");
    let narrow_head = |h: &Tensor| h.narrow(1, 0, 2);
    assert!(causal_lm_loss_sum_from_hidden(hidden.as_tensor(), narrow_head, v, &sparse).is_err());
    assert!(causal_lm_loss_sum_from_hidden(&hidden.as_tensor().get(0)?, head, v, &sparse).is_err());
    Ok(())
}

#[test]
fn adamw_matches_torch_with_groups_and_clipping() -> TestResult {
    let f = candle_core::safetensors::load(fixtures().join("adamw.safetensors"), &Device::Cpu)?;
    let names = ["layer.weight", "layer.bias", "norm.weight"];
    let vars: Vec<(String, Var)> = names
        .iter()
        .map(|n| Ok((n.to_string(), Var::from_tensor(&f[&format!("init.{n}")])?)))
        .collect::<candle_core::Result<_>>()?;
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        lr_scales: Default::default(),
    };
    let mut opt = AdamW::new(vars.clone(), cfg)?;
    assert_eq!(
        opt.groups(),
        (vec!["layer.weight"], vec!["layer.bias", "norm.weight"])
    );
    let lrs = f["lrs"].to_vec1::<f64>()?;
    let max_norm = f["max_norm"].to_vec1::<f64>()?[0];
    for (step, lr) in lrs.iter().enumerate() {
        let mut grads = candle_core::backprop::GradStore::default();
        for (n, v) in &vars {
            grads.insert(v.as_tensor(), f[&format!("grad{step}.{n}")].clone());
        }
        let var_refs: Vec<&Var> = vars.iter().map(|(_, v)| v).collect();
        let norm = clip_grad_norm(&mut grads, &var_refs, max_norm)?;
        let torch_norm = f[&format!("norm{step}")].to_vec1::<f32>()?[0] as f64;
        assert!(
            (norm - torch_norm).abs() <= 1e-5 * torch_norm,
            "step {step}: norm {norm} vs {torch_norm}"
        );
        opt.step(&grads, *lr)?;
        for (n, v) in &vars {
            let r = rel_diff(v.as_tensor(), &f[&format!("after{step}.{n}")]);
            assert!(r <= 1e-5, "step {step}: {n} rel diff {r}");
        }
    }
    assert!(no_weight_decay("model.norm.weight") && no_weight_decay("x.input_layernorm.weight"));
    assert!(!no_weight_decay(
        "base_model.model.proj.lora_magnitude_vector"
    ));
    Ok(())
}

#[test]
fn adamw_state_resumes_exactly_and_stays_f32_for_bf16() -> TestResult {
    let dev = Device::Cpu;
    let make = || -> candle_core::Result<Vec<(String, Var)>> {
        Ok(vec![
            (
                "w".into(),
                Var::from_tensor(&Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?)?,
            ),
            (
                "b.bias".into(),
                Var::from_tensor(&Tensor::ones(3, DType::BF16, &dev)?)?,
            ),
        ])
    };
    let grads_for =
        |vars: &[(String, Var)], k: f64| -> candle_core::Result<candle_core::backprop::GradStore> {
            let mut g = candle_core::backprop::GradStore::default();
            for (_, v) in vars {
                g.insert(
                    v.as_tensor(),
                    (v.as_tensor().to_dtype(DType::F32)?.affine(k, 0.5)?).to_dtype(v.dtype())?,
                );
            }
            Ok(g)
        };
    // Uninterrupted: 4 steps.
    let a = make()?;
    let mut opt_a = AdamW::new(a.clone(), AdamWConfig::default())?;
    for s in 0..4 {
        opt_a.step(&grads_for(&a, s as f64)?, 1e-2)?;
    }
    // Interrupted after 2 steps, state saved, fresh optimizer loads it.
    let b = make()?;
    let mut opt_b = AdamW::new(b.clone(), AdamWConfig::default())?;
    for s in 0..2 {
        opt_b.step(&grads_for(&b, s as f64)?, 1e-2)?;
    }
    assert!(opt_b
        .state_tensors()?
        .values()
        .all(|t| t.dtype() == DType::F32));
    let tmp = tempfile::tempdir()?;
    opt_b.save(&tmp.path().join("opt.safetensors"))?;
    let mut opt_c = AdamW::new(b.clone(), AdamWConfig::default())?;
    opt_c.load(&tmp.path().join("opt.safetensors"), &dev)?;
    assert_eq!(opt_c.step_count(), 2);
    for s in 2..4 {
        opt_c.step(&grads_for(&b, s as f64)?, 1e-2)?;
    }
    for ((_, va), (_, vb)) in a.iter().zip(&b) {
        assert_eq!(va.dtype(), vb.dtype());
        assert_eq!(rel_diff(va.as_tensor(), vb.as_tensor()), 0.0);
    }
    assert_eq!(b[1].1.dtype(), DType::BF16);
    // A NaN gradient stops clipping with an error.
    let mut g = candle_core::backprop::GradStore::default();
    g.insert(
        a[0].1.as_tensor(),
        Tensor::new(&[[f32::NAN, 0., 0.], [0., 0., 0.]], &dev)?,
    );
    let err = clip_grad_norm(&mut g, &[&a[0].1], 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("non-finite"), "{err}");
    Ok(())
}

#[test]
fn schedules_match_transformers() -> TestResult {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("schedules.json"))?)?;
    let warmup = v["warmup_steps"].as_u64().expect("warmup");
    let total = v["total_steps"].as_u64().expect("total");
    for (name, decay, min_ratio) in [
        ("constant", Decay::Constant, 0.0),
        ("linear", Decay::Linear, 0.0),
        ("cosine", Decay::Cosine, 0.0),
        ("cosine_min_0.1", Decay::Cosine, 0.1),
    ] {
        let s = LrSchedule {
            peak_lr: 2e-4,
            warmup_steps: warmup,
            total_steps: total,
            decay,
            min_ratio,
        };
        s.validate()?;
        let expected = v["factors"][name].as_array().expect("factors");
        for (step, e) in expected.iter().enumerate() {
            let step = step as u64;
            if step > total {
                continue; // we hold the floor past the end; transformers' cosine climbs again
            }
            let e = e.as_f64().expect("f64");
            assert!(
                (s.factor(step) - e).abs() < 1e-12,
                "{name} step {step}: {} vs {e}",
                s.factor(step)
            );
        }
        assert!((s.lr(total + 5) - 2e-4 * s.factor(total)).abs() < 1e-18);
    }
    let lin = LrSchedule {
        peak_lr: 1.0,
        warmup_steps: 2,
        total_steps: 10,
        decay: Decay::Linear,
        min_ratio: 0.2,
    };
    assert!((lin.factor(10) - 0.2).abs() < 1e-12 && (lin.factor(6) - 0.6).abs() < 1e-12);
    Ok(())
}

#[test]
fn accumulated_micro_batches_equal_one_big_batch() -> TestResult {
    let dev = Device::Cpu;
    let w = Var::randn(0f32, 1.0, (4, 3), &dev)?;
    let x = Tensor::randn(0f32, 1.0, (8, 3), &dev)?;
    let y = Tensor::randn(0f32, 1.0, (8, 4), &dev)?;
    let loss = |xs: &Tensor, ys: &Tensor| {
        (xs.matmul(&w.as_tensor().t()?)?.tanh()? - ys)?
            .sqr()?
            .mean_all()
    };
    let full = loss(&x, &y)?.backward()?;
    let k = 4;
    let mut acc = GradAccumulator::new(vec![w.clone()]);
    for i in 0..k {
        let g = loss(&x.narrow(0, 2 * i, 2)?, &y.narrow(0, 2 * i, 2)?)?.backward()?;
        acc.add(&g, 1.0 / k as f64)?;
    }
    assert_eq!(acc.micro_batches(), k);
    let summed = acc.take();
    let r = rel_diff(
        summed.get(w.as_tensor()).expect("grad"),
        full.get(w.as_tensor()).expect("grad"),
    );
    assert!(r <= 1e-5, "rel diff {r}");
    assert_eq!(acc.micro_batches(), 0);
    Ok(())
}

fn checkpoint_fixture(
    dir: &Path,
) -> Result<(AdamW, TrainerState, PeftAdapter), Box<dyn std::error::Error>> {
    let adapter = PeftAdapter::load(&fixtures().join("linear_dora"), &Device::Cpu)?;
    let vars: Vec<(String, Var)> = adapter
        .named_tensors()
        .into_iter()
        .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
        .collect::<candle_core::Result<_>>()?;
    let mut opt = AdamW::new(vars.clone(), AdamWConfig::default())?;
    let mut grads = candle_core::backprop::GradStore::default();
    for (_, v) in &vars {
        grads.insert(v.as_tensor(), v.as_tensor().affine(0.5, 0.1)?);
    }
    opt.step(&grads, 1e-3)?;
    let mut rng = TrainRng::seed_from_u64(5);
    rand::RngCore::next_u64(&mut rng);
    let state = TrainerState {
        step: 1,
        rng_state: rng.state(),
        schedule: LrSchedule {
            peak_lr: 1e-3,
            warmup_steps: 0,
            total_steps: 10,
            decay: Decay::Cosine,
            min_ratio: 0.0,
        },
        extra: serde_json::json!({"tokens_seen": 1234}),
    };
    let contents = CheckpointContents {
        adapter: Some(&adapter),
        trainable: None,
        optimizer: &opt,
        state: &state,
    };
    save_checkpoint(dir, &contents)?;
    Ok((opt, state, adapter))
}

#[test]
fn checkpoint_round_trip_and_overwrite() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("checkpoint-1");
    let (opt, state, adapter) = checkpoint_fixture(&dir)?;
    // Saving again over an existing checkpoint replaces it cleanly (no staging dirs left behind).
    save_checkpoint(
        &dir,
        &CheckpointContents {
            adapter: Some(&adapter),
            trainable: None,
            optimizer: &opt,
            state: &state,
        },
    )?;
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let loaded = load_checkpoint(&dir, &Device::Cpu)?;
    assert_eq!(loaded.state, state);
    assert_eq!(
        TrainRng::from_state(loaded.state.rng_state)
            .expect("rng")
            .state(),
        state.rng_state
    );
    let back = loaded.adapter.expect("adapter");
    assert_eq!(back.config, adapter.config);
    let vars: Vec<(String, Var)> = back
        .named_tensors()
        .into_iter()
        .map(|(k, t)| Ok((k, Var::from_tensor(&t)?)))
        .collect::<candle_core::Result<_>>()?;
    let mut opt2 = AdamW::new(vars, AdamWConfig::default())?;
    opt2.load(&loaded.optimizer_path, &Device::Cpu)?;
    assert_eq!(opt2.step_count(), 1);
    let (a, b) = (opt.state_tensors()?, opt2.state_tensors()?);
    for (k, t) in &a {
        assert_eq!(rel_diff(t, &b[k]), 0.0, "{k}");
    }
    Ok(())
}

#[test]
fn damaged_checkpoints_are_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ckpt");
    checkpoint_fixture(&dir)?;
    verify_checkpoint(&dir)?;
    let opt_file = dir.join("optimizer.safetensors");
    let original = std::fs::read(&opt_file)?;

    // Truncated file.
    std::fs::write(&opt_file, &original[..original.len() - 10])?;
    let err = load_checkpoint(&dir, &Device::Cpu)
        .err()
        .expect("truncated must fail")
        .to_string();
    assert!(
        err.contains("optimizer.safetensors") && err.contains("truncated"),
        "{err}"
    );

    // Same size, one byte flipped.
    let mut flipped = original.clone();
    let i = flipped.len() - 3;
    flipped[i] ^= 0x40;
    std::fs::write(&opt_file, &flipped)?;
    let err = load_checkpoint(&dir, &Device::Cpu)
        .err()
        .expect("corrupt must fail")
        .to_string();
    assert!(
        err.contains("optimizer.safetensors") && err.contains("corrupt"),
        "{err}"
    );
    std::fs::write(&opt_file, &original)?;
    verify_checkpoint(&dir)?;

    // A missing adapter file listed in the manifest.
    std::fs::remove_file(dir.join("adapter_model.safetensors"))?;
    let err = load_checkpoint(&dir, &Device::Cpu)
        .err()
        .expect("missing must fail")
        .to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");

    // No manifest: an interrupted or foreign directory.
    std::fs::remove_file(dir.join("manifest.json"))?;
    let err = load_checkpoint(&dir, &Device::Cpu)
        .err()
        .expect("no manifest must fail")
        .to_string();
    assert!(err.contains("manifest.json"), "{err}");
    Ok(())
}

#[test]
fn manifests_naming_files_outside_the_checkpoint_are_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ckpt");
    checkpoint_fixture(&dir)?;
    // A file beside the checkpoint that a hostile manifest points at, with its true size and sha256 (so only
    // the name check can refuse it).
    let outside = tmp.path().join("secret.txt");
    std::fs::write(&outside, b"not part of the checkpoint")?;
    let manifest_path = dir.join("manifest.json");
    let original: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    for name in [
        "../secret.txt",
        outside.to_str().expect("utf-8 temp path"),
        "sub/../../secret.txt",
        "",
    ] {
        let mut manifest = original.clone();
        manifest["files"][name] = serde_json::json!({
            "bytes": 26,
            "sha256": "945d4523981166685f1433c671d90dc6430b1b1db8566a79275e8b6ab416382f",
        });
        std::fs::write(&manifest_path, serde_json::to_vec(&manifest)?)?;
        let err = verify_checkpoint(&dir)
            .err()
            .unwrap_or_else(|| panic!("{name:?} must be refused"))
            .to_string();
        assert!(
            err.contains("not a file of the checkpoint folder"),
            "{name:?}: {err}"
        );
    }
    std::fs::write(&manifest_path, serde_json::to_vec(&original)?)?;
    verify_checkpoint(&dir)?;
    Ok(())
}
