//! The kernels against candle's `k_quants::matmul` on random weights: every path this CPU runs, odd output
//! counts, one and several input rows.
//!
//! Tolerances: every path of ours does candle's AVX2 arithmetic in candle's order, so ours agree with each other
//! bit for bit, and with candle bit for bit where candle runs its AVX2 kernel (x86 with AVX2 + FMA); elsewhere
//! candle's scalar kernel sums in another order and the two agree to 1e-5 of the sum of `|w x|`.

use super::*;
use crate::quant::qweight::blocks as blocks_of;
use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn quantize(values: &[f32], rows: usize, cols: usize, ty: GgmlDType) -> QTensor {
    let t = Tensor::from_vec(values.to_vec(), (rows, cols), &Device::Cpu).unwrap();
    QTensor::quantize(&t, ty).unwrap()
}

/// Whether candle's q8_0 dot product runs its AVX2 kernel here (then ours must match it exactly).
fn candle_runs_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn assert_close(ours: &[f32], theirs: &[f32], scale: &[f32], tol: f32, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, ((a, b), s)) in ours.iter().zip(theirs).zip(scale).enumerate() {
        assert!(
            (a - b).abs() <= tol * s.max(1e-6),
            "{what}: output {i}: ours {a}, reference {b} (tolerance {tol} x {s})"
        );
    }
}

/// `sum_k |x[r, k]| |w[o, k]|` for every output: the scale of a dot product's rounding error.
fn abs_products(x: &[f32], w: &[f32], rows: usize, out_dim: usize, in_dim: usize) -> Vec<f32> {
    let mut s = vec![0f32; rows * out_dim];
    for r in 0..rows {
        for o in 0..out_dim {
            s[r * out_dim + o] = (0..in_dim)
                .map(|k| (x[r * in_dim + k] * w[o * in_dim + k]).abs())
                .sum();
        }
    }
    s
}

#[test]
fn activation_blocks_are_candles() {
    let x = random(576, 1);
    let ours = Q8Row::quantize(&x);
    let theirs = quantize(&x, 1, 576, GgmlDType::Q8_0);
    let mut bytes = Vec::new();
    for b in &ours.blocks {
        bytes.extend_from_slice(&b.d.to_le_bytes());
        bytes.extend(b.qs.iter().map(|&q| q as u8));
    }
    assert_eq!(bytes, theirs.data().unwrap().as_ref());
    for (b, s) in ours.blocks.iter().zip(&ours.scales) {
        assert_eq!(half::f16::from_bits(b.d).to_f32(), *s);
    }
}

/// `x [rows, in] w^T` in plain f32 sums.
fn dense_product(x: &[f32], w: &[f32], rows: usize, out_dim: usize, in_dim: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * out_dim];
    for r in 0..rows {
        for o in 0..out_dim {
            y[r * out_dim + o] = (0..in_dim)
                .map(|k| x[r * in_dim + k] * w[o * in_dim + k])
                .sum();
        }
    }
    y
}

/// The weight of `qw` in f32, row-major.
fn dequantized(qw: &QTensor) -> Vec<f32> {
    qw.dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// candle's `k_quants::matmul` on the stored blocks of `qw`.
fn candle_matmul(qw: &QTensor, x: &[f32], rows: usize) -> Vec<f32> {
    let (out_dim, in_dim) = qw.shape().dims2().unwrap();
    let data = qw.data().unwrap();
    let mut dst = vec![0f32; rows * out_dim];
    let mkn = (rows, in_dim, out_dim);
    match qw.dtype() {
        GgmlDType::Q8_0 => {
            k_quants::matmul(mkn, x, blocks_of::<BlockQ8_0>(&data).unwrap(), &mut dst)
        }
        GgmlDType::Q5_0 => {
            k_quants::matmul(mkn, x, blocks_of::<BlockQ5_0>(&data).unwrap(), &mut dst)
        }
        GgmlDType::Q4K => k_quants::matmul(mkn, x, blocks_of::<BlockQ4K>(&data).unwrap(), &mut dst),
        GgmlDType::Q6K => k_quants::matmul(mkn, x, blocks_of::<BlockQ6K>(&data).unwrap(), &mut dst),
        other => panic!("no reference for {other:?}"),
    }
    .unwrap();
    dst
}

/// Our kernel of type `ty` on every path against candle (bit for bit where candle runs AVX2, else 1e-5 of the
/// sum of `|w x|`), each path against the scalar one (bit for bit), and against the dequantized weight in f32
/// (`f32_tol` of the sum of `|w x|`: the activation's 8-bit rounding).
fn check_against_candle(ty: QuantType, cases: &[(usize, usize, usize)], f32_tol: f32) {
    let kernel = |isa, x: &[f32], rows, data: &[u8], out_dim, in_dim| {
        matmul(ty, isa, x, rows, data, (out_dim, in_dim))
    };
    let paths = Isa::available();
    assert_eq!(paths.last(), Some(&Isa::Scalar));
    for (case, &(out_dim, in_dim, rows)) in cases.iter().enumerate() {
        let seed = 100 + case as u64;
        let w = random(out_dim * in_dim, seed);
        let x = random(rows * in_dim, seed + 1000);
        let qw = quantize(&w, out_dim, in_dim, ty.ggml());
        let data = qw.data().unwrap();
        let theirs = candle_matmul(&qw, &x, rows);
        let scale = abs_products(&x, &w, rows, out_dim, in_dim);
        let what = format!("{ty:?} [{rows}, {in_dim}] x [{out_dim}, {in_dim}]^T");
        let reference = kernel(Isa::Scalar, &x, rows, &data, out_dim, in_dim).unwrap();
        assert_close(
            &reference,
            &theirs,
            &scale,
            1e-5,
            &format!("{what} scalar vs candle"),
        );
        // candle's q5_0 product is scalar code in its own order: to rounding only.
        if candle_runs_avx2() && ty != QuantType::Q5_0 {
            assert_eq!(reference, theirs, "{what}: scalar vs candle's AVX2 kernel");
        }
        for &isa in &paths {
            let ours = kernel(isa, &x, rows, &data, out_dim, in_dim).unwrap();
            assert_eq!(ours, reference, "{what}: {} vs scalar", isa.name());
        }
        let dense = dense_product(&x, &dequantized(&qw), rows, out_dim, in_dim);
        assert_close(
            &reference,
            &dense,
            &scale,
            f32_tol,
            &format!("{what} vs f32"),
        );
    }
}

#[test]
fn q8_0_matches_candle_on_every_path() {
    // Output counts around the 4-row tile and across several rayon tasks (1000 x 576: ~10 tasks).
    let cases = [
        (1, 32, 1),
        (7, 64, 1),
        (37, 96, 3),
        (130, 576, 1),
        (131, 576, 2),
        (1000, 576, 1),
        (1001, 576, 15),
        (66, 1536, 5),
    ];
    check_against_candle(QuantType::Q8_0, &cases, 1e-2);
}

#[test]
fn q5_0_matches_candle_on_every_path() {
    // candle's q5_0 product wants an even number of blocks per row; every width SmolVLM has is.
    let cases = [
        (1, 64, 1),
        (7, 64, 1),
        (37, 128, 3),
        (130, 576, 1),
        (1001, 576, 15),
        (67, 960, 2),
    ];
    check_against_candle(QuantType::Q5_0, &cases, 1e-2);
}

/// Odd block counts (which candle's q5_0 product refuses in debug builds): every path against the scalar one,
/// bit for bit, and the scalar one against the dequantized weight; the high bits set and clear on both halves.
#[test]
fn q5_0_paths_agree_on_odd_block_counts() {
    for (out_dim, in_dim, rows) in [(5, 32, 1), (41, 96, 2), (19, 160, 15)] {
        let w = random(out_dim * in_dim, 61);
        let x = random(rows * in_dim, 62);
        let qw = quantize(&w, out_dim, in_dim, GgmlDType::Q5_0);
        let data = qw.data().unwrap();
        let reference = matmul(
            QuantType::Q5_0,
            Isa::Scalar,
            &x,
            rows,
            &data,
            (out_dim, in_dim),
        )
        .unwrap();
        for isa in Isa::available() {
            let ours = matmul(QuantType::Q5_0, isa, &x, rows, &data, (out_dim, in_dim)).unwrap();
            assert_eq!(
                ours,
                reference,
                "q5_0 [{out_dim}, {in_dim}] {} vs scalar",
                isa.name()
            );
        }
        let scale = abs_products(&x, &w, rows, out_dim, in_dim);
        let dense = dense_product(&x, &dequantized(&qw), rows, out_dim, in_dim);
        assert_close(&reference, &dense, &scale, 1e-2, "q5_0 vs f32");
    }
}

#[test]
fn q4k_matches_candle_on_every_path() {
    let cases = [
        (1, 256, 1),
        (6, 512, 1),
        (37, 256, 3),
        (258, 1536, 1),
        (131, 512, 15),
    ];
    check_against_candle(QuantType::Q4K, &cases, 1e-2);
}

#[test]
fn q6k_matches_candle_on_every_path() {
    let cases = [
        (1, 256, 1),
        (6, 512, 1),
        (37, 256, 3),
        (258, 1536, 1),
        (131, 512, 15),
    ];
    check_against_candle(QuantType::Q6K, &cases, 1e-2);
}

#[test]
fn q8k_activation_blocks_are_candles() {
    let mut x = random(512, 3);
    x[300] = -2.0; // the scale follows the signed value of largest magnitude
    let ours = Q8KRow::quantize(&x);
    let theirs = quantize(&x, 1, 512, GgmlDType::Q8K);
    let bytes = theirs.data().unwrap();
    // candle's BlockQ8K: f32 scale, 256 quants, 16 sums of 16 quants (292 bytes).
    for (b, block) in bytes.chunks_exact(292).enumerate() {
        let d = f32::from_le_bytes(block[..4].try_into().unwrap());
        assert_eq!(ours.d[b], d);
        let qs: Vec<i8> = block[4..260].iter().map(|&q| q as i8).collect();
        assert_eq!(&ours.qs[b * 256..(b + 1) * 256], &qs[..]);
        for i in 0..8 {
            let pair = |k: usize| i16::from_le_bytes([block[260 + 2 * k], block[261 + 2 * k]]);
            assert_eq!(ours.sums32[b][i], pair(2 * i) + pair(2 * i + 1));
        }
        for (p, q) in qs.chunks_exact(2).enumerate() {
            assert_eq!(ours.pairs32[b * 128 + p], 32 * (q[0] as i16 + q[1] as i16));
        }
    }
}

#[test]
fn q8_0_rejects_mismatched_shapes() {
    let w = random(8 * 64, 7);
    let qw = quantize(&w, 8, 64, GgmlDType::Q8_0);
    let data = qw.data().unwrap();
    let x = random(64, 8);
    assert!(matmul(QuantType::Q8_0, Isa::Scalar, &x, 1, &data, (8, 64)).is_ok());
    let err = matmul(QuantType::Q8_0, Isa::Scalar, &x, 1, &data, (9, 64)).unwrap_err();
    assert!(
        err.to_string().contains("blocks for a [9, 64] weight"),
        "{err}"
    );
    let err = matmul(QuantType::Q8_0, Isa::Scalar, &x[..60], 1, &data, (8, 64)).unwrap_err();
    assert!(err.to_string().contains("60 inputs"), "{err}");
    let err = matmul(QuantType::Q8_0, Isa::Scalar, &x, 1, &data[1..], (8, 64)).unwrap_err();
    assert!(err.to_string().contains("not a whole, aligned"), "{err}");
}

/// bf16: every path this CPU runs equals the f64 product of the f32 activations with the widened weights (to 1e-6
/// of the sum of `|w x|`: f32 sums in another order), on widths that are and are not a multiple of the 16 lanes,
/// and an output count that is not a multiple of the four-row tile.
#[test]
fn bf16_products_keep_f32_activations_on_every_path() {
    for in_dim in [300, 512] {
        let (out_dim, rows) = (67, 3);
        let w = random(out_dim * in_dim, 41);
        let qw = quantize(&w, out_dim, in_dim, GgmlDType::BF16);
        let data = qw.data().unwrap();
        let widened: Vec<f32> = blocks_of::<half::bf16>(&data)
            .unwrap()
            .iter()
            .map(|b| b.to_f32())
            .collect();
        let x = random(rows * in_dim, 42);
        let mut want = vec![0f32; rows * out_dim];
        for r in 0..rows {
            for o in 0..out_dim {
                want[r * out_dim + o] = (0..in_dim)
                    .map(|k| x[r * in_dim + k] as f64 * widened[o * in_dim + k] as f64)
                    .sum::<f64>() as f32;
            }
        }
        let scale = abs_products(&x, &widened, rows, out_dim, in_dim);
        for isa in Isa::available() {
            for r in [1, rows] {
                let got = matmul(
                    QuantType::Bf16,
                    isa,
                    &x[..r * in_dim],
                    r,
                    &data,
                    (out_dim, in_dim),
                )
                .unwrap();
                let what = format!("bf16 {} in {in_dim} rows {r}", isa.name());
                assert_close(&got, &want[..r * out_dim], &scale, 1e-6, &what);
            }
        }
    }
}

/// The q5_0 dequantization gives candle's `to_float` values bit for bit (both halves, fifth bits set and clear,
/// a zero block).
#[test]
fn q5_0_dequantization_is_candles() {
    let mut w = random(37 * 96, 71);
    w[..32].fill(0.0);
    let qw = quantize(&w, 37, 96, GgmlDType::Q5_0);
    let data = qw.data().unwrap();
    let want = dequantized(&qw);
    let mut got = vec![f32::NAN; want.len()];
    dequantize_q5_0(q5_0_blocks(&data).unwrap(), &mut got);
    assert_eq!(got, want);
    assert!(q5_0_blocks(&data[1..]).is_err());
}
