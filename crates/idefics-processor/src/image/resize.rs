//! Pillow-exact 8-bit resize (`PIL.Image.resize` on an "RGB" image, Pillow 11.x-12.3).
//!
//! Hand-written on purpose: the HF image processors resize through PIL, and neither Rust crate reproduces
//! its bytes. `image::imageops` runs the vertical pass first into an f32 intermediate with f32 weights and
//! no rounding between passes; `fast_image_resize` follows Pillow-SIMD with i16 coefficients. Pillow's
//! `ImagingResample` (src/libImaging/Resample.c) does: separable convolution, **horizontal pass first**
//! (only if the width changes), then vertical (only if the height changes), each pass rounding and
//! clipping to u8, with i32 fixed-point coefficients `trunc(w * 2^22 ± 0.5)` and an accumulator that
//! starts at 2^21 (Pillow's src/libImaging/Resample.c). Pillow 13 sometimes runs the vertical pass first; reference
//! data is pinned to Pillow 12.3. NEAREST does not go through `ImagingResample` but through Pillow's
//! affine "scale" transform (src/libImaging/Geometry.c, `ImagingScaleAffine`), reproduced below.

use super::{ImageError, RgbImage};

/// Pillow's resampling filters, with their PIL integer codes (`resample` in preprocessor configs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleFilter {
    /// 0: nearest neighbour (Pillow's affine scale transform).
    Nearest,
    /// 1: Lanczos, 3 lobes (Idefics3 / SmolVLM).
    Lanczos,
    /// 2: triangle (Idefics2).
    Bilinear,
    /// 3: Keys cubic, a = -0.5.
    Bicubic,
    /// 4: box.
    Box,
    /// 5: Hamming-windowed sinc, support 1.
    Hamming,
}

impl ResampleFilter {
    /// The filter for a PIL `resample` code (0-5), as stored in `preprocessor_config.json`.
    pub fn from_pil_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Self::Nearest,
            1 => Self::Lanczos,
            2 => Self::Bilinear,
            3 => Self::Bicubic,
            4 => Self::Box,
            5 => Self::Hamming,
            _ => return None,
        })
    }

    /// The PIL integer code of this filter.
    pub fn pil_code(self) -> i64 {
        match self {
            Self::Nearest => 0,
            Self::Lanczos => 1,
            Self::Bilinear => 2,
            Self::Bicubic => 3,
            Self::Box => 4,
            Self::Hamming => 5,
        }
    }

    /// Half-width of the kernel at scale 1 (Pillow's `filterp->support`).
    fn support(self) -> f64 {
        match self {
            Self::Nearest | Self::Box => 0.5,
            Self::Bilinear | Self::Hamming => 1.0,
            Self::Bicubic => 2.0,
            Self::Lanczos => 3.0,
        }
    }

    /// The kernel, written with Pillow's operation order (it decides the last bit of the weights).
    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Nearest | Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes the window constants as C float literals (0.54f, 0.46f).
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point kernels of one axis: for output index `i`, input range `start[i]..start[i] + len[i]` and
/// weights `coeffs[i * ksize..]`.
struct AxisKernels {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    coeffs: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for input length `in_size` -> `out_size`.
fn axis_kernels(in_size: usize, out_size: usize, filter: ResampleFilter) -> AxisKernels {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut start = Vec::with_capacity(out_size);
    let mut len = Vec::with_capacity(out_size);
    let mut coeffs = vec![0i32; out_size * ksize];
    let mut weights = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C `(int)` truncates toward zero; negative values are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64)
            .min(in_size as i64)
            .max(xmin as i64) as usize;
        let n = (xmax - xmin).min(ksize);
        let mut sum = 0.0;
        for (x, w) in weights.iter_mut().enumerate().take(n) {
            *w = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
            sum += *w;
        }
        let row = &mut coeffs[xx * ksize..xx * ksize + n];
        for (k, &w) in row.iter_mut().zip(&weights) {
            let w = if sum != 0.0 { w / sum } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *k = if w < 0.0 {
                (scaled - 0.5) as i32
            } else {
                (scaled + 0.5) as i32
            };
        }
        start.push(xmin);
        len.push(n);
    }
    AxisKernels {
        ksize,
        start,
        len,
        coeffs,
    }
}

#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over rows `y0..y0 + rows` of `src`.
fn resample_horizontal(src: &RgbImage, y0: usize, rows: usize, k: &AxisKernels) -> RgbImage {
    let out_w = k.start.len();
    let mut data = vec![0u8; out_w * rows * 3];
    let half = 1i32 << (PRECISION_BITS - 1);
    for (y, out_row) in data.chunks_exact_mut(out_w * 3).enumerate() {
        let in_row = &src.data[(y0 + y) * src.width * 3..(y0 + y + 1) * src.width * 3];
        for (xx, out_px) in out_row.chunks_exact_mut(3).enumerate() {
            let coeffs = &k.coeffs[xx * k.ksize..xx * k.ksize + k.len[xx]];
            let pixels = &in_row[k.start[xx] * 3..(k.start[xx] + k.len[xx]) * 3];
            let mut acc = [half; 3];
            for (&c, px) in coeffs.iter().zip(pixels.chunks_exact(3)) {
                acc[0] += i32::from(px[0]) * c;
                acc[1] += i32::from(px[1]) * c;
                acc[2] += i32::from(px[2]) * c;
            }
            out_px[0] = clip8(acc[0]);
            out_px[1] = clip8(acc[1]);
            out_px[2] = clip8(acc[2]);
        }
    }
    RgbImage {
        width: out_w,
        height: rows,
        data,
        transparent_color: None,
    }
}

/// Vertical pass; `k.start` is relative to the first row of `src`.
fn resample_vertical(src: &RgbImage, k: &AxisKernels) -> RgbImage {
    let out_h = k.start.len();
    let stride = src.width * 3;
    let mut data = vec![0u8; stride * out_h];
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in data.chunks_exact_mut(stride).enumerate() {
        acc.fill(half);
        let coeffs = &k.coeffs[yy * k.ksize..yy * k.ksize + k.len[yy]];
        for (i, &c) in coeffs.iter().enumerate() {
            let y = k.start[yy] + i;
            let in_row = &src.data[y * stride..(y + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(in_row) {
                *a += i32::from(p) * c;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage {
        width: src.width,
        height: out_h,
        data,
        transparent_color: None,
    }
}

/// Pillow's NEAREST resize: the affine scale transform, with its running (accumulated) f64 coordinates.
fn resize_nearest(src: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let ax = src.width as f64 / out_w as f64;
    let ay = src.height as f64 / out_h as f64;
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let mut xin = Vec::with_capacity(out_w);
    let mut xo = ax * 0.5;
    for _ in 0..out_w {
        xin.push(coord(xo).clamp(0, src.width as i64 - 1) as usize);
        xo += ax;
    }
    let mut data = Vec::with_capacity(out_w * out_h * 3);
    let mut yo = ay * 0.5;
    for _ in 0..out_h {
        let y = coord(yo).clamp(0, src.height as i64 - 1) as usize;
        let row = &src.data[y * src.width * 3..(y + 1) * src.width * 3];
        for &x in &xin {
            data.extend_from_slice(&row[x * 3..x * 3 + 3]);
        }
        yo += ay;
    }
    RgbImage {
        width: out_w,
        height: out_h,
        data,
        transparent_color: None,
    }
}

/// `PIL.Image.resize((width, height), filter)` on an RGB image, byte for byte (Pillow 12.3).
///
/// Same size returns a copy, as Pillow does. Errors only on a zero target side.
pub fn resize(
    src: &RgbImage,
    width: usize,
    height: usize,
    filter: ResampleFilter,
) -> Result<RgbImage, ImageError> {
    if width == 0 || height == 0 {
        return Err(ImageError::ResizeTarget { width, height });
    }
    if src.width == 0 || src.height == 0 {
        return Err(ImageError::ZeroSize {
            width: src.width,
            height: src.height,
        });
    }
    if width == src.width && height == src.height {
        return Ok(src.clone());
    }
    if filter == ResampleFilter::Nearest {
        return Ok(resize_nearest(src, width, height));
    }
    let need_horizontal = width != src.width;
    let need_vertical = height != src.height;
    let vert = axis_kernels(src.height, height, filter);
    if !need_horizontal {
        return Ok(resample_vertical(src, &vert));
    }
    let horiz = axis_kernels(src.width, width, filter);
    // Pillow's horizontal pass only computes the source rows the vertical pass reads.
    let first = vert.start.first().copied().unwrap_or(0);
    let last = match (vert.start.last(), vert.len.last()) {
        (Some(s), Some(l)) => s + l,
        _ => src.height,
    };
    let rows = if need_vertical {
        last - first
    } else {
        src.height
    };
    let y0 = if need_vertical { first } else { 0 };
    let tmp = resample_horizontal(src, y0, rows, &horiz);
    if !need_vertical {
        return Ok(tmp);
    }
    let shifted = AxisKernels {
        ksize: vert.ksize,
        start: vert.start.iter().map(|s| s - first).collect(),
        len: vert.len,
        coeffs: vert.coeffs,
    };
    Ok(resample_vertical(&tmp, &shifted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> RgbImage {
        let data = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        RgbImage::new(w, h, data).unwrap()
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = gradient(7, 5);
        assert_eq!(resize(&img, 7, 5, ResampleFilter::Lanczos).unwrap(), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        // Normalised fixed-point weights sum to ~2^22, so a flat image must come back flat for every filter.
        let img = RgbImage::new(13, 9, [200u8, 10, 77].repeat(13 * 9)).unwrap();
        for f in [
            ResampleFilter::Bilinear,
            ResampleFilter::Bicubic,
            ResampleFilter::Lanczos,
            ResampleFilter::Hamming,
        ] {
            for (w, h) in [(5, 4), (40, 3), (13, 30), (1, 1)] {
                let out = resize(&img, w, h, f).unwrap();
                assert!(
                    out.as_bytes().chunks(3).all(|p| p == [200, 10, 77]),
                    "{f:?} {w}x{h}"
                );
            }
        }
    }

    #[test]
    fn zero_target_is_an_error() {
        let img = gradient(4, 4);
        assert!(matches!(
            resize(&img, 0, 3, ResampleFilter::Bilinear),
            Err(ImageError::ResizeTarget { .. })
        ));
    }

    #[test]
    fn pil_codes_round_trip() {
        for code in 0..6 {
            assert_eq!(
                ResampleFilter::from_pil_code(code).unwrap().pil_code(),
                code
            );
        }
        assert!(ResampleFilter::from_pil_code(6).is_none());
    }
}
