//! Training readiness of Idefics3 / SmolVLM: with every weight a candle `Var` and the fused kernels left enabled,
//! one forward + backward gives every weight a finite, non-zero gradient (the model must notice the variables
//! and take the differentiable paths by itself: pixel shuffle, Llama-3 / linear rope scaling, masked vision
//! attention, the tied head).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use idefics::model::{Idefics3Config, Idefics3ForConditionalGeneration};
use idefics::{LoadOptions, ModelInputs};
use std::path::Path;

fn check(case: &str) {
    let dev = Device::Cpu;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/idefics3")
        .join(case);
    let cfg = Idefics3Config::from_file(&dir.join("model/config.json")).unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let opts = LoadOptions::default();
    assert!(
        opts.use_fused_kernels,
        "the test needs the fused kernels enabled"
    );
    let model = Idefics3ForConditionalGeneration::new(&cfg, vb, &opts).unwrap();
    {
        // Seeded, moderate weights (large random projections saturate the softmaxes).
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let fan_in = var.dims().last().copied().unwrap_or(1).max(1) as f32;
            let is_norm = name.contains("norm");
            let values: Vec<f32> = (0..var.elem_count())
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
    let t = candle_core::safetensors::load(dir.join("inputs.safetensors"), &dev).unwrap();
    let inputs = ModelInputs {
        input_ids: t.get("input_ids").cloned(),
        attention_mask: t.get("attention_mask").cloned(),
        position_ids: t.get("position_ids").cloned(),
        pixel_values: t.get("pixel_values").cloned(),
        pixel_attention_mask: t.get("pixel_attention_mask").cloned(),
        inputs_embeds: None,
    };
    let logits = model.forward(&inputs, None).unwrap();
    let probe = Tensor::randn(0f32, 1.0, logits.shape(), &dev).unwrap();
    let loss = (logits * probe).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    assert!(data.len() > 40, "{case}: {} vars", data.len());
    let mut bad = Vec::new();
    for (name, var) in data.iter() {
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                if g.iter().any(|x| !x.is_finite()) {
                    bad.push(format!("{name}: non-finite gradient"));
                } else if g.iter().all(|&x| x == 0.0) {
                    bad.push(format!("{name}: all-zero gradient"));
                }
            }
        }
    }
    bad.sort();
    assert!(bad.is_empty(), "{case}: {bad:#?}");
}

#[test]
fn idefics3_every_weight_gets_a_finite_nonzero_gradient() {
    check("idefics3_llama3");
}

#[test]
fn smolvlm_tied_every_weight_gets_a_finite_nonzero_gradient() {
    check("smolvlm_tied");
}
