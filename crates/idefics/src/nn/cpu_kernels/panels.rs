//! `y = x W^T + b` for f32 inference on the CPU with the weight stored in column panels: `[ceil(out / 64)][in][64]`,
//! each panel the 64 outputs `64 p .. 64 p + 64` of every input, contiguous (the last panel zero-padded).
//!
//! Why: the text decoder does both a prefill (hundreds of rows: a GEMM) and a decoding step (one row: a GEMV that
//! reads every weight once). The row-major checkpoint order suits the GEMV (each weight row read start to end) but
//! makes the `gemm` crate repack the activations on every call; the transposed order (`super::transposed`) suits
//! the GEMM but the GEMV over it walks four places at once and streams at 0.63-0.92x (`docs/benchmarks.md`,
//! "Decoding over the transposed layout"). A panel is both: for the GEMV, one contiguous stretch of memory read
//! from start to end into 64 accumulators, no partial sums; for the GEMM, exactly the column-major left operand
//! the crate's microkernel reads in place (one call per panel and block of rows, threads over the calls), which
//! gives the transposed path's sums bit for bit. The cost: the layer is no longer a strided `[out, in]` tensor,
//! so it serves inference only (`crate::nn::Linear::use_panel_layout`), and [`PanelWeight::to_tensor`] rebuilds
//! the plain weight when something asks for it.

use super::{f32_slice, simd, Strided};
use candle_core::{bail, Device, Result, Tensor};
use rayon::prelude::*;

/// Outputs per panel: the `gemm` crate's f32 AVX-512 microkernel height (4 registers of 16), and 64 accumulators
/// for the GEMV (8 AVX2 or 4 AVX-512 registers).
pub const PANEL: usize = 64;
/// At most this many rows take the GEMV; more reuse each weight enough for the GEMM.
pub const MAX_GEMV_ROWS: usize = 4;
/// Rows of `x` per GEMM task (with one panel): 128 x 64 outputs keep two threads busy on a 512-row prefill of a
/// narrow projection (SmolVLM's k / v: 3 panels).
const GEMM_ROWS_PER_TASK: usize = 128;

/// Lets the `gemm` crate's microkernel read a full panel where it lies. On AVX-512 the panel already has the
/// layout the crate packs its left operand into (`[k][64]`, the microkernel 64 rows high), so the packing is a
/// copy for nothing: 5 % of a SmolVLM-256M prefill profile, and prefill 3-15 % faster without it (four alternated
/// pairs, `docs/benchmarks.md`). The crate reads a column-major left operand in place only below a process-wide
/// width threshold (default 8 microkernel widths, 48 rows of `x`); this raises it to the crate's maximum once,
/// when the first panel weight is built. The sums do not change (the same microkernel reads the same values); the
/// setting reaches every single-threaded GEMM of the process whose left operand is column-major with a multiple
/// of 16 rows. Left as it is on machines without AVX-512, where it was not measured.
pub(crate) fn read_panels_in_place() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            gemm::set_lhs_packing_threshold_single_thread(256);
        }
    });
}

/// A linear weight `[out, in]` stored as column panels (module docs).
pub struct PanelWeight {
    data: Vec<f32>,
    out_dim: usize,
    in_dim: usize,
}

impl std::fmt::Debug for PanelWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PanelWeight([{}, {}])", self.out_dim, self.in_dim)
    }
}

impl PanelWeight {
    /// Packs an f32 CPU weight `[out, in]` (any strides) into panels, one panel per rayon task.
    pub fn from_weight(weight: &Tensor) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if weight.dtype() != candle_core::DType::F32 || !weight.device().is_cpu() {
            bail!(
                "panel weight: needs an f32 CPU weight, got {:?} on {:?}",
                weight.dtype(),
                weight.device()
            );
        }
        if out_dim == 0 || in_dim == 0 {
            bail!("panel weight: empty weight {:?}", weight.dims());
        }
        read_panels_in_place();
        let weight = weight.contiguous()?;
        let (storage, layout) = weight.storage_and_layout();
        let w = f32_slice(&storage, layout, "panel weight")?;
        let panels = out_dim.div_ceil(PANEL);
        let mut data = vec![0f32; panels * in_dim * PANEL];
        data.par_chunks_mut(in_dim * PANEL)
            .enumerate()
            .for_each(|(p, panel)| {
                let o0 = p * PANEL;
                // Output row by output row: each read contiguously, written with a stride of one panel row.
                for j in 0..PANEL.min(out_dim - o0) {
                    let row = &w[(o0 + j) * in_dim..(o0 + j + 1) * in_dim];
                    for (k, &v) in row.iter().enumerate() {
                        panel[k * PANEL + j] = v;
                    }
                }
            });
        Ok(Self {
            data,
            out_dim,
            in_dim,
        })
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// The plain `[out, in]` weight again (a copy).
    pub fn to_tensor(&self) -> Result<Tensor> {
        let mut w = vec![0f32; self.out_dim * self.in_dim];
        for (o, row) in w.chunks_exact_mut(self.in_dim).enumerate() {
            let panel = self.panel(o / PANEL);
            for (k, v) in row.iter_mut().enumerate() {
                *v = panel[k * PANEL + o % PANEL];
            }
        }
        Tensor::from_vec(w, (self.out_dim, self.in_dim), &Device::Cpu)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.in_dim * PANEL..(p + 1) * self.in_dim * PANEL]
    }

    /// `x2 [rows, in] W^T + b`, `[rows, out]`; `x2` and `bias` f32 on the CPU.
    pub fn forward(&self, x2: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (rows, in_dim) = x2.dims2()?;
        if in_dim != self.in_dim {
            bail!(
                "panel linear: x has {in_dim} columns but the weight is [{}, {}]",
                self.out_dim,
                self.in_dim
            );
        }
        let bias = match bias {
            Some(b) if b.dims() == [self.out_dim] => {
                Some(super::contiguous_f32(b, "panel linear: bias")?)
            }
            Some(b) => bail!(
                "panel linear: bias {:?} does not match {} outputs",
                b.dims(),
                self.out_dim
            ),
            None => None,
        };
        let x2 = x2.contiguous()?;
        let (xs, xl) = x2.storage_and_layout();
        let x = f32_slice(
            &xs,
            xl,
            "panel linear: x (this layer is stored for CPU inference)",
        )?;
        let y = if rows == 0 {
            Vec::new()
        } else if rows <= MAX_GEMV_ROWS {
            self.gemv(x, rows, bias.as_deref())
        } else {
            self.gemm(x, rows, bias.as_deref())
        };
        drop(xs);
        Tensor::from_vec(y, (rows, self.out_dim), &Device::Cpu)
    }

    /// One task per panel: each row of `x` against the panel's 64 outputs, the panel read once per row (from L2
    /// after the first).
    fn gemv(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (in_dim, out_dim) = (self.in_dim, self.out_dim);
        let panels = out_dim.div_ceil(PANEL);
        let mut by_panel = vec![0f32; panels * rows * PANEL];
        by_panel
            .par_chunks_mut(rows * PANEL)
            .enumerate()
            .for_each(|(p, acc)| {
                let panel = self.panel(p);
                for (r, acc) in acc.chunks_exact_mut(PANEL).enumerate() {
                    simd::panel_gemv(panel, &x[r * in_dim..(r + 1) * in_dim], acc);
                }
            });
        let mut y = vec![0f32; rows * out_dim];
        for (r, yr) in y.chunks_exact_mut(out_dim).enumerate() {
            for (p, ys) in yr.chunks_mut(PANEL).enumerate() {
                let acc = &by_panel[(p * rows + r) * PANEL..][..ys.len()];
                match bias {
                    Some(b) => {
                        for ((y, &a), &bv) in ys.iter_mut().zip(acc).zip(&b[p * PANEL..]) {
                            *y = a + bv;
                        }
                    }
                    None => ys.copy_from_slice(acc),
                }
            }
        }
        y
    }

    /// `y^T = W x^T` by blocks: task (panel, block of rows) is one single-threaded GEMM call over the panel in
    /// place, written into its rectangle of `y [rows, out]` (the tasks' rectangles are disjoint).
    fn gemm(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let shape = (rows, self.in_dim, self.out_dim);
        let groups = rows.div_ceil(GEMM_ROWS_PER_TASK);
        gemm_by_panels(x, shape, bias, groups, |p, use_panel| {
            use_panel(self.panel(p), PanelLayout::Panel)
        })
    }
}

/// How a panel's 64 (or fewer) outputs x `in` weights lie in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PanelLayout {
    /// `[in][64]`, as [`PanelWeight`] stores them (the GEMM reads it in place).
    Panel,
    /// `[m][in]`: the weight's own rows (the GEMM packs them).
    Rows,
}

/// `y [rows, out] = x [rows, in] W^T (+ bias)` with `W` given 64 outputs at a time: `with_panel(p, f)` calls `f`
/// with panel `p` and its [`PanelLayout`], stored ([`PanelWeight`], `[in][64]` with the last one zero-padded) or
/// made on the spot (a quantized weight's 64 rows dequantized, `crate::quant::QWeight`). The rows are cut into blocks of
/// [`GEMM_ROWS_PER_TASK`], spread over `groups` tasks per panel (1: one task per panel, so a panel made on the spot
/// is made once). A stored panel is read in place by one single-threaded GEMM call per block; a panel of rows,
/// which the GEMM packs, by one call over all the task's blocks, so that it is packed once (four calls over 512
/// rows held a quantized prefill at 0.8x of the f32 one). The sums depend on neither `groups` nor the calls.
pub(crate) fn gemm_by_panels(
    x: &[f32],
    (rows, in_dim, out_dim): (usize, usize, usize),
    bias: Option<&[f32]>,
    groups: usize,
    with_panel: impl Fn(usize, &mut dyn FnMut(&[f32], PanelLayout)) + Sync,
) -> Vec<f32> {
    assert!(x.len() >= rows * in_dim && bias.is_none_or(|b| b.len() == out_dim));
    read_panels_in_place();
    let len = rows * out_dim;
    let mut y = match bias {
        Some(b) => super::repeat_rows(b, rows),
        None => Vec::with_capacity(len),
    };
    let panels = out_dim.div_ceil(PANEL);
    let blocks = rows.div_ceil(GEMM_ROWS_PER_TASK);
    let groups = groups.clamp(1, blocks.max(1));
    let per_group = blocks.div_ceil(groups);
    let dst = SendPtr(y.as_mut_ptr());
    (0..panels * groups).into_par_iter().for_each(|t| {
        let (p, g) = (t % panels, t / panels);
        let o0 = p * PANEL;
        let m = PANEL.min(out_dim - o0);
        with_panel(p, &mut |panel: &[f32], layout: PanelLayout| {
            // A panel read in place goes block by block; rows the GEMM must pack go in one call, packed once.
            let (rs, cs, len, step) = match layout {
                PanelLayout::Panel => (1, PANEL, in_dim * PANEL, GEMM_ROWS_PER_TASK),
                PanelLayout::Rows => (in_dim, 1, m * in_dim, per_group * GEMM_ROWS_PER_TASK),
            };
            assert!(panel.len() >= len);
            let (start, end) = (
                g * per_group * GEMM_ROWS_PER_TASK,
                ((g + 1) * per_group * GEMM_ROWS_PER_TASK).min(rows),
            );
            for r0 in (start..end).step_by(step) {
                let n = step.min(end - r0);
                // SAFETY: `y` has capacity `rows * out_dim`; this call writes only y[r][o] for r in r0..r0+n and
                // o in o0..o0+m (dst strides: 1 along outputs, `out_dim` along rows), a rectangle no other call
                // touches (each (panel, block) pair belongs to one task). The panel covers its `m x in_dim` matrix
                // under `(rs, cs)` (asserted: `[in][64]` read column-major with column stride PANEL, or `m` rows of
                // `in_dim`), x rows r0..r0+n are the `in_dim x n` right operand (column stride in_dim; `x` covers
                // `rows * in_dim`, asserted). Without a bias (`accumulate` false) the GEMM writes every element of
                // its rectangle (in_dim >= 1) and reads none.
                unsafe {
                    super::gemm_f32(
                        (m, n, in_dim),
                        Strided {
                            ptr: dst.get().add(r0 * out_dim + o0),
                            rs: 1,
                            cs: out_dim as isize,
                        },
                        bias.is_some(),
                        Strided {
                            ptr: panel.as_ptr(),
                            rs: rs as isize,
                            cs: cs as isize,
                        },
                        Strided {
                            ptr: x.as_ptr().add(r0 * in_dim),
                            rs: 1,
                            cs: in_dim as isize,
                        },
                        1.0,
                        1,
                    );
                }
            }
        });
    });
    // SAFETY: the calls above wrote all `rows * out_dim` elements (the (panel, block) rectangles tile the output).
    unsafe { y.set_len(len) };
    y
}

/// The output pointer shared by the GEMM tasks, which write disjoint rectangles.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for the disjoint writes described in `PanelWeight::gemm`.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
