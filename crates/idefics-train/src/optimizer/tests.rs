//! The fused and composed updates, the in-place CPU update, learning-rate scales.

use super::*;

/// The fused CPU update and the composed one (used on other devices) agree.
#[test]
fn fused_and_composed_updates_agree() {
    let dev = Device::Cpu;
    let make = || -> Slot {
        let p = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .affine(0.1, -0.5)
            .unwrap();
        Slot {
            name: "w".into(),
            var: Var::from_tensor(&p.reshape((3, 4)).unwrap()).unwrap(),
            decay: true,
            lr_scale: 1.0,
            weight_decay: 0.1,
            group_lr_scale: 1.0,
            exp_avg: Tensor::full(0.01f32, (3, 4), &dev).unwrap(),
            exp_avg_sq: Tensor::full(0.002f32, (3, 4), &dev).unwrap(),
        }
    };
    let g = Tensor::arange(0f32, 12.0, &dev)
        .unwrap()
        .affine(-0.03, 0.2)
        .unwrap()
        .reshape((3, 4))
        .unwrap();
    let h = StepHyper {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        decay: 0.1,
        step_size: 1e-2 / (1.0 - 0.9f64.powi(3)),
        bc2_sqrt: (1.0 - 0.999f64.powi(3)).sqrt(),
        grad_scale: 1.0,
    };
    let (mut a, mut b) = (make(), make());
    fused_cpu_step(&mut a, &g, &h).unwrap();
    composed_step(&mut b, &g, &h).unwrap();
    for (x, y) in [
        (a.var.as_tensor(), b.var.as_tensor()),
        (&a.exp_avg, &b.exp_avg),
        (&a.exp_avg_sq, &b.exp_avg_sq),
    ] {
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
    let bad = Tensor::new(&[[f32::NAN; 4]; 3], &dev).unwrap();
    let err = fused_cpu_step(&mut a, &bad, &h).unwrap_err().to_string();
    assert!(err.contains("gradient of w"), "{err}");
}

/// The in-place update over several parallel chunks gives, bit for bit, the sequential loop on a scaled
/// gradient; a bf16 parameter is updated through its f32 copy; saved moments are copies.
#[test]
fn in_place_update_matches_the_sequential_loop() {
    let dev = Device::Cpu;
    let n = 2 * PAR_CHUNK + 1234;
    let wave = |a: f32, b: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * a).sin() * b).collect() };
    let (p0, g, m0, v0) = (
        wave(0.37, 1.0),
        wave(0.11, 0.3),
        wave(0.05, 0.01),
        wave(0.07, 0.002),
    );
    let v0: Vec<f32> = v0.iter().map(|x| x.abs()).collect();
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let (lr, scale) = (1e-2, 0.37);
    let var = Var::from_vec(p0.clone(), n, &dev).unwrap();
    let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg.clone()).unwrap();
    let mut state = HashMap::new();
    state.insert(
        "exp_avg.w".to_string(),
        Tensor::from_vec(m0.clone(), n, &dev).unwrap(),
    );
    state.insert(
        "exp_avg_sq.w".to_string(),
        Tensor::from_vec(v0.clone(), n, &dev).unwrap(),
    );
    opt.load_state(&state, 2).unwrap();
    let mut grads = GradStore::default();
    grads.insert(
        var.as_tensor(),
        Tensor::from_vec(g.clone(), n, &dev).unwrap(),
    );
    opt.step_scaled(&grads, lr, scale).unwrap();

    // torch.optim.AdamW's step 3, element by element, on the clipped gradient `affine(scale, 0)`.
    let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
    let keep = (1.0 - lr * cfg.weight_decay) as f32;
    let step = (lr / (1.0 - cfg.beta1.powi(3))) as f32;
    let inv_bc2 = (1.0 / (1.0 - cfg.beta2.powi(3)).sqrt()) as f32;
    let (mut p, mut m, mut v) = (p0, m0, v0);
    for i in 0..n {
        let g = g[i] * scale as f32 + 0.0;
        p[i] *= keep;
        m[i] = b1 * m[i] + (1.0 - cfg.beta1) as f32 * g;
        v[i] = b2 * v[i] + (1.0 - cfg.beta2) as f32 * (g * g);
        p[i] -= step * (m[i] / (v[i].sqrt() * inv_bc2 + cfg.eps as f32));
    }
    let saved = opt.state_tensors().unwrap();
    assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), p);
    assert_eq!(saved["exp_avg.w"].to_vec1::<f32>().unwrap(), m);
    assert_eq!(saved["exp_avg_sq.w"].to_vec1::<f32>().unwrap(), v);
    // The caller's state tensors were copied on load, and the saved ones are copies too.
    assert_eq!(
        state["exp_avg.w"].to_vec1::<f32>().unwrap()[..4],
        wave(0.05, 0.01)[..4]
    );
    opt.step(&grads, lr).unwrap();
    assert_eq!(saved["exp_avg.w"].to_vec1::<f32>().unwrap(), m);

    // A bf16 parameter: the same update on its f32 value, rounded back.
    let small = Tensor::new(&[0.5f32, -1.25, 2.0], &dev).unwrap();
    let var16 = Var::from_tensor(&small.to_dtype(DType::BF16).unwrap()).unwrap();
    let var32 = Var::from_tensor(&small).unwrap();
    let mut opt16 = AdamW::new(vec![("w".into(), var16.clone())], cfg.clone()).unwrap();
    let mut opt32 = AdamW::new(vec![("w".into(), var32.clone())], cfg).unwrap();
    let g3 = Tensor::new(&[0.1f32, -0.2, 0.3], &dev).unwrap();
    let mut grads16 = GradStore::default();
    grads16.insert(var16.as_tensor(), g3.to_dtype(DType::BF16).unwrap());
    let mut grads32 = GradStore::default();
    grads32.insert(
        var32.as_tensor(),
        g3.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    );
    opt16.step(&grads16, 0.1).unwrap();
    opt32.step(&grads32, 0.1).unwrap();
    assert_eq!(var16.dtype(), DType::BF16);
    assert_eq!(
        var16
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        var32
            .as_tensor()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
}

/// A component's scale multiplies its update (weight decay included); 0 leaves it where it was.
#[test]
fn lr_scales_multiply_each_components_update() {
    let dev = Device::Cpu;
    let names = [
        "model.text_model.layers.0.mlp.up_proj.weight",
        "model.connector.perceiver_resampler.latents",
        "model.vision_model.embeddings.patch_embedding.weight",
    ];
    let start = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev).unwrap();
    let params: Vec<(String, Var)> = names
        .iter()
        .map(|n| (n.to_string(), Var::from_tensor(&start).unwrap()))
        .collect();
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        lr_scales: LrScales {
            perceiver: 0.25,
            vision: 0.0,
            ..LrScales::default()
        },
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(params.clone(), cfg).unwrap();
    let loss = params
        .iter()
        .map(|(_, v)| v.as_tensor().sqr().unwrap().sum_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    opt.step(&loss.backward().unwrap(), 1e-2).unwrap();
    let moved = |i: usize| -> Vec<f32> {
        let d = (params[i].1.as_tensor() - &start).unwrap();
        d.flatten_all().unwrap().to_vec1().unwrap()
    };
    let (full, quarter, frozen) = (moved(0), moved(1), moved(2));
    assert!(full.iter().all(|d| d.abs() > 1e-3), "{full:?}");
    for (f, q) in full.iter().zip(&quarter) {
        assert!((q - 0.25 * f).abs() < 1e-7, "{q} is not a quarter of {f}");
    }
    assert!(frozen.iter().all(|d| *d == 0.0), "{frozen:?}");

    let bad = AdamWConfig {
        lr_scales: LrScales {
            text: f64::NAN,
            ..LrScales::default()
        },
        ..AdamWConfig::default()
    };
    assert!(AdamW::new(params, bad).is_err());
}
