//! Training readiness: with every weight a candle `Var`, one forward + backward gives every weight a finite,
//! non-zero gradient (candle's fused kernels have no backward and must be bypassed automatically).

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
        let data = varmap.data().lock().unwrap();
        for (i, var) in data.values().enumerate() {
            let r = Tensor::randn(0f32, 0.2, var.shape(), &dev).unwrap();
            let r = if i % 2 == 0 { (r + 1.0).unwrap() } else { r };
            var.set(&r).unwrap();
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
