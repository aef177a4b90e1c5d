//! Training readiness: with every weight a candle `Var`, one forward + backward gives every weight a finite,
//! non-zero gradient (candle's fused kernels have no backward and must be bypassed automatically).

#[path = "../../idefics/tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::*;
use idefics::{Idefics2Config, Idefics2ForConditionalGeneration, LoadOptions};

#[test]
fn every_weight_gets_a_finite_nonzero_gradient() {
    let dev = Device::Cpu;
    // cfg_a: images with padded patches, GQA everywhere, 2 layers per tower.
    let case = fixtures_root().join("cfg_a");
    let cfg = Idefics2Config::from_file(&case.join("model/config.json")).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    // Fused kernels stay enabled: the model must notice the Vars and take the differentiable path by itself.
    let model = Idefics2ForConditionalGeneration::new(&cfg, vb, &LoadOptions::default()).unwrap();
    {
        // Seeded, moderate weights: large random projections saturate the perceiver's softmax, and a one-hot
        // attention row legitimately passes zero gradient to the context (that made this test flaky).
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let n = var.elem_count();
            let fan_in = var.dims().last().copied().unwrap_or(1).max(1) as f32;
            let is_norm = name.contains("norm");
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let r: f32 = rng.random_range(-1.0..1.0);
                    if is_norm {
                        1.0 + 0.2 * r
                    } else {
                        r / fan_in.sqrt()
                    }
                })
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &dev).unwrap())
                .unwrap();
        }
    }
    let inputs = load_st(&case.join("inputs.safetensors"));
    let logits = model.forward(&case_inputs(&inputs, false), None).unwrap();
    let probe = Tensor::randn(0f32, 1.0, logits.shape(), &dev).unwrap();
    let loss = (logits * probe).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    assert!(
        names.len() > 40,
        "expected all weights as vars, got {}",
        names.len()
    );
    let mut bad = Vec::new();
    for name in names {
        let var = &data[name];
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let g = g
                    .to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                if g.iter().any(|x| !x.is_finite()) {
                    bad.push(format!("{name}: non-finite gradient"));
                } else if g.iter().all(|&x| x == 0.0) {
                    bad.push(format!("{name}: all-zero gradient"));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Fused kernels (inference) and the composed differentiable ops give the same logits.
#[test]
fn fused_and_composed_paths_agree() {
    let case = fixtures_root().join("cfg_b");
    let model = load_model(&case);
    let inputs = case_inputs(&load_st(&case.join("inputs.safetensors")), false);
    let fused = model.forward(&inputs, None).unwrap();
    model.set_use_fused_kernels(false);
    let composed = model.forward(&inputs, None).unwrap();
    let mask = mask_rows(inputs.attention_mask.as_ref().unwrap());
    let (diff, _) = masked_logit_diff(&fused, &composed, &mask);
    assert!(diff < 1e-5, "fused vs composed differ by {diff:e}");
}
