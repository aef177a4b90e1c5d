use super::*;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

fn gaussian(rows: usize, cols: usize, seed: u64) -> Tensor {
    // A fixed pseudo-random matrix (splitmix64 -> Box-Muller), so failures reproduce.
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let (u1, u2) = (next().max(1e-12), next());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    (num.to_scalar::<f32>().unwrap() / den.to_scalar::<f32>().unwrap()).sqrt()
}

#[test]
fn names_parse_and_sizes_are_gguf_s() {
    for t in QuantType::ALL {
        assert_eq!(t.name().parse::<QuantType>().unwrap(), t);
    }
    assert_eq!("Q4_K_M".parse::<QuantType>().unwrap(), QuantType::Q4K);
    let err = "q3k".parse::<QuantType>().unwrap_err();
    assert!(err.contains("q8_0, q5_0, q4k, q6k or bf16"), "{err}");
    assert_eq!(QuantType::Q8_0.bits_per_weight(), 8.5);
    assert_eq!(QuantType::Bf16.bits_per_weight(), 16.0);
    assert_eq!(QuantType::Bf16.for_width(40), Some(QuantType::Bf16));
    assert_eq!(QuantType::Bf16.head_type(), QuantType::Bf16);
    assert_eq!(QuantType::Q4K.bits_per_weight(), 4.5);
    assert_eq!(QuantType::Q6K.bits_per_weight(), 6.5625);
    assert_eq!(QuantType::Q4K.for_width(512), Some(QuantType::Q4K));
    assert_eq!(QuantType::Q5_0.bits_per_weight(), 5.5);
    // llama.cpp's stand-ins where rows fit no 256-block: q4k -> q5_0, q6k -> q8_0.
    assert_eq!(QuantType::Q4K.for_width(576), Some(QuantType::Q5_0));
    assert_eq!(QuantType::Q6K.for_width(960), Some(QuantType::Q8_0));
    assert_eq!(QuantType::Q5_0.for_width(96), Some(QuantType::Q5_0));
    assert_eq!(QuantType::Q5_0.for_width(40), None);
    assert_eq!(QuantType::Q6K.for_width(40), None);
    assert_eq!(QuantType::Q4K.head_type(), QuantType::Q6K);
}

#[test]
fn rounding_error_follows_the_bits() {
    let w = gaussian(64, 512, 1);
    let err = |t| rel_err(&QWeight::quantize(&w, t).unwrap().dequantize().unwrap(), &w);
    let (bf16, q8, q6, q5, q4) = (
        err(QuantType::Bf16),
        err(QuantType::Q8_0),
        err(QuantType::Q6K),
        err(QuantType::Q5_0),
        err(QuantType::Q4K),
    );
    // bf16 keeps 8 significant bits: a relative rounding error of at most 2^-9 per weight.
    assert!(bf16 < 2f32.powi(-9) && bf16 > 0.0, "bf16 {bf16}");
    assert!(q8 < 0.01 && q8 > bf16, "q8_0 {q8}");
    assert!(q6 < 0.03 && q6 > q8, "q6k {q6}");
    assert!(q5 < 0.06 && q5 > q6, "q5_0 {q5}");
    assert!(q4 < 0.12 && q4 > q5, "q4k {q4}");
}

#[test]
fn both_product_paths_agree_with_the_dequantized_weight() {
    let w = gaussian(300, 512, 2); // 300 outputs: not a multiple of the 4-column kernel
    for t in QuantType::ALL {
        let q = QWeight::quantize(&w, t).unwrap();
        let dense = q.dequantize().unwrap();
        for rows in [1, 3, GEMM_MIN_ROWS, 40] {
            let x = gaussian(rows, 512, 3 + rows as u64);
            let want = x.matmul(&dense.t().unwrap()).unwrap();
            let got = q.matmul_t(&x).unwrap();
            assert_eq!(got.dims(), [rows, 300]);
            let e = rel_err(&got, &want);
            if rows >= GEMM_MIN_ROWS || t == QuantType::Bf16 {
                // Same f32 GEMM on the same dequantized weight; bf16's own product keeps f32 activations.
                assert!(e < 1e-6, "{t} rows {rows}: {e}");
            } else {
                // The activation is rounded to 8 bits for the integer dot products.
                assert!(e < 0.01, "{t} rows {rows}: {e}");
            }
        }
    }
}

#[test]
fn parallel_quantization_gives_the_blocks_of_the_whole() {
    let w = gaussian(1000, 256, 13);
    for t in QuantType::ALL {
        let whole = QTensor::quantize(&w, t.ggml()).unwrap();
        let parallel = QWeight::quantize(&w, t).unwrap();
        assert_eq!(
            whole.data().unwrap(),
            parallel.qtensor().data().unwrap(),
            "{t}"
        );
    }
}

#[test]
fn row_lookup_is_the_dequantized_row() {
    let w = gaussian(50, 256, 4);
    for t in QuantType::ALL {
        let q = QWeight::quantize(&w, t).unwrap();
        let ids = [7u32, 0, 49, 7];
        let got = q.rows(&ids).unwrap();
        let idx = Tensor::new(&ids[..], &Device::Cpu).unwrap();
        let want = q.dequantize().unwrap().index_select(&idx, 0).unwrap();
        assert_eq!(rel_err(&got, &want), 0.0, "{t}");
        let err = q.rows(&[50]).unwrap_err().to_string();
        assert!(err.contains("token id 50 is out of range"), "{err}");
    }
}

#[test]
fn a_quantized_linear_keeps_shape_bias_and_dtype() {
    let w = gaussian(96, 256, 5);
    let b = gaussian(1, 96, 6).squeeze(0).unwrap();
    let mut layer = Linear::new(w.clone(), Some(b.clone()));
    let x = gaussian(6, 256, 7).reshape((2, 3, 256)).unwrap();
    let dense = layer.forward(&x).unwrap();
    layer.set_quantized(QWeight::quantize(&w, QuantType::Q8_0).unwrap());
    assert!(layer.weight().is_err() && layer.dense_weight().is_none());
    let quant = layer.forward(&x).unwrap();
    assert_eq!(quant.dims(), [2, 3, 96]);
    assert!(rel_err(&quant, &dense) < 0.01);
    let x16 = x.to_dtype(DType::F16).unwrap();
    assert_eq!(layer.forward(&x16).unwrap().dtype(), DType::F16);
    let bad = layer.forward(&gaussian(1, 128, 8)).unwrap_err().to_string();
    assert!(bad.contains("128 features"), "{bad}");
}

#[test]
fn in_situ_policy_falls_back_and_reports() {
    let mut q = InSituQuantizer::new(QuantType::Q4K);
    let w512 = gaussian(8, 512, 9);
    let w64 = gaussian(8, 64, 10);
    let w40 = gaussian(8, 40, 11);
    let a = q.quantize("a.weight", &w512, Role::Layer).unwrap().unwrap();
    let h = q
        .quantize("lm_head.weight", &w512, Role::Head)
        .unwrap()
        .unwrap();
    let b = q.quantize("b.weight", &w64, Role::Layer).unwrap().unwrap();
    assert!(q.quantize("c.weight", &w40, Role::Layer).unwrap().is_none());
    assert_eq!(
        (a.quant_type(), h.quant_type(), b.quant_type()),
        (QuantType::Q4K, QuantType::Q6K, QuantType::Q5_0)
    );
    assert_eq!(q.report.kept_dense, vec!["c.weight".to_string()]);
    assert_eq!(q.report.quantized.values().sum::<usize>(), 3);
    assert_eq!(q.report.f32_bytes, (8 * 512 * 2 + 8 * 64) * 4);
    let stored = a.size_in_bytes() + h.size_in_bytes() + b.size_in_bytes();
    assert_eq!(q.report.quantized_bytes, stored);
    // The fallback weight keeps q5_0's rounding, and a product through it is that weight's product (up to the
    // activation's 8-bit rounding).
    let dq = b.dequantize().unwrap();
    let we = rel_err(&dq, &w64);
    assert!(we > 0.0 && we < 0.06, "{we}");
    let x = gaussian(1, 64, 12);
    let e = rel_err(
        &b.matmul_t(&x).unwrap(),
        &x.matmul(&dq.t().unwrap()).unwrap(),
    );
    assert!(e < 0.01, "{e}");
}

#[test]
fn decoding_takes_the_faster_path_per_type_unless_forced() {
    use crate::nn::{kernel_choice, KernelFamily};
    let forced = kernel_choice::chosen(KernelFamily::Quantized);
    match (kernels::Isa::detect(), forced) {
        (Some(isa), None) => {
            assert_eq!(
                DecodePath::best(QuantType::Q8_0, 1 << 10),
                DecodePath::Kernel(isa)
            );
            for t in [QuantType::Q4K, QuantType::Q6K] {
                assert_eq!(
                    DecodePath::best(t, KERNEL_MIN_BYTES - 1),
                    DecodePath::Candle
                );
                assert_eq!(
                    DecodePath::best(t, KERNEL_MIN_BYTES),
                    DecodePath::Kernel(isa)
                );
            }
        }
        (None, _) => assert_eq!(
            DecodePath::best(QuantType::Q8_0, 1 << 30),
            DecodePath::Candle
        ),
        // IDEFICS_QUANT_KERNELS is set for this run: nothing to check about the default.
        (Some(_), Some(_)) => {}
    }
    // bf16 and q5_0 always run this crate's kernel (candle's rounds bf16's activations; its q5_0 is scalar).
    for t in [QuantType::Bf16, QuantType::Q5_0] {
        assert!(
            matches!(DecodePath::best(t, 1 << 10), DecodePath::Kernel(_)),
            "{t}"
        );
    }
}

#[test]
fn a_many_row_product_is_the_dense_panel_product_of_the_dequantized_weight() {
    use crate::nn::cpu_kernels::PanelWeight;
    // 300 outputs: four full panels of 64 and a padded one; 300 rows: two GEMM blocks of 128 and a short one.
    let w = gaussian(300, 256, 21);
    for t in QuantType::ALL {
        let q = QWeight::quantize(&w, t).unwrap();
        let dense = PanelWeight::from_weight(&q.dequantize().unwrap()).unwrap();
        for rows in [GEMM_MIN_ROWS, GEMM_MIN_ROWS + 3, 300] {
            let x = gaussian(rows, 256, 22 + rows as u64);
            let got = q.matmul_t(&x).unwrap();
            assert_eq!(got.dims(), [rows, 300]);
            let want = dense.forward(&x, None).unwrap();
            assert_eq!(rel_err(&got, &want), 0.0, "{t}, {rows} rows");
        }
        let rows = q.dequantize_rows(290, 10).unwrap();
        let tail = q.dequantize().unwrap().narrow(0, 290, 10).unwrap();
        assert_eq!(rel_err(&rows, &tail), 0.0, "{t}");
        assert!(q.dequantize_rows(295, 10).is_err());
    }
}
