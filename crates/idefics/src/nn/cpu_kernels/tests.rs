//! The inference kernels against the composed ops they replace, on random inputs of odd sizes.

use super::{flash_attention, linear_gemv, silu_mul, simd};
use crate::nn::{eager_attention, mask_min_value, Kernels};
use candle_core::{DType, Device, Result, Tensor};

fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
    // A fixed-seed LCG keeps the tests deterministic without another dependency.
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
}

/// max |a - b| / max |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / scale.max(1e-30))
}

fn check(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, what: &str) -> Result<()> {
    let scale = (q.dim(3)? as f64).powf(-0.5);
    // Fused kernels off: the composed softmax, the reference the model's parity tests validate.
    let want = eager_attention(q, k, v, mask, scale, &Kernels::new(false))?;
    let got = flash_attention(q, k, v, mask, scale)?;
    let err = rel_err(&got, &want)?;
    assert!(err < 1e-5, "{what}: relative error {err}");
    Ok(())
}

/// Additive mask `[B, 1, Lq, past + Lq]` with text.rs' rule: key j visible to query i = past + q iff j <= i,
/// j > i - window and j is a real token.
fn text_mask(real: &[Vec<bool>], past: usize, lq: usize, window: Option<usize>) -> Result<Tensor> {
    let total = past + lq;
    let min = mask_min_value(DType::F32) as f32;
    let mut m = vec![0f32; real.len() * lq * total];
    for (bi, row) in real.iter().enumerate() {
        for q in 0..lq {
            let i = past + q;
            for j in 0..total {
                let in_window = window.is_none_or(|w| j + w > i);
                if !(j <= i && in_window && row[j]) {
                    m[(bi * lq + q) * total + j] = min;
                }
            }
        }
    }
    Tensor::from_vec(m, (real.len(), 1, lq, total), &Device::Cpu)
}

#[test]
fn vision_unmasked_strided_heads() -> Result<()> {
    // As vision.rs: [B, S, H, D] projections viewed as [B, H, S, D] (not contiguous); S spans several query
    // blocks and key tiles (256 x 512), the last of each partial.
    let (b, s, h, d) = (2, 1100, 3, 24);
    let view = |seed| -> Result<Tensor> { rand(&[b, s, h, d], seed)?.transpose(1, 2) };
    check(&view(1)?, &view(2)?, &view(3)?, None, "vision")
}

#[test]
fn perceiver_key_mask_grouped_heads() -> Result<()> {
    // As connector.rs: 7 latents attend to [context (S = 45, some padded); latents], 4 heads over 2 kv heads.
    let (n, l, s, h, hkv, d) = (3, 7, 45, 4, 2, 16);
    let q = rand(&[n, h, l, d], 4)?;
    let k = rand(&[n, hkv, s + l, d], 5)?;
    let v = rand(&[n, hkv, s + l, d], 6)?;
    let min = mask_min_value(DType::F32) as f32;
    let mut keep = vec![0f32; n * (s + l)];
    for (i, m) in keep.iter_mut().enumerate() {
        let (row, j) = (i / (s + l), i % (s + l));
        // Row 0 all valid, row 1 the last 20 patches padded, row 2 every third patch padded.
        let valid = j >= s || row == 0 || (row == 1 && j < s - 20) || (row == 2 && j % 3 != 0);
        *m = if valid { 0.0 } else { min };
    }
    let mask = Tensor::from_vec(keep, (n, 1, 1, s + l), &Device::Cpu)?;
    check(&q, &k, &v, Some(&mask), "perceiver")
}

#[test]
fn text_prefill_causal_left_padding_sliding_window() -> Result<()> {
    // Prefill of 2 rows, the second left-padded by 37 (fully masked query rows), rows longer than a key tile:
    // the causal mask and the window skip whole tiles.
    let (b, l, h, hkv, d) = (2, 1100, 4, 2, 32);
    let real: Vec<Vec<bool>> = vec![vec![true; l], (0..l).map(|j| j >= 37).collect()];
    let q = rand(&[b, h, l, d], 7)?;
    let k = rand(&[b, hkv, l, d], 8)?;
    let v = rand(&[b, hkv, l, d], 9)?;
    for window in [None, Some(70), Some(600), Some(4096)] {
        let mask = text_mask(&real, 0, l, window)?;
        check(
            &q,
            &k,
            &v,
            Some(&mask),
            &format!("prefill window {window:?}"),
        )?;
    }
    Ok(())
}

#[test]
fn text_decode_with_cache_offset() -> Result<()> {
    // 1 and 3 new tokens after 1030 cached ones (three key tiles), keys read from a cache buffer with spare
    // capacity (strided view).
    let (b, past, h, hkv, d, cap) = (2, 1030, 6, 3, 16, 1200);
    let real: Vec<Vec<bool>> = vec![
        (0..past + 3).map(|j| j >= 5).collect(),
        vec![true; past + 3],
    ];
    for lq in [1, 3] {
        let q = rand(&[b, h, lq, d], 10)?;
        let k = rand(&[b, hkv, cap, d], 11)?.narrow(2, 0, past + lq)?;
        let v = rand(&[b, hkv, cap, d], 12)?.narrow(2, 0, past + lq)?;
        let real: Vec<Vec<bool>> = real.iter().map(|r| r[..past + lq].to_vec()).collect();
        for window in [None, Some(100)] {
            let mask = text_mask(&real, past, lq, window)?;
            check(
                &q,
                &k,
                &v,
                Some(&mask),
                &format!("decode lq {lq} window {window:?}"),
            )?;
        }
    }
    Ok(())
}

#[test]
fn all_keys_masked_gives_eager_uniform_mean() -> Result<()> {
    let (q, k, v) = (
        rand(&[1, 2, 5, 8], 13)?,
        rand(&[1, 2, 9, 8], 14)?,
        rand(&[1, 2, 9, 8], 15)?,
    );
    let mask = Tensor::full(
        mask_min_value(DType::F32) as f32,
        (1, 1, 5, 9),
        &Device::Cpu,
    )?;
    check(&q, &k, &v, Some(&mask), "all masked")?;
    // And the values are the mean of v, not zeros or NaN.
    let got = flash_attention(&q, &k, &v, Some(&mask), 0.5)?;
    let mean = v.mean_keepdim(2)?.transpose(1, 2)?.reshape((1, 1, 16))?;
    assert!(rel_err(&got.narrow(1, 0, 1)?, &mean)? < 1e-6);
    Ok(())
}

#[test]
fn exp_matches_std() {
    // -90 .. 88: below f32's smallest normal up to the clamp, where 2^k reaches 2^127.
    let mut xs: Vec<f32> = (0..39_500).map(|i| -90.0 + i as f32 * 0.0045).collect();
    let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
    simd::exp_sub_sum(&mut xs, 0.0);
    for (g, w) in xs.iter().zip(&want) {
        assert!(
            (g - w).abs() <= 4.0 * f32::EPSILON * w.abs() + 1e-37,
            "{g} vs {w}"
        );
    }
    // The sum over -90 .. 0 (above, it would overflow f32).
    let mut xs: Vec<f32> = (0..20_000).map(|i| -90.0 + i as f32 * 0.0045).collect();
    let want_sum: f64 = xs.iter().map(|&x| (x as f64).exp()).sum();
    let sum = simd::exp_sub_sum(&mut xs, 0.0);
    assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-5);
    assert_eq!(simd::exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(simd::exp(0.0), 1.0);
    assert!(simd::exp(f32::NAN).is_nan());
    let mut with_nan = vec![0.0f32; 40];
    with_nan[17] = f32::NAN;
    assert!(simd::exp_sub_sum(&mut with_nan, 0.0).is_nan());
    assert!(with_nan[17].is_nan() && with_nan[16] == 1.0);
}

#[test]
fn silu_mul_matches_candle() -> Result<()> {
    // Gate values across the whole range: saturated negative (exp(-g) clamped), around 0, large positive; an odd
    // length so the vector loop leaves a tail, and several rayon chunks.
    let n = 3 * 16 * 1024 + 13;
    let gate: Vec<f32> = (0..n)
        .map(|i| -120.0 + 240.0 * i as f32 / n as f32)
        .collect();
    let gate = Tensor::from_vec(gate, (1, n), &Device::Cpu)?;
    let up = rand(&[1, n], 11)?;
    let want = (gate.silu()? * &up)?;
    let got = silu_mul(&gate, &up)?;
    assert_eq!(got.dims(), want.dims());
    let (g, w) = (
        got.flatten_all()?.to_vec1::<f32>()?,
        want.flatten_all()?.to_vec1::<f32>()?,
    );
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            (a - b).abs() <= 4.0 * f32::EPSILON * b.abs() + 1e-30,
            "{i}: {a} vs {b}"
        );
    }
    // A strided (transposed) operand is made contiguous first; mismatched shapes are refused.
    let (a, b) = (rand(&[5, 7], 12)?, rand(&[7, 5], 13)?.t()?);
    let want = (a.silu()? * &b)?;
    assert!(rel_err(&silu_mul(&a, &b)?, &want)? < 1e-6);
    assert!(silu_mul(&a, &rand(&[5, 8], 14)?).is_err());
    Ok(())
}

#[test]
fn gemv_matches_matmul() -> Result<()> {
    for (rows, in_dim, out_dim) in [(1, 77, 131), (3, 512, 200), (4, 33, 65)] {
        let x = rand(&[rows, in_dim], 16)?;
        let w = rand(&[out_dim, in_dim], 17)?;
        let b = rand(&[out_dim], 18)?;
        let want = x.matmul(&w.t()?)?.broadcast_add(&b)?;
        let got = linear_gemv(&x, &w, Some(&b))?;
        assert!(rel_err(&got, &want)? < 1e-5, "{rows}x{in_dim}x{out_dim}");
        let got = linear_gemv(&x, &w, None)?;
        assert!(rel_err(&got, &x.matmul(&w.t()?)?)? < 1e-5);
    }
    Ok(())
}

#[test]
fn gemv_skips_autograd_inputs() -> Result<()> {
    let x = rand(&[1, 8], 19)?;
    let w = candle_core::Var::from_tensor(&rand(&[4, 8], 20)?)?;
    assert!(!super::gemv_applies(&x, w.as_tensor(), None));
    assert!(super::gemv_applies(&x, &w.as_tensor().detach(), None));
    Ok(())
}

#[test]
fn transposed_layout_keeps_values_and_matches_matmul() -> Result<()> {
    use super::{is_transposed_layout, linear_transposed, to_transposed_layout};
    // Rows 1-4 take the streaming GEMV, more the GEMM; inputs not a multiple of its four-row passes or of 128.
    for (rows, in_dim, out_dim) in [
        (1, 77, 131),
        (2, 130, 3),
        (4, 513, 200),
        (5, 33, 65),
        (17, 64, 48),
        (600, 96, 130),
    ] {
        let x = rand(&[rows, in_dim], 21)?;
        let w = rand(&[out_dim, in_dim], 22)?;
        let b = rand(&[out_dim], 23)?;
        let wt = to_transposed_layout(&w)?;
        assert!(is_transposed_layout(&wt) && !is_transposed_layout(&w));
        assert_eq!(wt.dims(), w.dims());
        assert_eq!(
            wt.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?
        );
        let want = x.matmul(&w.t()?)?;
        let got = linear_transposed(&x, &wt, None)?;
        assert!(rel_err(&got, &want)? < 1e-5, "{rows}x{in_dim}x{out_dim}");
        let got = linear_transposed(&x, &wt, Some(&b))?;
        assert!(
            rel_err(&got, &want.broadcast_add(&b)?)? < 1e-5,
            "{rows}x{in_dim}x{out_dim} + bias"
        );
        if rows > super::transposed::MAX_GEMV_ROWS {
            // The GEMM path gives candle's GEMM results exactly (the same microkernel over the same sums).
            assert_eq!(
                got.flatten_all()?.to_vec1::<f32>()?,
                want.broadcast_add(&b)?.flatten_all()?.to_vec1::<f32>()?
            );
        }
    }
    Ok(())
}

#[test]
fn transposed_layout_refuses_mismatched_inputs() -> Result<()> {
    use super::{linear_transposed, to_transposed_layout};
    let wt = to_transposed_layout(&rand(&[6, 8], 24)?)?;
    assert!(linear_transposed(&rand(&[2, 7], 25)?, &wt, None).is_err());
    assert!(linear_transposed(&rand(&[2, 8], 25)?, &wt, Some(&rand(&[5], 26)?)).is_err());
    // A plain row-major weight is not the transposed layout.
    assert!(linear_transposed(&rand(&[2, 8], 25)?, &rand(&[6, 8], 24)?, None).is_err());
    // The kernel applies to plain f32 CPU tensors in the transposed layout, never to autograd inputs.
    let x = rand(&[2, 8], 25)?;
    assert!(super::transposed_applies(&x, &wt, None));
    assert!(!super::transposed_applies(&x, &rand(&[6, 8], 24)?, None));
    let tracked = candle_core::Var::from_tensor(&x)?;
    assert!(!super::transposed_applies(tracked.as_tensor(), &wt, None));
    Ok(())
}

#[test]
fn panel_layout_matches_matmul_and_round_trips() -> Result<()> {
    use super::PanelWeight;
    // Rows 1-4 take the panel GEMV, more the per-panel GEMM; outputs below, at and across the 64-wide panels
    // (a zero-padded last panel), inputs not a multiple of the vector width, more rows than one GEMM task.
    for (rows, in_dim, out_dim) in [
        (1, 77, 131),
        (2, 130, 3),
        (3, 33, 64),
        (4, 513, 200),
        (5, 33, 65),
        (17, 64, 48),
        (300, 96, 130),
    ] {
        let x = rand(&[rows, in_dim], 31)?;
        let w = rand(&[out_dim, in_dim], 32)?;
        let b = rand(&[out_dim], 33)?;
        let panels = PanelWeight::from_weight(&w)?;
        assert_eq!((panels.out_dim(), panels.in_dim()), (out_dim, in_dim));
        assert_eq!(
            panels.to_tensor()?.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?
        );
        let want = x.matmul(&w.t()?)?;
        let got = panels.forward(&x, None)?;
        assert!(rel_err(&got, &want)? < 1e-5, "{rows}x{in_dim}x{out_dim}");
        let want_b = want.broadcast_add(&b)?;
        let got_b = panels.forward(&x, Some(&b))?;
        assert!(
            rel_err(&got_b, &want_b)? < 1e-5,
            "{rows}x{in_dim}x{out_dim} + bias"
        );
        if rows > super::panels::MAX_GEMV_ROWS {
            // The per-panel GEMM gives candle's GEMM results exactly (the same microkernel over the same sums).
            for (g, w) in [(&got, &want), (&got_b, &want_b)] {
                assert_eq!(
                    g.flatten_all()?.to_vec1::<f32>()?,
                    w.flatten_all()?.to_vec1::<f32>()?,
                    "{rows}x{in_dim}x{out_dim}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn panel_layout_refuses_mismatched_inputs() -> Result<()> {
    use super::PanelWeight;
    let panels = PanelWeight::from_weight(&rand(&[6, 8], 34)?)?;
    assert!(panels.forward(&rand(&[2, 7], 35)?, None).is_err());
    assert!(panels
        .forward(&rand(&[2, 8], 35)?, Some(&rand(&[5], 36)?))
        .is_err());
    let half = rand(&[2, 8], 35)?.to_dtype(candle_core::DType::F16)?;
    assert!(panels.forward(&half, None).is_err());
    assert!(
        PanelWeight::from_weight(&rand(&[6, 8], 34)?.to_dtype(candle_core::DType::F16)?).is_err()
    );
    Ok(())
}

#[test]
fn compute_threads_run_work_on_a_rayon_worker_and_nest_in_place() {
    assert_eq!(
        rayon::current_thread_index(),
        None,
        "the test harness thread"
    );
    let (outer, inner) = super::on_compute_threads(|| {
        let outer = rayon::current_thread_index();
        // Already on a worker: runs right there (a nested scope would also be fine, but costs a job).
        let inner = super::on_compute_threads(rayon::current_thread_index);
        (outer, inner)
    });
    assert!(outer.is_some());
    assert_eq!(inner, outer);
    // Errors and values come back to the caller.
    let r: std::result::Result<u32, String> = super::on_compute_threads(|| Err("refused".into()));
    assert_eq!(r, Err("refused".to_string()));
}

#[test]
fn repeat_rows_is_the_bias_repeated_across_chunk_boundaries() {
    // Widths that do and do not divide a chunk, more rows than one chunk holds, and the empty cases.
    for (width, rows) in [
        (3, 70_000),
        (768, 200),
        (1 << 16, 3),
        (5, 1),
        (4, 0),
        (0, 9),
    ] {
        let bias: Vec<f32> = (0..width).map(|i| i as f32 * 0.5 - 1.0).collect();
        assert_eq!(
            super::repeat_rows(&bias, rows),
            bias.repeat(rows),
            "{width} x {rows}"
        );
    }
}
