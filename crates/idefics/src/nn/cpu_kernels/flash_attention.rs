//! Fused scaled-dot-product attention for f32 inference on the CPU, flash-attention style: per block of query
//! rows, the keys are visited in tiles, the softmax is kept online (running max `m`, running sum `l`, output
//! rescaled when `m` grows), so no `[Lq, Lk]` score tensor is ever written. The two products of a tile
//! (`Q K^T` and `P V`) go through the `gemm` crate, single-threaded; tasks (batch x kv head x query block) run on
//! rayon's threads.
//!
//! The mask is the additive mask [`super::super::eager_attention`] takes, with its exact meaning: a key whose
//! mask value is below [`MASKED`] gets weight `exp(min - max) == 0` there, so key tiles masked for every row of a
//! block (the future of a causal mask, keys before a sliding window, left padding) are skipped. A row whose keys
//! are all masked gets eager's result, the mean of every value (its scores all round to the same `min`): such a
//! row turns off the skipping for its block.

use super::{simd, Strided};
use candle_core::{bail, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Query rows per task (rows of one kv head's group: `n_rep` query heads x `Lq` queries). Larger blocks make
/// longer GEMM calls and fewer passes over the keys: on bench-150m's 980x980 image (4900 patches) 256 x 512
/// encoded 10-15 % faster than 64 x 256 (`docs/benchmarks.md`).
const BLOCK_Q: usize = 256;
/// Keys per tile: the score tile is `BLOCK_Q x BLOCK_K` f32 = 512 KiB, inside a core's L2.
const BLOCK_K: usize = 512;
/// Additive mask values at or below this are treated as "masked" when choosing which key tiles to visit.
/// transformers masks with `finfo(f32).min`; any value this negative gives an exact zero weight next to an
/// unmasked key.
pub const MASKED: f32 = -1e30;

/// A 4-d f32 view `[b, h, l, d]` over a CPU storage: element strides and start offset.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 4],
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], layout: &Layout, what: &str) -> Result<Self> {
        let stride: [usize; 4] = match layout.stride().try_into() {
            Ok(s) => s,
            Err(_) => bail!(
                "flash_attention: {what} must be 4-d, got {:?}",
                layout.dims()
            ),
        };
        Ok(Self {
            data,
            start: layout.start_offset(),
            stride,
        })
    }

    fn offset(&self, b: usize, h: usize, l: usize) -> usize {
        self.start + b * self.stride[0] + h * self.stride[1] + l * self.stride[2]
    }
}

fn cpu_f32<'a>(storage: &'a Storage, what: &str) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(s) => s.as_slice::<f32>(),
        _ => bail!("flash_attention: {what} must be on the CPU"),
    }
}

/// The output buffer, written by several tasks at disjoint rows.
struct OutPtr(*mut f32);
// SAFETY: each task writes only the rows (b, query, head) of its own block; no two tasks share one.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// Attention for `q [B, H, Lq, D]`, `k, v [B, Hkv, Lk, D]` (any strides; query head h uses kv head
/// `h / (H / Hkv)`), optional additive `mask` broadcastable to `[B, H, Lq, Lk]`, all f32 on the CPU.
/// Returns `[B, Lq, H * D]`, as [`super::super::eager_attention`] does.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let (bk, hkv, lk, dk) = k.dims4()?;
    if k.dims() != v.dims() || bk != b || dk != d || hkv == 0 || h % hkv != 0 {
        bail!(
            "flash_attention: incompatible shapes q {:?}, k {:?}, v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let mask = match mask {
        // Broadcasting gives stride 0 on the broadcast dims; a key stride of 1 lets tiles add mask rows directly.
        Some(m) => {
            let m = m.broadcast_as((b, h, lq, lk))?;
            Some(if m.stride()[3] == 1 {
                m
            } else {
                m.contiguous()?
            })
        }
        None => None,
    };
    let mut out = vec![0f32; b * lq * h * d];
    if out.is_empty() || lk == 0 {
        return Tensor::from_vec(out, (b, lq, h * d), &Device::Cpu);
    }
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let qv = View::new(cpu_f32(&qs, "q")?, ql, "q")?;
    let kv = View::new(cpu_f32(&ks, "k")?, kl, "k")?;
    let vv = View::new(cpu_f32(&vs, "v")?, vl, "v")?;
    let mask_guard = mask.as_ref().map(|m| m.storage_and_layout());
    let mv = match &mask_guard {
        Some((ms, ml)) => Some(View::new(cpu_f32(ms, "mask")?, ml, "mask")?),
        None => None,
    };
    let shape = Shape {
        h,
        lq,
        lk,
        d,
        n_rep: h / hkv,
        scale: scale as f32,
    };
    let rows = shape.n_rep * lq;
    let blocks = rows.div_ceil(BLOCK_Q);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    (0..b * hkv * blocks).into_par_iter().for_each(|task| {
        let (bi, rest) = (task / (hkv * blocks), task % (hkv * blocks));
        let (g, blk) = (rest / blocks, rest % blocks);
        let r0 = blk * BLOCK_Q;
        let block = Block {
            b: bi,
            kv_head: g,
            rows: r0..(r0 + BLOCK_Q).min(rows),
        };
        // SAFETY: `out` has B * Lq * H * D elements and outlives the parallel loop; blocks write disjoint rows.
        unsafe { run_block(&shape, &block, &qv, &kv, &vv, mv.as_ref(), out_ptr.0) };
    });
    drop((qs, ks, vs, mask_guard));
    Tensor::from_vec(out, (b, lq, h * d), &Device::Cpu)
}

struct Shape {
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    n_rep: usize,
    scale: f32,
}

/// Rows `rows` of kv head `kv_head`'s group in batch `b`: row r is query `r / n_rep` of head
/// `kv_head * n_rep + r % n_rep`. Query-major, so that a block holds few query positions: under a causal mask its
/// key range (the union of its rows') then wastes less (SmolVLM's 3 heads a group: 1.16x the needed scores instead
/// of 1.5x for a 512-token prefill).
struct Block {
    b: usize,
    kv_head: usize,
    rows: std::ops::Range<usize>,
}

/// First and one-past-last key with a mask value above [`MASKED`], or `None` when every key is masked.
fn visible_range(mask_row: &[f32]) -> Option<(usize, usize)> {
    let first = mask_row.iter().position(|&m| m > MASKED)?;
    let last = mask_row.iter().rposition(|&m| m > MASKED)?;
    Some((first, last + 1))
}

/// # Safety
/// `out` must point to `[B, Lq, H * D]` f32 values; no other thread may write the rows of this block.
unsafe fn run_block(
    s: &Shape,
    blk: &Block,
    q: &View,
    k: &View,
    v: &View,
    mask: Option<&View>,
    out: *mut f32,
) {
    let (d, lk) = (s.d, s.lk);
    let n = blk.rows.len();
    // Gather the block's query rows (any strides) into one contiguous [n, D] matrix, and find the keys to visit.
    let mut qbuf = vec![0f32; n * d];
    let mut heads = Vec::with_capacity(n);
    let mut mask_rows = Vec::with_capacity(n);
    let (mut lo, mut hi) = (lk, 0);
    for (r, row) in blk.rows.clone().enumerate() {
        let (head, query) = (blk.kv_head * s.n_rep + row % s.n_rep, row / s.n_rep);
        heads.push((head, query));
        let src = q.offset(blk.b, head, query);
        for (j, x) in qbuf[r * d..(r + 1) * d].iter_mut().enumerate() {
            *x = q.data[src + j * q.stride[3]];
        }
        match mask {
            Some(m) => {
                let off = m.offset(blk.b, head, query);
                let mrow = &m.data[off..off + lk];
                mask_rows.push(off);
                let (a, z) = visible_range(mrow).unwrap_or((0, lk));
                lo = lo.min(a);
                hi = hi.max(z);
            }
            None => (lo, hi) = (0, lk),
        }
    }
    let mut scores = vec![0f32; n * BLOCK_K];
    let mut acc = vec![0f32; n * d];
    let mut run_max = vec![f32::NEG_INFINITY; n];
    let mut run_sum = vec![0f32; n];
    let k_base = k.offset(blk.b, blk.kv_head, 0);
    let v_base = v.offset(blk.b, blk.kv_head, 0);
    let mut start = lo;
    while start < hi {
        let width = BLOCK_K.min(hi - start);
        let tile = &mut scores[..n * width];
        // tile = scale * Q K[start..start + width]^T; gemm reads K transposed through its strides.
        super::gemm_f32(
            (n, width, d),
            Strided {
                ptr: tile.as_mut_ptr(),
                rs: width as isize,
                cs: 1,
            },
            false,
            Strided {
                ptr: qbuf.as_ptr(),
                rs: d as isize,
                cs: 1,
            },
            Strided {
                ptr: k.data.as_ptr().add(k_base + start * k.stride[2]),
                rs: k.stride[3] as isize,
                cs: k.stride[2] as isize,
            },
            s.scale,
            1,
        );
        for r in 0..n {
            let row = &mut tile[r * width..(r + 1) * width];
            let mrow = mask.map(|m| &m.data[mask_rows[r] + start..mask_rows[r] + start + width]);
            let tile_max = simd::add_max(row, mrow);
            let new_max = run_max[r].max(tile_max);
            let sum = simd::exp_sub_sum(row, new_max);
            // The first tile finds run_max = -inf: the correction is exp(-inf) = 0 on an all-zero accumulator.
            let correction = simd::exp(run_max[r] - new_max);
            if correction != 1.0 {
                simd::scale(&mut acc[r * d..(r + 1) * d], correction);
            }
            run_sum[r] = run_sum[r] * correction + sum;
            run_max[r] = new_max;
        }
        // acc += P V[start..start + width].
        super::gemm_f32(
            (n, d, width),
            Strided {
                ptr: acc.as_mut_ptr(),
                rs: d as isize,
                cs: 1,
            },
            true,
            Strided {
                ptr: tile.as_ptr(),
                rs: width as isize,
                cs: 1,
            },
            Strided {
                ptr: v.data.as_ptr().add(v_base + start * v.stride[2]),
                rs: v.stride[2] as isize,
                cs: v.stride[3] as isize,
            },
            1.0,
            1,
        );
        start += width;
    }
    let hd = s.h * d;
    for (r, &(head, query)) in heads.iter().enumerate() {
        let inv = 1.0 / run_sum[r];
        let dst = out.add((blk.b * s.lq + query) * hd + head * d);
        for (j, &x) in acc[r * d..(r + 1) * d].iter().enumerate() {
            *dst.add(j) = x * inv;
        }
    }
}
