//! Matrix-vector products of decoding, one weight shape at a time: the f32 GEMV (over the checkpoint's `[out, in]`
//! and over the transposed layout `W^T [in, out]`) beside a plain read of the same bytes, candle's quantized
//! `k_quants::matmul` and this crate's quantized kernels (`quant::kernels`) side by side, as weight bytes read
//! per second, for `idefics bench-gemv`.
//!
//! A decode step reads every weight once and the whole model does not fit in the caches, so each product here
//! cycles through enough copies of its weight to exceed them (`working_set` bytes per variant); a product on a
//! single small weight would run from L2/L3 and overstate what decoding sees.

use crate::nn::cpu_kernels::{linear_gemv, linear_transposed, sum, to_transposed_layout};
use crate::quant::kernels::Isa;
use crate::quant::{DecodePath, QWeight, QuantType};
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::{Device, Result, Tensor};
use std::time::Instant;

/// A weight shape, `in` features to `out` features (`[out, in]` stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemvShape {
    pub in_dim: usize,
    pub out_dim: usize,
}

impl std::str::FromStr for GemvShape {
    type Err = String;
    /// `INxOUT`, e.g. `576x1536`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parse = |v: &str| v.trim().parse::<usize>().ok().filter(|&n| n > 0);
        match s.split_once('x').map(|(a, b)| (parse(a), parse(b))) {
            Some((Some(in_dim), Some(out_dim))) => Ok(GemvShape { in_dim, out_dim }),
            _ => Err(format!(
                "shape `{s}`: expected IN x OUT as two positive integers, e.g. 576x1536"
            )),
        }
    }
}

impl std::fmt::Display for GemvShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.in_dim, self.out_dim)
    }
}

/// One variant's figure for one shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GemvFigure {
    pub shape: String,
    /// `f32` or a quantized type name (`q8_0`, `q5_0`, `q4k`, `q6k`, `bf16`).
    pub dtype: String,
    /// `gemv` (f32), `candle`, or one of this crate's instruction sets (`avx512-vnni`, `avx2`).
    pub path: String,
    pub rows: usize,
    /// Bytes of the weight one product reads.
    pub weight_bytes: usize,
    /// Median over rounds of the mean time of one product.
    pub seconds: f64,
    pub bytes_per_second: f64,
}

/// The variants measured for one weight: its copies and how to run one product on copy `i`.
struct Variant {
    dtype: String,
    path: String,
    weight_bytes: usize,
    run: Box<dyn Fn(usize) -> Result<()>>,
    copies: usize,
}

/// Measures every shape: f32 GEMV, and for each type in `types` that fits the shape's input width, candle's path
/// and each of this crate's instruction sets the CPU runs (scalar excluded). Variants alternate within each of
/// `rounds` rounds; a round of one variant runs products over its copies for at least `min_seconds`.
pub fn run(
    shapes: &[GemvShape],
    types: &[QuantType],
    rows: usize,
    working_set: usize,
    rounds: usize,
    min_seconds: f64,
) -> Result<Vec<GemvFigure>> {
    let mut figures = Vec::new();
    for &shape in shapes {
        let variants = variants(shape, types, rows, working_set)?;
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..rounds.max(1) {
            for (v, t) in variants.iter().zip(times.iter_mut()) {
                // One pass over the copies first, so pages and threads are warm.
                for i in 0..v.copies {
                    (v.run)(i)?;
                }
                let (start, mut calls) = (Instant::now(), 0usize);
                while calls < v.copies || start.elapsed().as_secs_f64() < min_seconds {
                    (v.run)(calls % v.copies)?;
                    calls += 1;
                }
                t.push(start.elapsed().as_secs_f64() / calls as f64);
            }
        }
        for (v, mut t) in variants.into_iter().zip(times) {
            t.sort_by(f64::total_cmp);
            let seconds = t[t.len() / 2];
            figures.push(GemvFigure {
                shape: shape.to_string(),
                dtype: v.dtype,
                path: v.path,
                rows,
                weight_bytes: v.weight_bytes,
                seconds,
                bytes_per_second: v.weight_bytes as f64 / seconds,
            });
        }
    }
    Ok(figures)
}

fn random_weight(shape: GemvShape, seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.in_dim * shape.out_dim)
        .map(|_| rng.random_range(-0.05f32..0.05))
        .collect();
    Tensor::from_vec(values, (shape.out_dim, shape.in_dim), &Device::Cpu)
}

fn variants(
    shape: GemvShape,
    types: &[QuantType],
    rows: usize,
    working_set: usize,
) -> Result<Vec<Variant>> {
    let w = random_weight(shape, 1)?;
    let x = random_weight(
        GemvShape {
            in_dim: shape.in_dim,
            out_dim: rows,
        },
        2,
    )?;
    let copies_for = |bytes: usize| working_set.div_ceil(bytes.max(1)).max(1);
    let mut out = Vec::new();

    let f32_bytes = shape.in_dim * shape.out_dim * 4;
    let copies = copies_for(f32_bytes);
    let dense: Vec<Tensor> = (0..copies).map(|_| w.copy()).collect::<Result<_>>()?;
    let xd = x.clone();
    out.push(Variant {
        dtype: "f32".into(),
        path: "gemv".into(),
        weight_bytes: f32_bytes,
        run: Box::new(move |i| linear_gemv(&xd, &dense[i], None).map(|_| ())),
        copies,
    });
    // The same product over the weight stored transposed (`W^T [in, out]`, the layout prefill prefers).
    let transposed: Vec<Tensor> = (0..copies)
        .map(|_| to_transposed_layout(&w))
        .collect::<Result<_>>()?;
    let xt = x.clone();
    out.push(Variant {
        dtype: "f32".into(),
        path: "gemv-transposed".into(),
        weight_bytes: f32_bytes,
        run: Box::new(move |i| linear_transposed(&xt, &transposed[i], None).map(|_| ())),
        copies,
    });
    // A plain read of the same bytes in calls of the same size, split between the threads: the ceiling a
    // memory-bound product can reach on this machine at this moment (the one-buffer probe reads 256 MiB per call).
    let plain: Vec<Vec<f32>> = (0..copies)
        .map(|_| w.flatten_all()?.to_vec1::<f32>())
        .collect::<Result<_>>()?;
    out.push(Variant {
        dtype: "f32".into(),
        path: "plain-read".into(),
        weight_bytes: f32_bytes,
        run: Box::new(move |i| {
            use rayon::prelude::*;
            let part = plain[i].len().div_ceil(rayon::current_num_threads());
            let total: f32 = plain[i].par_chunks(part.max(1)).map(sum).sum();
            std::hint::black_box(total);
            Ok(())
        }),
        copies,
    });

    let x_vec = x.flatten_all()?.to_vec1::<f32>()?;
    for &ty in types.iter().filter(|ty| ty.fits(shape.in_dim)) {
        let q = QWeight::quantize(&w, ty)?;
        let bytes = q.size_in_bytes();
        let stored = q.qtensor().data()?.to_vec();
        let copies = copies_for(bytes);
        let weights: Vec<QWeight> = (0..copies)
            .map(|_| {
                let dims = vec![shape.out_dim, shape.in_dim];
                QWeight::from_qtensor(qtensor_from_ggml(ty.ggml(), &stored, dims, &Device::Cpu)?)
            })
            .collect::<Result<_>>()?;
        let weights = std::rc::Rc::new(weights);
        let mut paths = vec![DecodePath::Candle];
        if crate::quant::kernels::TYPES.contains(&ty) {
            paths.extend(
                Isa::available()
                    .into_iter()
                    .filter(|&isa| isa != Isa::Scalar)
                    .map(DecodePath::Kernel),
            );
        }
        for path in paths {
            let (weights, x_vec) = (weights.clone(), x_vec.clone());
            out.push(Variant {
                dtype: ty.name().into(),
                path: path.name().into(),
                weight_bytes: bytes,
                run: Box::new(move |i| weights[i].matvec(&x_vec, rows, path).map(|_| ())),
                copies,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_a_tiny_run_reports_every_path() {
        assert_eq!(
            "576x1536".parse::<GemvShape>(),
            Ok(GemvShape {
                in_dim: 576,
                out_dim: 1536
            })
        );
        assert!("576".parse::<GemvShape>().is_err());
        assert!("0x5".parse::<GemvShape>().is_err());
        let shape = GemvShape {
            in_dim: 256,
            out_dim: 8,
        };
        let figures = run(&[shape], &QuantType::ALL, 1, 64 << 10, 1, 0.0).unwrap();
        let kernels = Isa::available().len() - 1;
        // f32 in both layouts and the plain read, then candle and each of our kernels for every type.
        assert_eq!(figures.len(), 3 + QuantType::ALL.len() * (1 + kernels));
        assert_eq!(figures[0].weight_bytes, 256 * 8 * 4);
        assert!(figures
            .iter()
            .all(|f| f.seconds > 0.0 && f.bytes_per_second > 0.0));
        assert_eq!(figures[1].path, "gemv-transposed");
        assert_eq!(figures[2].path, "plain-read");
        assert_eq!(figures[3].weight_bytes, 8 * 8 * 34);
    }
}
