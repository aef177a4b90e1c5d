//! A JPEG decoder that gives the bytes Pillow 12 gives: a port of the integer path of libjpeg-turbo
//! 3.x (the library Pillow's wheels bundle) as Pillow drives it (islow IDCT, fancy upsampling, the
//! default colour-space guess from JFIF / Adobe markers, CMYK and YCCK output), followed by Pillow's
//! own conversion to RGB ("CMYK;I" then `cmyk2rgb`, grey replicated).
//!
//! Acceptance follows Pillow with `LOAD_TRUNCATED_IMAGES` off: data that ends where libjpeg still
//! needs bytes is refused ("image file is truncated"); corrupt entropy data that libjpeg only warns
//! about is decoded as libjpeg decodes it (and logged); header errors are refused.
//!
//! Not reproduced: arithmetic coding, lossless and 12-bit JPEG (refused as unsupported), and the block
//! smoothing libjpeg applies to progressive files whose scans never complete the first AC coefficients
//! (no encoder in common use writes such files; a warning is logged).

mod color;
mod entropy;
mod exif;
mod idct;
mod markers;

pub(crate) use exif::orientation;

use color::{pillow_cmyk_to_rgb, Plane, Upsample, YccTables};
use entropy::{HuffTable, RawHuffman, ScanState, Stream, Truncated};
use markers::{corrupt, Event, FrameHeader, ScanHeader, Tables};

/// Most scans accepted in one file. libjpeg has no limit, but every scan walks all blocks, so a small
/// file with thousands of scans is a CPU bomb; encoders write at most a few dozen.
const MAX_SCANS: usize = 500;

/// Why decoding stopped.
#[derive(Debug)]
pub(crate) enum Fail {
    Truncated,
    Corrupt(String),
    Unsupported(String),
    ZeroSize(usize, usize),
    TooManyPixels(usize, usize),
}

impl From<Truncated> for Fail {
    fn from(_: Truncated) -> Self {
        Fail::Truncated
    }
}

/// The mode Pillow opens the file in (before `convert("RGB")`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PillowMode {
    L,
    Rgb,
    Cmyk,
}

pub(crate) struct DecodedJpeg {
    pub width: usize,
    pub height: usize,
    /// Pillow's `convert("RGB")` of the decoded image, before any EXIF transposition.
    pub rgb: Vec<u8>,
    pub mode: PillowMode,
    pub exif: Option<Vec<u8>>,
    pub xmp: Option<Vec<u8>>,
    /// Corrupt-data conditions libjpeg warns about and decodes through.
    pub warnings: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ColorSpace {
    Gray,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

/// A frame component with its coefficient store.
struct Component {
    h: usize,
    v: usize,
    quant_index: usize,
    /// The quantisation table latched at the component's first scan (libjpeg's `latch_quant_tables`).
    quant: Option<[i16; 64]>,
    width_in_blocks: usize,
    height_in_blocks: usize,
    /// Blocks per row of the MCU grid.
    bw: usize,
    /// Coefficients of block rows `row_base..row_base + held_rows`: the whole image for multi-scan files,
    /// one MCU row for single-scan ones (decoded, inverse-transformed and dropped row by row).
    coefs: Vec<i16>,
    held_rows: usize,
    row_base: usize,
    /// Samples at the component's resolution, `bw * 8` per row.
    samples: Vec<u8>,
    /// libjpeg's `coef_bits` (zigzag index -> last successive-approximation bit, -1 = never sent).
    coef_bits: [i8; 64],
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    max_h: usize,
    max_v: usize,
    mcus_x: usize,
    mcus_y: usize,
    comps: Vec<Component>,
    /// Single-scan file: coefficients are inverse-transformed and dropped one MCU row at a time.
    streaming: bool,
}

/// Decodes JPEG bytes as Pillow 12.3 (libjpeg-turbo 3.1) would, refusing images over `max_pixels`
/// before allocating anything large.
pub(crate) fn decode(data: &[u8], max_pixels: u64) -> Result<DecodedJpeg, Fail> {
    if data.len() < 2 || data[..2] != [0xFF, 0xD8] {
        return Err(corrupt("not a JPEG file (no SOI marker)"));
    }
    let mut s = Stream::new(data, 2);
    let mut tables = Tables::default();
    let mut scan = match tables.read_markers(&mut s, true)? {
        Event::Sos(scan) => scan,
        Event::Eoi => return Err(corrupt("no image before the EOI marker")),
    };
    tables.scans_started = true;
    let header = tables
        .frame
        .as_ref()
        .expect("SOS is only returned after SOF");
    let space = color_space(header, &tables);
    let has_multiple_scans = header.progressive || scan.components.len() < header.components.len();
    let mut frame = Frame::new(header, max_pixels, !has_multiple_scans)?;
    let upsamplers = frame.upsamplers()?;
    // libjpeg-turbo installs the standard (Annex K) Huffman tables into empty slots 0 and 1 when the
    // decoder starts, for Motion-JPEG frames that omit DHT.
    install_std_huffman_tables(&mut tables);

    let mut scans = 0;
    loop {
        scans += 1;
        if scans > MAX_SCANS {
            return Err(corrupt(format!("more than {MAX_SCANS} scans")));
        }
        frame.decode_scan(&scan, &tables, &mut s)?;
        if !has_multiple_scans {
            // jpeg_finish_decompress reads on to EOI; Pillow ignores it running out of data there.
            match tables.read_markers(&mut s, false) {
                Ok(Event::Eoi) | Err(Fail::Truncated) => break,
                Ok(Event::Sos(_)) => return Err(corrupt("a second scan in a single-scan JPEG")),
                Err(e) => return Err(e),
            }
        }
        match tables.read_markers(&mut s, false)? {
            Event::Sos(next) => scan = next,
            Event::Eoi => break,
        }
    }
    if frame.would_block_smooth() {
        tracing::warn!(
            "progressive JPEG with incomplete AC scans: libjpeg would smooth its blocks; this decode does not, so pixels may differ slightly from Pillow's"
        );
    }
    if has_multiple_scans {
        for ci in 0..frame.comps.len() {
            frame.inverse_dct_held_rows(ci);
        }
    }
    let (width, height) = (frame.width, frame.height);
    let (mode, rgb) = frame.into_rgb(upsamplers, space);
    Ok(DecodedJpeg {
        width,
        height,
        rgb,
        mode,
        exif: tables.exif.take(),
        xmp: tables.xmp.take(),
        warnings: s.warnings,
    })
}

/// libjpeg's `default_decompress_parms`: the colour space the file is taken to be in.
fn color_space(header: &FrameHeader, t: &Tables) -> ColorSpace {
    match header.components.len() {
        1 => ColorSpace::Gray,
        3 => {
            if t.saw_jfif {
                ColorSpace::YCbCr
            } else if let Some(transform) = t.adobe_transform {
                if transform == 0 {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            } else {
                let ids: Vec<u8> = header.components.iter().map(|c| c.id).collect();
                if ids == [82, 71, 66] {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            }
        }
        _ => match t.adobe_transform {
            Some(0) => ColorSpace::Cmyk,
            Some(_) => ColorSpace::Ycck,
            None => ColorSpace::Cmyk,
        },
    }
}

fn install_std_huffman_tables(t: &mut Tables) {
    const DC_COUNTS: [[u8; 16]; 2] = [
        [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    ];
    const AC_COUNTS: [[u8; 16]; 2] = [
        [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125],
        [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119],
    ];
    // Annex K.3 AC symbols: luminance, then chrominance.
    const AC_LUMA: &[u8] = &[
        1, 2, 3, 0, 4, 17, 5, 18, 33, 49, 65, 6, 19, 81, 97, 7, 34, 113, 20, 50, 129, 145, 161, 8,
        35, 66, 177, 193, 21, 82, 209, 240, 36, 51, 98, 114, 130, 9, 10, 22, 23, 24, 25, 26, 37,
        38, 39, 40, 41, 42, 52, 53, 54, 55, 56, 57, 58, 67, 68, 69, 70, 71, 72, 73, 74, 83, 84, 85,
        86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105, 106, 115, 116, 117, 118, 119, 120,
        121, 122, 131, 132, 133, 134, 135, 136, 137, 138, 146, 147, 148, 149, 150, 151, 152, 153,
        154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178, 179, 180, 181, 182, 183, 184, 185,
        186, 194, 195, 196, 197, 198, 199, 200, 201, 202, 210, 211, 212, 213, 214, 215, 216, 217,
        218, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 241, 242, 243, 244, 245, 246, 247,
        248, 249, 250,
    ];
    const AC_CHROMA: &[u8] = &[
        0, 1, 2, 3, 17, 4, 5, 33, 49, 6, 18, 65, 81, 7, 97, 113, 19, 34, 50, 129, 8, 20, 66, 145,
        161, 177, 193, 9, 35, 51, 82, 240, 21, 98, 114, 209, 10, 22, 36, 52, 225, 37, 241, 23, 24,
        25, 26, 38, 39, 40, 41, 42, 53, 54, 55, 56, 57, 58, 67, 68, 69, 70, 71, 72, 73, 74, 83, 84,
        85, 86, 87, 88, 89, 90, 99, 100, 101, 102, 103, 104, 105, 106, 115, 116, 117, 118, 119,
        120, 121, 122, 130, 131, 132, 133, 134, 135, 136, 137, 138, 146, 147, 148, 149, 150, 151,
        152, 153, 154, 162, 163, 164, 165, 166, 167, 168, 169, 170, 178, 179, 180, 181, 182, 183,
        184, 185, 186, 194, 195, 196, 197, 198, 199, 200, 201, 202, 210, 211, 212, 213, 214, 215,
        216, 217, 218, 226, 227, 228, 229, 230, 231, 232, 233, 234, 242, 243, 244, 245, 246, 247,
        248, 249, 250,
    ];
    for i in 0..2 {
        t.dc[i].get_or_insert_with(|| RawHuffman {
            counts: DC_COUNTS[i],
            symbols: (0..12).collect(),
        });
        t.ac[i].get_or_insert_with(|| RawHuffman {
            counts: AC_COUNTS[i],
            symbols: [AC_LUMA, AC_CHROMA][i].to_vec(),
        });
    }
}

fn derive(raw: &Option<RawHuffman>, index: usize, is_dc: bool) -> Result<HuffTable, Fail> {
    let raw = raw.as_ref().ok_or_else(|| {
        corrupt(format!(
            "scan uses undefined {} Huffman table {index}",
            if is_dc { "DC" } else { "AC" }
        ))
    })?;
    HuffTable::derive(raw, is_dc).map_err(Fail::Corrupt)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    Sequential,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

impl Frame {
    /// `streaming`: single-scan file, whose coefficients are kept one MCU row at a time.
    fn new(h: &FrameHeader, max_pixels: u64, streaming: bool) -> Result<Self, Fail> {
        if (h.width as u64) * (h.height as u64) > max_pixels {
            return Err(Fail::TooManyPixels(h.width, h.height));
        }
        let max_h = h.components.iter().map(|c| c.h).max().unwrap_or(1);
        let max_v = h.components.iter().map(|c| c.v).max().unwrap_or(1);
        let mcus_x = h.width.div_ceil(8 * max_h);
        let mcus_y = h.height.div_ceil(8 * max_v);
        let comps = h
            .components
            .iter()
            .map(|c| {
                let (bw, bh) = (mcus_x * c.h, mcus_y * c.v);
                let held_rows = match (streaming, h.components.len()) {
                    (false, _) => bh,
                    (true, 1) => 1, // a one-component scan goes block row by block row
                    (true, _) => c.v,
                };
                Component {
                    h: c.h,
                    v: c.v,
                    quant_index: c.quant_index,
                    quant: None,
                    width_in_blocks: (h.width * c.h).div_ceil(8 * max_h),
                    height_in_blocks: (h.height * c.v).div_ceil(8 * max_v),
                    bw,
                    coefs: vec![0; bw * held_rows * 64],
                    held_rows,
                    row_base: 0,
                    samples: vec![128; bw * 8 * bh * 8],
                    coef_bits: [-1; 64],
                }
            })
            .collect();
        Ok(Self {
            width: h.width,
            height: h.height,
            progressive: h.progressive,
            max_h,
            max_v,
            mcus_x,
            mcus_y,
            comps,
            streaming,
        })
    }

    fn downsampled(&self, c: &Component) -> (usize, usize) {
        (
            (self.width * c.h).div_ceil(self.max_h),
            (self.height * c.v).div_ceil(self.max_v),
        )
    }

    fn upsamplers(&self) -> Result<Vec<Upsample>, Fail> {
        self.comps
            .iter()
            .map(|c| {
                let (dw, _) = self.downsampled(c);
                Upsample::choose(c.h, c.v, self.max_h, self.max_v, dw).ok_or_else(|| {
                    Fail::Unsupported(format!(
                        "fractional sampling factors {}x{} of {}x{}",
                        c.h, c.v, self.max_h, self.max_v
                    ))
                })
            })
            .collect()
    }

    /// One scan: per-scan setup and validation as libjpeg's `start_input_pass`, then every MCU.
    fn decode_scan(&mut self, scan: &ScanHeader, t: &Tables, s: &mut Stream) -> Result<(), Fail> {
        let blocks_in_mcu: usize = if scan.components.len() == 1 {
            1
        } else {
            scan.components
                .iter()
                .map(|&(ci, _, _)| self.comps[ci].h * self.comps[ci].v)
                .sum()
        };
        if blocks_in_mcu > 10 {
            return Err(corrupt("too many blocks in an MCU (sampling factors)"));
        }
        for &(ci, _, _) in &scan.components {
            let c = &mut self.comps[ci];
            if c.quant.is_none() {
                let q = t.quant.get(c.quant_index).and_then(|q| q.as_ref());
                let q = q.ok_or_else(|| {
                    corrupt(format!("undefined quantization table {}", c.quant_index))
                })?;
                c.quant = Some(q.map(|v| v as i16));
            }
        }
        let kind = self.scan_kind(scan)?;
        let mut dc_tables = Vec::new();
        let mut ac_tables = Vec::new();
        for &(_, td, ta) in &scan.components {
            let need_dc = matches!(kind, ScanKind::Sequential | ScanKind::DcFirst);
            let need_ac = matches!(
                kind,
                ScanKind::Sequential | ScanKind::AcFirst | ScanKind::AcRefine
            );
            dc_tables.push(if need_dc {
                Some(derive(t.dc.get(td).unwrap_or(&None), td, true)?)
            } else {
                None
            });
            ac_tables.push(if need_ac {
                Some(derive(t.ac.get(ta).unwrap_or(&None), ta, false)?)
            } else {
                None
            });
        }
        s.reset_bits();
        let mut st = ScanState::new(t.restart_interval);
        let band = (scan.ss, scan.se, scan.al);
        let ri = t.restart_interval;
        let block = |comps: &mut [Component],
                     s: &mut Stream,
                     st: &mut ScanState,
                     si: usize,
                     by: usize,
                     bx: usize|
         -> Result<(), Fail> {
            let (ci, _, _) = scan.components[si];
            let c = &mut comps[ci];
            // A scan that names a component twice (libjpeg lets some through) must not leave the window.
            let Some(row) = by.checked_sub(c.row_base).filter(|&r| r < c.held_rows) else {
                return Err(corrupt("scan lists a component twice"));
            };
            let off = (row * c.bw + bx) * 64;
            let blk = &mut c.coefs[off..off + 64];
            let dc = dc_tables[si].as_ref();
            let ac = ac_tables[si].as_ref();
            match kind {
                ScanKind::Sequential => {
                    entropy::decode_block_sequential(s, st, si, dc.unwrap(), ac.unwrap(), blk)?
                        .map_err(Fail::Corrupt)?
                }
                ScanKind::DcFirst => {
                    entropy::decode_dc_first(s, st, si, dc.unwrap(), scan.al, blk)?
                        .map_err(Fail::Corrupt)?
                }
                ScanKind::DcRefine => entropy::decode_dc_refine(s, scan.al, blk)?,
                ScanKind::AcFirst => entropy::decode_ac_first(s, st, ac.unwrap(), band, blk)?,
                ScanKind::AcRefine => entropy::decode_ac_refine(s, st, ac.unwrap(), band, blk)?,
            }
            Ok(())
        };
        // libjpeg skips the MCUs of a segment that ran out of data, except in DC refinement scans.
        let skip = |s: &Stream| s.insufficient_data && kind != ScanKind::DcRefine;
        if scan.components.len() == 1 {
            let (ci, _, _) = scan.components[0];
            let (wib, hib) = (
                self.comps[ci].width_in_blocks,
                self.comps[ci].height_in_blocks,
            );
            for by in 0..hib {
                for bx in 0..wib {
                    st.before_mcu(s, ri)?;
                    if !skip(s) {
                        block(&mut self.comps, s, &mut st, 0, by, bx)?;
                    }
                }
                if self.streaming {
                    self.inverse_dct_held_rows(ci);
                }
            }
        } else {
            for my in 0..self.mcus_y {
                for mx in 0..self.mcus_x {
                    st.before_mcu(s, ri)?;
                    if skip(s) {
                        continue;
                    }
                    for si in 0..scan.components.len() {
                        let (ci, _, _) = scan.components[si];
                        let (h, v) = (self.comps[ci].h, self.comps[ci].v);
                        for y in 0..v {
                            for x in 0..h {
                                block(&mut self.comps, s, &mut st, si, my * v + y, mx * h + x)?;
                            }
                        }
                    }
                }
                if self.streaming {
                    for ci in 0..self.comps.len() {
                        self.inverse_dct_held_rows(ci);
                    }
                }
            }
        }
        Ok(())
    }

    /// The scan's decoding procedure, with libjpeg's progression checks (fatal ones are errors, the
    /// rest are warnings it decodes through) and `coef_bits` bookkeeping.
    fn scan_kind(&mut self, scan: &ScanHeader) -> Result<ScanKind, Fail> {
        if !self.progressive {
            return Ok(ScanKind::Sequential);
        }
        let (ss, se, ah, al) = (scan.ss, scan.se, scan.ah, scan.al);
        let dc = ss == 0;
        let mut bad = if dc {
            se != 0
        } else {
            ss > se || se >= 64 || scan.components.len() != 1
        };
        if ah != 0 && al != ah.wrapping_sub(1) {
            bad = true;
        }
        if al > 13 {
            bad = true;
        }
        if bad {
            return Err(corrupt(format!(
                "bad progressive scan parameters Ss={ss} Se={se} Ah={ah} Al={al}"
            )));
        }
        for &(ci, _, _) in &scan.components {
            let bits = &mut self.comps[ci].coef_bits;
            for b in &mut bits[usize::from(ss)..=usize::from(se)] {
                *b = al as i8;
            }
        }
        Ok(match (dc, ah == 0) {
            (true, true) => ScanKind::DcFirst,
            (true, false) => ScanKind::DcRefine,
            (false, true) => ScanKind::AcFirst,
            (false, false) => ScanKind::AcRefine,
        })
    }

    /// libjpeg-turbo's `smoothing_ok`: true when it would apply block smoothing to this progressive file.
    fn would_block_smooth(&self) -> bool {
        if !self.progressive {
            return false;
        }
        const Q_POS: [usize; 10] = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24];
        let mut useful = false;
        for c in &self.comps {
            let Some(q) = &c.quant else { return false };
            if Q_POS.iter().any(|&p| q[p] == 0) || c.coef_bits[0] < 0 {
                return false;
            }
            useful |= c.coef_bits[1..10].iter().any(|&b| b != 0);
        }
        useful
    }

    /// Inverse-transforms the held block rows of component `ci` into its samples, then moves the window
    /// on (a component with no scan stays mid-grey, as libjpeg's zeroed coefficients and multipliers give).
    fn inverse_dct_held_rows(&mut self, ci: usize) {
        let c = &mut self.comps[ci];
        let stride = c.bw * 8;
        if let Some(q) = &c.quant {
            let rows = c.row_base..(c.row_base + c.held_rows).min(c.height_in_blocks);
            for by in rows {
                for bx in 0..c.width_in_blocks {
                    let off = ((by - c.row_base) * c.bw + bx) * 64;
                    let out = &mut c.samples[by * 8 * stride + bx * 8..];
                    idct::idct_islow(&c.coefs[off..off + 64], q, out, stride);
                }
            }
        }
        if self.streaming {
            c.coefs.fill(0);
            c.row_base += c.held_rows;
        }
    }

    /// Upsampling, libjpeg's colour conversion to Pillow's mode, and Pillow's conversion to RGB.
    fn into_rgb(self, upsamplers: Vec<Upsample>, space: ColorSpace) -> (PillowMode, Vec<u8>) {
        let (w, h) = (self.width, self.height);
        let row_len = self.mcus_x * self.max_h * 8 + 8;
        let shapes: Vec<_> = self
            .comps
            .iter()
            .zip(upsamplers)
            .map(|(c, upsample)| {
                let (width, height) = self.downsampled(c);
                (c.bw * 8, width, height, upsample)
            })
            .collect();
        let planes: Vec<Plane> = shapes
            .into_iter()
            .zip(self.comps.into_iter().map(|c| c.samples))
            .map(|((stride, width, height, upsample), data)| Plane {
                data,
                stride,
                width,
                height,
                upsample,
            })
            .collect();
        let mut out = vec![0u8; w * h * 3];
        let mut rows = vec![vec![0u8; row_len]; planes.len()];
        let ycc = YccTables::new();
        let mode = match space {
            ColorSpace::Gray => PillowMode::L,
            ColorSpace::YCbCr | ColorSpace::Rgb => PillowMode::Rgb,
            ColorSpace::Cmyk | ColorSpace::Ycck => PillowMode::Cmyk,
        };
        for y in 0..h {
            for (p, row) in planes.iter().zip(rows.iter_mut()) {
                p.upsampled_row(y, row);
            }
            let dst = &mut out[y * w * 3..(y + 1) * w * 3];
            let px = dst.chunks_exact_mut(3);
            let c = |i: usize| &rows[i][..w];
            match space {
                ColorSpace::Gray => {
                    for (p, &v) in px.zip(c(0)) {
                        p.fill(v);
                    }
                }
                ColorSpace::Rgb => {
                    for (p, ((&r, &g), &b)) in px.zip(c(0).iter().zip(c(1)).zip(c(2))) {
                        p.copy_from_slice(&[r, g, b]);
                    }
                }
                ColorSpace::YCbCr => {
                    for (p, ((&y, &cb), &cr)) in px.zip(c(0).iter().zip(c(1)).zip(c(2))) {
                        p.copy_from_slice(&ycc.rgb(y, cb, cr));
                    }
                }
                ColorSpace::Cmyk => {
                    let src = c(0).iter().zip(c(1)).zip(c(2)).zip(c(3));
                    for (p, (((&cc, &m), &yy), &k)) in px.zip(src) {
                        p.copy_from_slice(&pillow_cmyk_to_rgb(cc, m, yy, k));
                    }
                }
                ColorSpace::Ycck => {
                    let src = c(0).iter().zip(c(1)).zip(c(2)).zip(c(3));
                    for (p, (((&y, &cb), &cr), &k)) in px.zip(src) {
                        let [r, g, b] = ycc.rgb(y, cb, cr);
                        p.copy_from_slice(&pillow_cmyk_to_rgb(255 - r, 255 - g, 255 - b, k));
                    }
                }
            }
        }
        (mode, out)
    }
}
