//! One training step against transformers + peft (tools/reference/make_train_step_fixtures.py): the loss and
//! the gradient of every trainable tensor, for full fine-tuning, LoRA and DoRA on the cfg_a fixture model.
//! Done when the relative difference is <= 1e-4.

#[path = "../../idefics/tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor};
use common::*;
use idefics::ModelInputs;
use idefics_train::loss::causal_lm_loss;
use idefics_train::peft::PeftAdapter;
use idefics_train::trainable::{AdapterSpec, TrainableModel, TrainablePlan, Tuning};
use std::collections::HashMap;
use std::path::PathBuf;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn dir() -> PathBuf {
    fixtures_root().join("../train_step")
}

fn batch() -> (ModelInputs, Tensor) {
    let t = load_st(&dir().join("batch.safetensors"));
    let mut inputs = case_inputs(&t, false);
    inputs.position_ids = None;
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

/// Compares our gradients with the reference, tensor by tensor. A tensor's tolerance is 1e-4 of its own largest
/// reference value; a reference gradient that is zero in exact arithmetic (the vision k_proj biases: softmax
/// ignores a constant added to every key) is float noise, compared against 1e-4 of the largest gradient of the
/// step instead.
fn compare(ours: &HashMap<String, Tensor>, theirs: &HashMap<String, Tensor>, what: &str) {
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
}

/// Backward of `loss`, then the gradient of every trainable tensor by its name (each must have one).
fn trainable_grads(
    tm: &TrainableModel,
    loss: &Tensor,
) -> Result<HashMap<String, Tensor>, candle_core::Error> {
    let grads = loss.backward()?;
    Ok(tm
        .params()
        .iter()
        .map(|(n, v)| (n.clone(), grads.get(v.as_tensor()).expect(n).clone()))
        .collect())
}

fn check_loss(loss: &Tensor, sub: &str) -> TestResult {
    let reference =
        load_st(&dir().join(sub).join("loss.safetensors"))["loss"].to_scalar::<f32>()?;
    let ours = loss.to_scalar::<f32>()?;
    let rel = (ours - reference).abs() / reference.abs();
    eprintln!("{sub}: loss {ours} vs transformers {reference} (rel {rel:.2e})");
    assert!(rel <= 1e-4, "{sub}: loss {ours} vs {reference}");
    Ok(())
}

#[test]
fn full_fine_tuning_step_matches_transformers() -> TestResult {
    let (inputs, labels) = batch();
    let all = TrainablePlan {
        vision: Tuning::Full,
        projection: Tuning::Full,
        perceiver: Tuning::Full,
        text: Tuning::Full,
        embeddings: Tuning::Full,
        lm_head: Tuning::Full,
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let tm = TrainableModel::new(
        load_model(&fixtures_root().join("cfg_a")),
        &all,
        &AdapterSpec::default(),
        &mut rng,
    )?;
    let loss = causal_lm_loss(&tm.model().forward(&inputs, None)?, &labels)?;
    check_loss(&loss, "full")?;
    let ours = trainable_grads(&tm, &loss)?;
    compare(
        &ours,
        &load_st(&dir().join("full/grads.safetensors")),
        "full",
    );
    Ok(())
}

fn adapter_step(sub: &str) -> TestResult {
    let (inputs, labels) = batch();
    let adapter = PeftAdapter::load(&dir().join(sub).join("adapter"), &Device::Cpu)?;
    let t = if adapter.config.use_dora {
        Tuning::Dora
    } else {
        Tuning::Lora
    };
    let plan = TrainablePlan {
        vision: t,
        projection: t,
        perceiver: t,
        text: t,
        ..Default::default()
    };
    let tm =
        TrainableModel::with_adapter(load_model(&fixtures_root().join("cfg_a")), &plan, &adapter)?;
    let logits = tm.model().forward(&inputs, None)?;
    let reference_logits = &load_st(&dir().join(sub).join("logits.safetensors"))["logits"];
    // Real tokens only: padding rows are not compared (no loss is taken there).
    let mask = inputs
        .attention_mask
        .as_ref()
        .expect("mask")
        .to_dtype(candle_core::DType::F32)?
        .unsqueeze(2)?;
    let diff = max_abs_of(&(&logits - reference_logits)?.broadcast_mul(&mask)?);
    assert!(
        diff <= 1e-4 * max_abs_of(reference_logits).max(1.0),
        "{sub}: logits differ by {diff}"
    );
    let loss = causal_lm_loss(&logits, &labels)?;
    check_loss(&loss, sub)?;
    let ours = trainable_grads(&tm, &loss)?;
    compare(
        &ours,
        &load_st(&dir().join(sub).join("grads.safetensors")),
        sub,
    );
    Ok(())
}

#[test]
fn lora_step_matches_peft() -> TestResult {
    adapter_step("lora")
}

#[test]
fn dora_step_matches_peft() -> TestResult {
    adapter_step("dora")
}

/// `idefics merge` of peft's adapters gives a full checkpoint with the adapted model's logits (transformers'
/// logits of the adapted model are the reference), and our re-saved adapter reloads to the same tensors.
#[test]
fn merged_checkpoints_match_the_adapted_model() -> TestResult {
    let (inputs, _) = batch();
    let mask = inputs
        .attention_mask
        .as_ref()
        .expect("mask")
        .to_dtype(candle_core::DType::F32)?
        .unsqueeze(2)?;
    for sub in ["lora", "dora"] {
        let out = tempfile::tempdir()?;
        let merged_dir = out.path().join("merged");
        idefics_train::export::merge_adapter(
            &fixtures_root().join("cfg_a/model"),
            &dir().join(sub).join("adapter"),
            &merged_dir,
            candle_core::DType::F32,
        )?;
        let merged = idefics::Idefics2ForConditionalGeneration::load(
            &merged_dir,
            &idefics::LoadOptions::default(),
        )?;
        let logits = merged.forward(&inputs, None)?;
        let reference = &load_st(&dir().join(sub).join("logits.safetensors"))["logits"];
        let diff = max_abs_of(&(&logits - reference)?.broadcast_mul(&mask)?);
        eprintln!("{sub}: merged checkpoint logits vs peft's adapted model: {diff:.2e}");
        assert!(
            diff <= 1e-4 * max_abs_of(reference).max(1.0),
            "{sub}: {diff}"
        );
        // The copied config / tokenizer files make the directory a complete checkpoint.
        assert!(merged_dir.join("config.json").is_file());

        // Adapter round trip through our writer.
        let adapter = PeftAdapter::load(&dir().join(sub).join("adapter"), &Device::Cpu)?;
        adapter.save(&out.path().join("resaved"))?;
        let again = PeftAdapter::load(&out.path().join("resaved"), &Device::Cpu)?;
        assert_eq!(adapter.modules.len(), again.modules.len());
        for (m, a) in &adapter.modules {
            let b = &again.modules[m];
            assert_eq!(max_abs_of(&(&a.lora_a - &b.lora_a)?), 0.0);
            assert_eq!(max_abs_of(&(&a.lora_b - &b.lora_b)?), 0.0);
        }
    }
    Ok(())
}
