//! Gradient memory and time of a frozen linear layer: candle's matmul vs `FrozenLinear`.
//!
//! Run: cargo run --release -p idefics --example frozen_linear_bench [-- <tokens> <in> <out> [cuda]]
//! The gradient memory is the total size of the tensors left in the `GradStore` by one backward.

use candle_core::{DType, Device, Tensor, Var};
use idefics_train::frozen::FrozenLinear;
use std::time::Instant;

fn grad_bytes(grads: &candle_core::backprop::GradStore) -> usize {
    grads
        .get_ids()
        .filter_map(|id| grads.get_id(*id))
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
}

fn main() -> candle_core::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (tokens, d_in, d_out) = match args.as_slice() {
        [t, i, o, ..] => (*t, *i, *o),
        _ => (512, 1024, 4096),
    };
    let dev = if std::env::args().any(|a| a == "cuda") {
        Device::new_cuda(0)?
    } else {
        Device::Cpu
    };
    let w = Tensor::randn(0f32, 0.02, (d_out, d_in), &dev)?;
    let x = Var::randn(0f32, 1.0, (tokens, d_in), &dev)?;
    let frozen = FrozenLinear::new(w.clone(), None)?;
    println!("x [{tokens}, {d_in}] @ W^T [{d_in}, {d_out}] f32 on {dev:?}");
    for (name, use_frozen) in [("matmul", false), ("FrozenLinear", true)] {
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..5 {
            let t0 = Instant::now();
            let y = if use_frozen {
                frozen.forward(x.as_tensor())?
            } else {
                x.as_tensor().matmul(&w.t()?)?
            };
            let grads = y.sqr()?.mean_all()?.backward()?;
            let g = grads
                .get(x.as_tensor())
                .expect("input grad")
                .sum_all()?
                .to_dtype(DType::F32)?;
            let _ = g.to_scalar::<f32>()?; // wait for the device
            best = best.min(t0.elapsed().as_secs_f64());
            bytes = grad_bytes(&grads);
        }
        println!(
            "{name:>13}: fwd+bwd best of 5 {:7.2} ms, GradStore {:8.2} MiB",
            best * 1e3,
            bytes as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
