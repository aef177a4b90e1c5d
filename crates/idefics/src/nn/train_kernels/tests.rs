//! Each fused kernel against the composed candle ops it replaces: values and the gradients of every input.

use super::*;
use candle_core::{Var, D};

fn random(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    // A small LCG keeps the inputs reproducible without touching candle's global RNG.
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0) as f32 * scale as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Runs `f` on variables made from `inputs`, with a loss that weighs every output element differently, and
/// returns the output and the gradient of each input.
fn value_and_grads(
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let weights = random(y.dims(), 99, 1.0);
    let grads = (&y * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gs = ts
        .iter()
        .map(|t| grads.get(t).expect("no gradient").clone())
        .collect();
    (y, gs)
}

fn assert_same(
    name: &str,
    inputs: &[Tensor],
    fused: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    composed: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    tol: f32,
) {
    let (yf, gf) = value_and_grads(inputs, fused);
    let (yc, gc) = value_and_grads(inputs, composed);
    let dy = max_abs_diff(&yf, &yc);
    assert!(dy <= tol, "{name}: outputs differ by {dy:e}");
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        let dg = max_abs_diff(a, b);
        let scale: f32 = b
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(
            scale > 0.0,
            "{name}: gradient {i} is zero, the check would be empty"
        );
        assert!(
            dg <= tol * scale.max(1.0),
            "{name}: gradient {i} differs by {dg:e} (scale {scale})"
        );
    }
}

/// Small (one thread) and large (rayon) shapes.
const SHAPES: [&[usize]; 2] = [&[3, 5, 37], &[4, 64, 96]];

#[test]
fn activations_match_candle_values_and_gradients() {
    for shape in SHAPES {
        let x = random(shape, 1, 4.0);
        assert_same(
            "gelu",
            std::slice::from_ref(&x),
            &|t| gelu_tanh(&t[0]),
            &|t| t[0].gelu(),
            1e-5,
        );
        assert_same(
            "silu",
            std::slice::from_ref(&x),
            &|t| silu(&t[0]),
            &|t| t[0].silu(),
            1e-5,
        );
        // Bit-for-bit forward for silu: written as candle's own kernel.
        assert_eq!(max_abs_diff(&silu(&x).unwrap(), &x.silu().unwrap()), 0.0);
    }
}

#[test]
fn fast_tanh_is_within_a_few_ulp_of_tanh() {
    let mut worst = 0f64;
    for i in -200_000..=200_000 {
        let x = i as f32 * 1e-4; // [-20, 20]
        let exact = (x as f64).tanh();
        let err = (fast_tanh(x) as f64 - exact).abs() / exact.abs().max(1e-30);
        worst = worst.max(if exact == 0.0 {
            fast_tanh(x).abs() as f64
        } else {
            err
        });
    }
    // f32's epsilon is 1.19e-7: a few ulp.
    assert!(worst < 6e-7, "worst relative error {worst:e}");
    assert_eq!(fast_tanh(1e-30), 1e-30);
    assert_eq!(fast_tanh(f32::INFINITY), 1.0);
    assert_eq!(fast_tanh(-100.0), -1.0);
}

#[test]
fn softmax_matches_candle_values_and_gradients() {
    for shape in SHAPES {
        let x = random(shape, 2, 6.0);
        assert_same(
            "softmax",
            &[x],
            &|t| softmax_last_dim(&t[0]),
            &|t| candle_nn::ops::softmax(&t[0], D::Minus1),
            1e-6,
        );
    }
    // A row masked with f32::MIN, as attention masks do, stays finite.
    let masked = Tensor::new(
        &[[0.5f32, f32::MIN, 1.0], [f32::MIN, f32::MIN, f32::MIN]],
        &Device::Cpu,
    )
    .unwrap();
    let y: Vec<Vec<f32>> = softmax_last_dim(&masked).unwrap().to_vec2().unwrap();
    assert_eq!(y[0][1], 0.0);
    assert!(y[1].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6), "{y:?}");
}

fn composed_rms(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

fn composed_layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

#[test]
fn rms_norm_matches_the_composed_ops() {
    for shape in SHAPES {
        let d = *shape.last().unwrap();
        let x = (random(shape, 3, 2.0) + 0.3).unwrap();
        let w = (random(&[d], 4, 0.5) + 1.0).unwrap();
        assert_same(
            "rms_norm",
            &[x, w],
            &|t| rms_norm(&t[0], &t[1], 1e-6),
            &|t| composed_rms(&t[0], &t[1], 1e-6),
            2e-5,
        );
    }
}

#[test]
fn layer_norm_matches_the_composed_ops() {
    for shape in SHAPES {
        let d = *shape.last().unwrap();
        let x = (random(shape, 5, 2.0) + 0.7).unwrap();
        let w = (random(&[d], 6, 0.5) + 1.0).unwrap();
        let b = random(&[d], 7, 0.5);
        assert_same(
            "layer_norm",
            &[x, w, b],
            &|t| layer_norm(&t[0], &t[1], &t[2], 1e-6),
            &|t| composed_layer_norm(&t[0], &t[1], &t[2], 1e-6),
            2e-5,
        );
    }
}

#[test]
fn frozen_parameters_get_no_gradient() {
    // LoRA / DoRA keep the norms frozen: their weights must not get gradient buffers.
    let x = Var::from_tensor(&random(&[2, 3, 8], 8, 1.0)).unwrap();
    let w = random(&[8], 9, 1.0);
    let b = random(&[8], 10, 1.0);
    let y = (rms_norm(x.as_tensor(), &w, 1e-5).unwrap()
        + layer_norm(x.as_tensor(), &w, &b, 1e-5).unwrap())
    .unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
}

#[test]
fn the_kernels_apply_only_to_f32_cpu_tensors_in_autograd() {
    let x = random(&[2, 4], 11, 1.0);
    let v = Var::from_tensor(&x).unwrap();
    assert!(
        !applies(&[&x]),
        "nothing to differentiate: candle's inference kernels are faster"
    );
    assert!(applies(&[v.as_tensor(), &x]));
    let half = v.as_tensor().to_dtype(DType::BF16).unwrap();
    assert!(!applies(&[&half]));
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let x = Var::from_tensor(&random(&[2, 4], 12, 1.0)).unwrap();
    let err = rms_norm(x.as_tensor(), &random(&[3], 13, 1.0), 1e-6).unwrap_err();
    assert!(err.to_string().contains("must have shape [4]"), "{err}");
}

#[test]
fn scale_columns_matches_broadcast_mul() {
    for shape in SHAPES {
        let d = *shape.last().unwrap();
        let x = random(shape, 14, 2.0);
        let s = (random(&[d], 15, 0.5) + 1.0).unwrap();
        assert_same(
            "scale_columns",
            &[x.clone(), s.clone()],
            &|t| scale_columns(&t[0], &t[1]),
            &|t| t[0].broadcast_mul(&t[1]),
            1e-5,
        );
        let bits = max_abs_diff(
            &scale_columns(&x, &s).unwrap(),
            &x.broadcast_mul(&s).unwrap(),
        );
        assert_eq!(bits, 0.0);
    }
}

fn composed_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

#[test]
fn rope_matches_the_composed_rotation() {
    // Tables as `RotaryEmbedding::tables` builds them: both halves equal, different per batch row.
    for (b, h, l, d) in [(2, 3, 5, 8), (3, 4, 40, 64)] {
        let freqs = random(&[b, l, d / 2], 16, 3.0);
        let emb = Tensor::cat(&[&freqs, &freqs], D::Minus1).unwrap();
        let (cos, sin) = (emb.cos().unwrap(), emb.sin().unwrap());
        let x = random(&[b, h, l, d], 17, 1.0);
        assert_same(
            "rope",
            std::slice::from_ref(&x),
            &|t| rope(&t[0], &cos, &sin),
            &|t| composed_rope(&t[0], &cos, &sin),
            1e-6,
        );
        let bits = max_abs_diff(
            &rope(&x, &cos, &sin).unwrap(),
            &composed_rope(&x, &cos, &sin).unwrap(),
        );
        assert_eq!(bits, 0.0);
    }
    let x = random(&[1, 1, 2, 4], 18, 1.0);
    let bad = random(&[1, 3, 4], 19, 1.0);
    let err = rope(&x, &bad, &bad).unwrap_err();
    assert!(err.to_string().contains("tables [1, 2, 4]"), "{err}");
    let tracked = Var::from_tensor(&random(&[1, 2, 4], 20, 1.0)).unwrap();
    assert!(rope(&x, tracked.as_tensor(), tracked.as_tensor()).is_err());
}

#[test]
fn parameter_gradients_do_not_depend_on_the_thread_count() {
    // Large enough for rayon's row split; the norm weights' gradients are sums over all rows.
    let x = random(&[8, 64, 96], 21, 2.0);
    let w = random(&[96], 22, 1.0);
    let b = random(&[96], 23, 1.0);
    let grads_with = |threads: usize| -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let (_, gr) =
                value_and_grads(&[x.clone(), w.clone()], &|t| rms_norm(&t[0], &t[1], 1e-6));
            let (_, gl) = value_and_grads(&[x.clone(), w.clone(), b.clone()], &|t| {
                layer_norm(&t[0], &t[1], &t[2], 1e-6)
            });
            [&gr[1], &gl[1], &gl[2]]
                .iter()
                .map(|g| g.to_vec1().unwrap())
                .collect()
        })
    };
    let one = grads_with(1);
    for threads in [2, 3] {
        assert!(
            grads_with(threads) == one,
            "{threads} threads changed the parameter gradients"
        );
    }
}

#[test]
fn token_nll_matches_composed_cross_entropy() {
    // One thread ([5, 37]) and rayon ([300, 1000]); logits wide enough that an unshifted exp would overflow.
    for (n, v) in [(5usize, 37usize), (300, 1000)] {
        let z = random(&[n, v], 7, 30.0);
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        let weights: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let (t, w) = (targets.clone(), weights.clone());
        let fused = move |x: &[Tensor]| token_nll(&x[0], t.clone(), w.clone());
        let composed = move |x: &[Tensor]| -> Result<Tensor> {
            let z = &x[0];
            let max = z.max_keepdim(D::Minus1)?.detach();
            let shifted = z.broadcast_sub(&max)?;
            let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
            let idx = Tensor::from_vec(targets.clone(), (n, 1), &Device::Cpu)?;
            let nll = (lse - shifted.gather(&idx, D::Minus1)?)?.squeeze(1)?;
            nll * Tensor::from_vec(weights.clone(), n, &Device::Cpu)?
        };
        assert_same("token-nll", &[z], &fused, &composed, 2e-5);
    }
    let z = random(&[2, 4], 1, 1.0);
    assert!(
        token_nll(&z, vec![0, 4], vec![1.0, 1.0]).is_err(),
        "target outside the vocabulary"
    );
    assert!(
        token_nll(&z, vec![0], vec![1.0]).is_err(),
        "one target for two rows"
    );
}

#[test]
fn linear_matches_candle_matmul_values_and_gradients() {
    // Shapes below and above the GEMM's blocking; the second one's bias sum spans several row blocks.
    for (m, k, n) in [(3usize, 5usize, 7usize), (300, 96, 130)] {
        let (x, w, b) = (
            random(&[m, k], 31, 1.0),
            random(&[n, k], 32, 0.5),
            random(&[n], 33, 1.0),
        );
        assert_same(
            "linear with bias",
            &[x.clone(), w.clone(), b.clone()],
            &|t| linear(&t[0], &t[1], Some(&t[2])),
            &|t| t[0].matmul(&t[1].t()?)?.broadcast_add(&t[2]),
            1e-4,
        );
        assert_same(
            "linear without bias",
            &[x.clone(), w.clone()],
            &|t| linear(&t[0], &t[1], None),
            &|t| t[0].matmul(&t[1].t()?),
            1e-4,
        );
        // The weight's gradient comes in the weight's own layout, contiguous.
        let (_, g) = value_and_grads(&[x.clone(), w.clone()], &|t| linear(&t[0], &t[1], None));
        assert!(g[1].is_contiguous() && g[1].dims() == [n, k]);
    }
}

#[test]
fn linear_gives_gradients_only_to_tracked_inputs_and_refuses_bad_shapes() {
    let x = random(&[4, 6], 34, 1.0);
    let w = Var::from_tensor(&random(&[5, 6], 35, 1.0)).unwrap();
    let frozen_bias = random(&[5], 36, 1.0);
    let y = linear(&x, w.as_tensor(), Some(&frozen_bias)).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_some());
    assert!(grads.get(&x).is_none() && grads.get(&frozen_bias).is_none());
    // dL/dW of sum(x W^T) is the column sums of x repeated for every output.
    let expect = x
        .sum(0)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .repeat((5, 1))
        .unwrap();
    assert!(max_abs_diff(grads.get(w.as_tensor()).unwrap(), &expect) < 1e-5);
    let err = linear(&x, &random(&[5, 7], 37, 1.0), None).unwrap_err();
    assert!(err.to_string().contains("expects 7"), "{err}");
    let err = linear(&x, w.as_tensor(), Some(&random(&[4], 38, 1.0))).unwrap_err();
    assert!(
        err.to_string().contains("bias must have shape [5]"),
        "{err}"
    );
}

#[test]
fn vectorised_activations_match_the_scalar_formulas() {
    // The whole range (saturated negative, around 0 where tanh(x) == x, large positive), an odd length so the
    // vector loop leaves a tail, and several rayon chunks.
    let n = 5 * 4096 + 13;
    let xs: Vec<f32> = (0..n)
        .map(|i| -100.0 + 200.0 * i as f32 / n as f32)
        .collect();
    let x = Tensor::from_vec(xs.clone(), n, &Device::Cpu).unwrap();
    let g = random(&[n], 41, 1.0);
    let gs = g.to_vec1::<f32>().unwrap();
    let sig = |v: f32| 1.0 / (1.0 + (-v as f64).exp());
    let gelu_inner = |v: f32| fast_tanh(0.797_884_6 * v * (1.0 + 0.044_715 * v * v));
    let close = |what: &str, got: &[f32], want: &dyn Fn(usize) -> f64, ulps: f64| {
        for (i, &a) in got.iter().enumerate() {
            let b = want(i);
            assert!(
                (a as f64 - b).abs() <= ulps * f32::EPSILON as f64 * b.abs().max(1e-30) + 1e-30,
                "{what} at x = {}: {a} vs {b}",
                xs[i]
            );
        }
    };
    let var = Var::from_tensor(&x).unwrap();
    for (act, name) in [
        (silu as fn(&Tensor) -> Result<Tensor>, "silu"),
        (gelu_tanh, "gelu"),
    ] {
        let y = act(var.as_tensor()).unwrap();
        let dx = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (y, dx) = (
            y.to_vec1::<f32>().unwrap(),
            dx.get(var.as_tensor()).unwrap().to_vec1::<f32>().unwrap(),
        );
        if name == "silu" {
            close("silu", &y, &|i| xs[i] as f64 * sig(xs[i]), 8.0);
            // `s (1 + x (1 - s))` cancels near x = -1.28, and `1 - s` in f32 is off by up to an ulp of 1 (times x)
            // for large x: bound the error by the size of the terms.
            for (i, &v) in xs.iter().enumerate() {
                let (x64, s) = (v as f64, sig(v));
                let want = gs[i] as f64 * s * (1.0 + x64 * (1.0 - s));
                let eps = f32::EPSILON as f64;
                let tol = (gs[i] as f64).abs()
                    * (8.0 * eps * s * (1.0 + x64.abs() * (1.0 - s)) + x64.abs() * eps);
                assert!(
                    (dx[i] as f64 - want).abs() <= tol + 1e-30,
                    "silu' at x = {v}: {} vs {want}",
                    dx[i]
                );
            }
        } else {
            // The scalar loop's own arithmetic: the vector loop fuses nothing, so the values are the same bits.
            for (i, &v) in xs.iter().enumerate() {
                let t = gelu_inner(v);
                assert_eq!(y[i], 0.5 * v * (1.0 + t), "gelu at {v}");
                let d = 0.5 * (1.0 + t)
                    + 0.5 * v * (1.0 - t * t) * 0.797_884_6 * (1.0 + 3.0 * 0.044_715 * v * v);
                assert_eq!(dx[i], gs[i] * d, "gelu' at {v}");
            }
        }
    }
}

#[test]
fn scaled_masked_softmax_matches_the_composed_ops() {
    // Masks broadcast over batch / heads / queries, of lower rank, and none; one thread and rayon shapes.
    let scale = 0.125;
    for (shape, mask_shape) in [
        ([2usize, 3, 5, 7], Some(vec![2usize, 1, 5, 7])),
        ([2, 3, 5, 7], Some(vec![1, 3, 1, 7])),
        ([2, 3, 5, 7], Some(vec![5, 7])),
        ([2, 4, 40, 130], Some(vec![2, 1, 1, 130])),
        ([2, 4, 40, 130], None),
    ] {
        let x = random(&shape, 51, 8.0);
        let mask = mask_shape.map(|m| {
            // Large negative entries where the pattern says so, as attention masks have.
            let r = random(&m, 52, 1.0);
            r.ge(0.6)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .affine(-1e9, 0.0)
                .unwrap()
        });
        let m = mask.clone();
        assert_same(
            "scaled masked softmax",
            std::slice::from_ref(&x),
            &|t| scaled_masked_softmax(&t[0], m.as_ref(), scale),
            &|t| {
                let s = (&t[0] * scale)?;
                let s = match &mask {
                    Some(m) => s.broadcast_add(m)?,
                    None => s,
                };
                candle_nn::ops::softmax(&s, D::Minus1)
            },
            1e-5,
        );
    }
    let x = random(&[1, 2, 3, 4], 53, 1.0);
    let err = scaled_masked_softmax(&x, Some(&random(&[1, 2, 3, 5], 54, 1.0)), 1.0).unwrap_err();
    assert!(err.to_string().contains("does not broadcast"), "{err}");
    let tracked = Var::from_tensor(&random(&[1, 1, 3, 4], 55, 1.0)).unwrap();
    assert!(scaled_masked_softmax(&x, Some(tracked.as_tensor()), 1.0).is_err());
}
