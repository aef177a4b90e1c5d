//! One training step of Idefics3 and SmolVLM against transformers + peft
//! (tools/reference/make_idefics3_train_step_fixtures.py): the loss and the gradient of every trainable tensor,
//! for full fine-tuning, LoRA and DoRA, on the tiny `idefics3_llama3` (untied head, Llama-3 rope scaling, biases)
//! and `smolvlm_tied` (tied head, linear rope scaling) checkpoints. The tolerances are those of the Idefics2 test
//! (train_step_parity.rs): loss and every gradient within 1e-4 relative, logits within 1e-4 x max(1, max|ref|).

use candle_core::{DType, Device, Tensor};
use idefics::model::{ModelFamily, VlmModel};
use idefics::{LoadOptions, ModelInputs};
use idefics_train::loss::causal_lm_loss;
use idefics_train::peft::PeftAdapter;
use idefics_train::trainable::{AdapterSpec, TrainableModel, TrainablePlan, Tuning};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CASES: [&str; 2] = ["idefics3_llama3", "smolvlm_tied"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/idefics3")
}

fn step_dir(case: &str) -> PathBuf {
    fixtures().join("train_step").join(case)
}

fn load_st(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_model(case: &str) -> VlmModel {
    let dir = fixtures().join(case).join("model");
    VlmModel::load(&dir, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The batch (right padding, no position_ids) and its labels.
fn batch(case: &str) -> (ModelInputs, Tensor) {
    let t = load_st(&step_dir(case).join("batch.safetensors"));
    let inputs = ModelInputs {
        input_ids: Some(t["input_ids"].clone()),
        attention_mask: Some(t["attention_mask"].clone()),
        position_ids: None,
        pixel_values: Some(t["pixel_values"].clone()),
        pixel_attention_mask: Some(t["pixel_attention_mask"].clone()),
        inputs_embeds: None,
    };
    (inputs, t["labels"].clone())
}

fn max_abs_of(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Tensor by tensor: a tensor's tolerance is 1e-4 of its own largest reference value; a reference gradient that is
/// zero in exact arithmetic (the vision k_proj biases: softmax ignores a constant added to every key) is float
/// noise, compared against 1e-4 of the largest gradient of the step instead. Returns the worst relative diff.
fn compare(ours: &HashMap<String, Tensor>, theirs: &HashMap<String, Tensor>, what: &str) -> f32 {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: {} trainable tensors, the reference has {}",
        ours.len(),
        theirs.len()
    );
    let global = theirs.values().map(max_abs_of).fold(0f32, f32::max);
    let mut worst = (0f32, String::new());
    for (name, reference) in theirs {
        let g = ours
            .get(name)
            .unwrap_or_else(|| panic!("{what}: no gradient for {name}"));
        // The conv patch embedding is held as [out, c*p*p]; same values in the same order.
        let reference = &reference.reshape(g.shape()).unwrap();
        let diff = max_abs_of(&(g - reference).unwrap());
        let scale = max_abs_of(reference);
        let rel = if scale > 1e-6 * global {
            diff / scale
        } else {
            diff / global
        };
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
        assert!(rel <= 1e-4, "{what}: {name} relative diff {rel}");
    }
    eprintln!(
        "{what}: worst gradient relative diff {:.2e} ({})",
        worst.0, worst.1
    );
    worst.0
}

/// Backward of `loss`, then the gradient of every trainable tensor by name (each must have one).
fn trainable_grads(
    tm: &TrainableModel,
    loss: &Tensor,
) -> Result<HashMap<String, Tensor>, candle_core::Error> {
    let grads = loss.backward()?;
    Ok(tm
        .params()
        .iter()
        .map(|(n, v)| {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{n}: trainable but no gradient"));
            (n.clone(), g.clone())
        })
        .collect())
}

fn check_loss(loss: &Tensor, case: &str, sub: &str) -> TestResult {
    let reference =
        load_st(&step_dir(case).join(sub).join("loss.safetensors"))["loss"].to_scalar::<f32>()?;
    let ours = loss.to_scalar::<f32>()?;
    let rel = (ours - reference).abs() / reference.abs();
    eprintln!("{case} {sub}: loss {ours} vs transformers {reference} (rel {rel:.2e})");
    assert!(rel <= 1e-4, "{case} {sub}: loss {ours} vs {reference}");
    Ok(())
}

#[test]
fn a_perceiver_plan_is_refused_where_there_is_none() {
    let plan = TrainablePlan {
        perceiver: Tuning::Full,
        text: Tuning::Lora,
        ..Default::default()
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let err = TrainableModel::new(
        load_model("smolvlm_tied"),
        &plan,
        &AdapterSpec::default(),
        &mut rng,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("no perceiver") && err.contains("smolvlm"),
        "{err}"
    );
}

#[test]
fn families_come_from_model_type() {
    assert_eq!(
        load_model("idefics3_llama3").family(),
        ModelFamily::Idefics3
    );
    let smol = load_model("smolvlm_tied");
    assert_eq!(smol.family(), ModelFamily::SmolVlm);
    assert!(smol.is_tied());
    assert!(!load_model("idefics3_llama3").is_tied());
}

#[test]
fn full_fine_tuning_step_matches_transformers() -> TestResult {
    for case in CASES {
        let (inputs, labels) = batch(case);
        let all = TrainablePlan {
            vision: Tuning::Full,
            projection: Tuning::Full,
            text: Tuning::Full,
            embeddings: Tuning::Full,
            lm_head: Tuning::Full,
            // No perceiver in these families.
            perceiver: Tuning::Frozen,
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        let tm = TrainableModel::new(load_model(case), &all, &AdapterSpec::default(), &mut rng)?;
        let loss = causal_lm_loss(&tm.model().forward(&inputs, None)?, &labels)?;
        check_loss(&loss, case, "full")?;
        let ours = trainable_grads(&tm, &loss)?;
        // A tied head has no tensor of its own: one gradient for the embeddings, head included.
        compare(
            &ours,
            &load_st(&step_dir(case).join("full/grads.safetensors")),
            &format!("{case} full"),
        );
    }
    Ok(())
}

fn adapter_step(case: &str, sub: &str) -> TestResult {
    let (inputs, labels) = batch(case);
    let adapter = PeftAdapter::load(&step_dir(case).join(sub).join("adapter"), &Device::Cpu)?;
    let t = if adapter.config.use_dora {
        Tuning::Dora
    } else {
        Tuning::Lora
    };
    let plan = TrainablePlan {
        vision: t,
        projection: t,
        text: t,
        ..Default::default()
    };
    let tm = TrainableModel::with_adapter(load_model(case), &plan, &adapter)?;
    let logits = tm.model().forward(&inputs, None)?;
    let reference_logits = &load_st(&step_dir(case).join(sub).join("logits.safetensors"))["logits"];
    // Real tokens only: padding rows carry no loss.
    let mask = inputs
        .attention_mask
        .as_ref()
        .expect("mask")
        .to_dtype(DType::F32)?
        .unsqueeze(2)?;
    let diff = max_abs_of(&(&logits - reference_logits)?.broadcast_mul(&mask)?);
    assert!(
        diff <= 1e-4 * max_abs_of(reference_logits).max(1.0),
        "{case} {sub}: logits differ by {diff}"
    );
    let loss = causal_lm_loss(&logits, &labels)?;
    check_loss(&loss, case, sub)?;
    let ours = trainable_grads(&tm, &loss)?;
    compare(
        &ours,
        &load_st(&step_dir(case).join(sub).join("grads.safetensors")),
        &format!("{case} {sub}"),
    );
    Ok(())
}

#[test]
fn lora_step_matches_peft() -> TestResult {
    for case in CASES {
        adapter_step(case, "lora")?;
    }
    Ok(())
}

#[test]
fn dora_step_matches_peft() -> TestResult {
    for case in CASES {
        adapter_step(case, "dora")?;
    }
    Ok(())
}

/// `idefics merge` of peft's adapters on these families gives a full checkpoint with the adapted model's logits
/// (peft's are the reference).
#[test]
fn merged_checkpoints_match_the_adapted_model() -> TestResult {
    for case in CASES {
        let (inputs, _) = batch(case);
        let mask = inputs
            .attention_mask
            .as_ref()
            .expect("mask")
            .to_dtype(DType::F32)?
            .unsqueeze(2)?;
        for sub in ["lora", "dora"] {
            let out = tempfile::tempdir()?;
            let merged_dir = out.path().join("merged");
            idefics_train::export::merge_adapter(
                &fixtures().join(case).join("model"),
                &step_dir(case).join(sub).join("adapter"),
                &merged_dir,
                DType::F32,
            )?;
            let merged = VlmModel::load(&merged_dir, &LoadOptions::default())?;
            assert_eq!(merged.family(), load_model(case).family());
            let logits = merged.forward(&inputs, None)?;
            let reference =
                &load_st(&step_dir(case).join(sub).join("logits.safetensors"))["logits"];
            let diff = max_abs_of(&(&logits - reference)?.broadcast_mul(&mask)?);
            eprintln!("{case} {sub}: merged checkpoint logits vs peft's adapted model: {diff:.2e}");
            assert!(
                diff <= 1e-4 * max_abs_of(reference).max(1.0),
                "{case} {sub}: {diff}"
            );
        }
    }
    Ok(())
}

/// An adapter trained by `idefics train` on the tiny SmolVLM (tools/reference/check_trained_smolvlm_adapter.py,
/// which also checked that peft's `PeftModel.from_pretrained` loads it): merging it into the base reproduces the
/// logits peft computes with it, and the logits the run's own merged checkpoint gave.
#[test]
fn adapter_trained_by_us_matches_peft() -> TestResult {
    let dir = fixtures().join("trained_adapter");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json"))?)?;
    assert_eq!(result["pass"], true, "{result}");
    let ours = load_st(&dir.join("ours.safetensors"));
    let inputs = ModelInputs {
        input_ids: Some(ours["input_ids"].clone()),
        attention_mask: Some(ours["attention_mask"].clone()),
        position_ids: None,
        pixel_values: Some(ours["pixel_values"].clone()),
        pixel_attention_mask: Some(ours["pixel_attention_mask"].clone()),
        inputs_embeds: None,
    };
    let base = fixtures().join("e2e/smolvlm_tied");
    let out = tempfile::tempdir()?;
    let merged_dir = out.path().join("merged");
    idefics_train::export::merge_adapter(&base, &dir.join("adapter"), &merged_dir, DType::F32)?;
    let merged = VlmModel::load(&merged_dir, &LoadOptions::default())?;
    let logits = merged.forward(&inputs, None)?;
    let peft_logits = &load_st(&dir.join("peft_logits.safetensors"))["logits"];
    let diff = max_abs_of(&(&logits - peft_logits)?);
    let tol = 1e-4 * max_abs_of(peft_logits).max(1.0);
    eprintln!("trained adapter: merged logits vs peft {diff:.2e} (tolerance {tol:.2e})");
    assert!(diff <= tol, "merged vs peft: {diff}");
    let run_diff = max_abs_of(&(&logits - &ours["logits"])?);
    assert!(
        run_diff <= tol,
        "merged vs the run's final checkpoint: {run_diff}"
    );
    // The adapter matters: the base model's logits are far from peft's.
    let base_logits = VlmModel::load(&base, &LoadOptions::default())?.forward(&inputs, None)?;
    assert!(max_abs_of(&(&base_logits - peft_logits)?) > 20.0 * tol);
    Ok(())
}
