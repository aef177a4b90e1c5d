//! Chroma upsampling and colour conversion, as libjpeg-turbo does them with fancy upsampling on (the
//! default Pillow keeps), followed by Pillow's own conversion of the decoded mode to RGB.
//! References: libjpeg-turbo `jdsample.c` (h2v1 / h1v2 / h2v2 fancy, int upsampling), `jdmainct.c`
//! (context rows: the first row repeats above the image, the last real row below it), `jdcolor.c`
//! (YCbCr and YCCK tables); Pillow `src/libImaging/Convert.c` (`cmyk2rgb`) and the "CMYK;I" raw mode
//! its JPEG plugin uses (Adobe inverted CMYK).

/// How one component is brought to full resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Upsample {
    Full,
    H2V1Fancy,
    H1V2Fancy,
    H2V2Fancy,
    /// Plain replication by integer factors (also h2v1 / h2v2 when the component is <= 2 samples wide).
    Int {
        h: usize,
        v: usize,
    },
}

impl Upsample {
    /// libjpeg-turbo's `jinit_upsampler` choice for a component with sampling factors (h, v).
    pub fn choose(h: usize, v: usize, max_h: usize, max_v: usize, width: usize) -> Option<Self> {
        Some(if h == max_h && v == max_v {
            Self::Full
        } else if h * 2 == max_h && v == max_v && width > 2 {
            Self::H2V1Fancy
        } else if h == max_h && v * 2 == max_v {
            Self::H1V2Fancy
        } else if h * 2 == max_h && v * 2 == max_v && width > 2 {
            Self::H2V2Fancy
        } else if max_h.is_multiple_of(h) && max_v.is_multiple_of(v) {
            Self::Int {
                h: max_h / h,
                v: max_v / v,
            }
        } else {
            return None;
        })
    }
}

/// One decoded component: samples at its own resolution.
pub(super) struct Plane {
    pub data: Vec<u8>,
    pub stride: usize,
    /// `downsampled_width` / `downsampled_height`: the samples that belong to the image.
    pub width: usize,
    pub height: usize,
    pub upsample: Upsample,
}

impl Plane {
    fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.stride..y * self.stride + self.width]
    }

    /// Full-resolution row `y` of this component into `out` (at least `width * h_expand` long).
    pub fn upsampled_row(&self, y: usize, out: &mut [u8]) {
        let w = self.width;
        match self.upsample {
            Upsample::Full => out[..w].copy_from_slice(self.row(y)),
            Upsample::H2V1Fancy => h2v1_fancy(self.row(y), out),
            Upsample::H1V2Fancy => {
                let (near, far) = self.rows_for_vertical(y);
                let bias = if y.is_multiple_of(2) { 1 } else { 2 };
                for ((o, &a), &b) in out.iter_mut().zip(near).zip(far) {
                    *o = ((u32::from(a) * 3 + u32::from(b) + bias) >> 2) as u8;
                }
            }
            Upsample::H2V2Fancy => {
                let (near, far) = self.rows_for_vertical(y);
                h2v2_fancy(near, far, out);
            }
            Upsample::Int { h, v } => {
                let src = self.row(y / v);
                for (chunk, &s) in out.chunks_exact_mut(h).zip(src) {
                    chunk.fill(s);
                }
            }
        }
    }

    /// For a vertical 2x fancy upsampler: the nearest input row of output row `y` and the next
    /// nearest (the row above for even `y`, below for odd), clamped to the component's real rows.
    fn rows_for_vertical(&self, y: usize) -> (&[u8], &[u8]) {
        let r = y / 2;
        let other = if y.is_multiple_of(2) {
            r.saturating_sub(1)
        } else {
            (r + 1).min(self.height - 1)
        };
        (self.row(r), self.row(other))
    }
}

fn h2v1_fancy(src: &[u8], out: &mut [u8]) {
    let w = src.len();
    let s = |i: usize| u32::from(src[i]);
    out[0] = src[0];
    out[1] = ((s(0) * 3 + s(1) + 2) >> 2) as u8;
    for i in 1..w - 1 {
        let v = s(i) * 3;
        out[2 * i] = ((v + s(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((v + s(i + 1) + 2) >> 2) as u8;
    }
    let i = w - 1;
    out[2 * i] = ((s(i) * 3 + s(i - 1) + 1) >> 2) as u8;
    out[2 * i + 1] = src[i];
}

fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let w = near.len();
    let col = |i: usize| u32::from(near[i]) * 3 + u32::from(far[i]);
    let mut this = col(0);
    let mut next = col(1);
    let mut last;
    out[0] = ((this * 4 + 8) >> 4) as u8;
    out[1] = ((this * 3 + next + 7) >> 4) as u8;
    for i in 1..w - 1 {
        last = this;
        this = next;
        next = col(i + 1);
        out[2 * i] = ((this * 3 + last + 8) >> 4) as u8;
        out[2 * i + 1] = ((this * 3 + next + 7) >> 4) as u8;
    }
    let i = w - 1;
    last = this;
    this = next;
    out[2 * i] = ((this * 3 + last + 8) >> 4) as u8;
    out[2 * i + 1] = ((this * 4 + 7) >> 4) as u8;
}

/// libjpeg's fixed-point YCbCr -> RGB tables (16 fractional bits, rounded as `jdcolor.c` builds them).
pub(super) struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    pub fn new() -> Self {
        const ONE_HALF: i32 = 1 << 15;
        let mut t = Self {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i32 - 128;
            t.cr_r[i] = (91881 * x + ONE_HALF) >> 16; // FIX(1.40200)
            t.cb_b[i] = (116130 * x + ONE_HALF) >> 16; // FIX(1.77200)
            t.cr_g[i] = -46802 * x; // -FIX(0.71414)
            t.cb_g[i] = -22554 * x + ONE_HALF; // -FIX(0.34414), with the rounding folded in
        }
        t
    }

    #[inline(always)]
    pub fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let y = i32::from(y);
        let (cb, cr) = (usize::from(cb), usize::from(cr));
        [
            clamp(y + self.cr_r[cr]),
            clamp(y + ((self.cb_g[cb] + self.cr_g[cr]) >> 16)),
            clamp(y + self.cb_b[cb]),
        ]
    }
}

#[inline(always)]
fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Pillow's `cmyk2rgb` applied to the "CMYK;I" pixels Pillow stores, given libjpeg's CMYK output.
#[inline(always)]
pub(super) fn pillow_cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    // Pillow inverts libjpeg's Adobe CMYK ("CMYK;I"), then nk = 255 - K = libjpeg's k.
    let nk = i32::from(k);
    let ch = |v: u8| {
        let inv = 255 - i32::from(v);
        let tmp = inv * nk + 128;
        clamp(nk - (((tmp >> 8) + tmp) >> 8))
    };
    [ch(c), ch(m), ch(y)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fancy_upsampling_edges() {
        let mut out = [0u8; 8];
        h2v1_fancy(&[0, 100, 200, 40], &mut out);
        // First and last samples are copied; inner ones are 3/4 near + 1/4 far, biased 1 then 2.
        assert_eq!(out, [0, 25, 75, 125, 175, 160, 80, 40]);
        h2v2_fancy(&[16, 16, 16], &[16, 16, 16], &mut out[..6]);
        assert_eq!(&out[..6], &[16; 6]);
    }

    #[test]
    fn ycc_and_cmyk_conversions() {
        let t = YccTables::new();
        assert_eq!(t.rgb(128, 128, 128), [128, 128, 128]);
        assert_eq!(t.rgb(255, 0, 255), [255, 208, 28]);
        // libjpeg CMYK output k = 255 means "no black" after Adobe inversion: white for c=m=y=255.
        assert_eq!(pillow_cmyk_to_rgb(255, 255, 255, 255), [255, 255, 255]);
        assert_eq!(pillow_cmyk_to_rgb(0, 0, 0, 0), [0, 0, 0]);
        assert!(Upsample::choose(3, 1, 4, 1, 10).is_none());
        assert_eq!(
            Upsample::choose(1, 1, 4, 2, 10),
            Some(Upsample::Int { h: 4, v: 2 })
        );
    }
}
