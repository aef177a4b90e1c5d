//! The fused LoRA op against the composed candle ops: outputs and every gradient.

use super::*;
use crate::adapters::{DoraLinear, LoraLinear, LoraSettings};
use candle_core::{Device, Var};
use idefics::quant::QuantType;

/// `max |a - b| / max(1, max |b|)`: f32 rounding of sums of a few dozen terms stays far below 1e-5.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>());
    let s = b.abs().and_then(|b| b.max_all()?.to_scalar::<f32>());
    d.expect("diff") / s.expect("scale").max(1.0)
}

fn settings(r: usize, use_dora: bool) -> LoraSettings {
    LoraSettings {
        r,
        alpha: 2.5 * r as f64,
        use_rslora: false,
        use_dora,
        dropout: 0.0,
    }
}

/// A loss with a non-uniform gradient `dy`, so that every term of the backward is exercised.
fn loss(y: &Tensor, probe: &Tensor) -> Result<Tensor> {
    (y * probe)?.sum_all()
}

fn base(out: usize, inp: usize, bias: bool) -> Result<FrozenLinear> {
    let dev = Device::Cpu;
    let b = if bias {
        Some(Tensor::randn(0f32, 1.0, out, &dev)?)
    } else {
        None
    };
    FrozenLinear::new(Tensor::randn(0f32, 0.3, (out, inp), &dev)?, b)
}

/// Output and gradients of `x`, A, B through both paths; `fused` runs `forward_t`, which takes the fused op here.
fn check_lora(layer: &LoraLinear, x_dims: &[usize], track_x: bool) -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::randn(0f32, 1.0, x_dims, &dev)?;
    let x_in = if track_x {
        x.as_tensor().clone()
    } else {
        x.as_tensor().detach()
    };
    assert!(fused_lora_applies(layer, &x_in));
    let y_f = layer.forward_t(&x_in, true)?;
    let y_c = layer.forward_composed(&x_in, true)?;
    assert_eq!(y_f.dims(), y_c.dims());
    assert!(
        rel_diff(&y_f, &y_c) < 1e-5,
        "output {}",
        rel_diff(&y_f, &y_c)
    );
    let probe = Tensor::randn(0f32, 1.0, y_c.shape(), &dev)?;
    let g_f = loss(&y_f, &probe)?.backward()?;
    let g_c = loss(&y_c, &probe)?.backward()?;
    let mut named = vec![
        ("lora_A", layer.lora_a().as_tensor()),
        ("lora_B", layer.lora_b().as_tensor()),
    ];
    if track_x {
        named.push(("x", x.as_tensor()));
    } else {
        assert!(
            g_f.get(x.as_tensor()).is_none(),
            "no gradient for a detached input"
        );
    }
    for (name, t) in named {
        let (f, c) = (g_f.get(t).expect(name), g_c.get(t).expect(name));
        assert!(rel_diff(f, c) < 1e-5, "{name}: {}", rel_diff(f, c));
    }
    Ok(())
}

fn fused_lora_applies(layer: &LoraLinear, x: &Tensor) -> bool {
    applies(
        layer.base(),
        x,
        layer.lora_a().as_tensor(),
        layer.lora_b().as_tensor(),
    )
}

/// A LoRA layer with a non-zero B (a fresh B is zero and would hide errors in dA and the adapter's dx).
fn lora(base: FrozenLinear, r: usize) -> Result<LoraLinear> {
    let dev = Device::Cpu;
    let (inp, out) = (base.in_dim(), base.out_dim());
    LoraLinear::from_weights(
        base,
        Tensor::randn(0f32, 0.5, (r, inp), &dev)?,
        Tensor::randn(0f32, 0.5, (out, r), &dev)?,
        &settings(r, false),
    )
}

#[test]
fn lora_matches_composed() -> Result<()> {
    for bias in [false, true] {
        for r in [1, 4, 8] {
            for x_dims in [vec![2, 7, 24], vec![5, 24], vec![1, 33, 24]] {
                check_lora(&lora(base(19, 24, bias)?, r)?, &x_dims, true)?;
            }
        }
    }
    // Frozen embeddings feed the first layer a detached input: no input gradient, the adapter's still right.
    check_lora(&lora(base(9, 16, true)?, 2)?, &[3, 16], false)
}

#[test]
fn lora_on_quantized_base_matches_composed() -> Result<()> {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.3, (12, 64), &dev)?;
    let q = QWeight::quantize(&w, QuantType::Q8_0)?;
    let b = Tensor::randn(0f32, 1.0, 12, &dev)?;
    let layer = lora(FrozenLinear::quantized(q, Some(b))?, 4)?;
    // Below and above GEMM_MIN_ROWS: the product on the blocks, then the dequantized GEMM.
    check_lora(&layer, &[1, 3, 64], true)?;
    check_lora(&layer, &[2, GEMM_MIN_ROWS, 64], true)
}

#[test]
fn dropout_gradient_goes_through_the_mask() -> Result<()> {
    let dev = Device::Cpu;
    let layer = lora(base(10, 16, true)?, 3)?;
    let (a, b) = (layer.lora_a().as_tensor(), layer.lora_b().as_tensor());
    let x = Var::randn(0f32, 1.0, (2, 5, 16), &dev)?;
    let mask = dropout_mask(x.as_tensor(), 0.4)?;
    // The mask is 0 or 1 / 0.6, with both present.
    let kept = mask
        .gt(0.0)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    assert!(kept > 0.0 && kept < 160.0, "{kept}");
    let max = mask.max_all()?.to_scalar::<f32>()?;
    assert!((max - 1.0 / 0.6).abs() < 1e-6, "{max}");
    let s = layer.scaling();
    let y_f = forward_with_mask(layer.base(), &x, a, b, s, true, Some(mask.clone()))?;
    // peft's form: base(x) + s B(A(dropout(x))).
    let xd = (x.as_tensor() * &mask)?;
    let lora_path = (xd.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * s)?;
    let y_c = (layer.base().forward(&x)? + lora_path)?;
    assert!(rel_diff(&y_f, &y_c) < 1e-5);
    let probe = Tensor::randn(0f32, 1.0, y_c.shape(), &dev)?;
    let g_f = loss(&y_f, &probe)?.backward()?;
    let g_c = loss(&y_c, &probe)?.backward()?;
    for (name, t) in [("x", x.as_tensor()), ("lora_A", a), ("lora_B", b)] {
        let (f, c) = (g_f.get(t).expect(name), g_c.get(t).expect(name));
        assert!(rel_diff(f, c) < 1e-5, "{name}: {}", rel_diff(f, c));
    }
    Ok(())
}

#[test]
fn dora_matches_composed() -> Result<()> {
    let dev = Device::Cpu;
    for (bias, r) in [(true, 2), (false, 5)] {
        let base = base(11, 20, bias)?;
        let layer = DoraLinear::from_weights(
            base,
            Tensor::randn(0f32, 0.5, (r, 20), &dev)?,
            Tensor::randn(0f32, 0.5, (11, r), &dev)?,
            Some(Tensor::rand(0.5f32, 1.5, 11, &dev)?),
            &settings(r, true),
        )?;
        let x = Var::randn(0f32, 1.0, (3, 6, 20), &dev)?;
        let y_f = layer.forward_t(&x, true)?;
        let y_c = layer.forward_composed(&x, true)?;
        assert!(
            rel_diff(&y_f, &y_c) < 1e-5,
            "output {}",
            rel_diff(&y_f, &y_c)
        );
        let probe = Tensor::randn(0f32, 1.0, y_c.shape(), &dev)?;
        let g_f = loss(&y_f, &probe)?.backward()?;
        let g_c = loss(&y_c, &probe)?.backward()?;
        for (name, t) in [
            ("x", x.as_tensor()),
            ("lora_A", layer.lora().lora_a().as_tensor()),
            ("lora_B", layer.lora().lora_b().as_tensor()),
            ("magnitude", layer.magnitude().as_tensor()),
        ] {
            let (f, c) = (g_f.get(t).expect(name), g_c.get(t).expect(name));
            assert!(rel_diff(f, c) < 1e-5, "{name}: {}", rel_diff(f, c));
        }
    }
    Ok(())
}
