//! JPEG marker segments: what libjpeg-turbo's `jdmarker.c` reads (SOF, SOS, DHT, DQT, DRI, the JFIF
//! and Adobe APP markers), with its validation, plus the refusals of Pillow's own header parser
//! (`JpegImagePlugin.py`: 8-bit samples only, 1, 3 or 4 components, no markers outside FFC0..FFFE),
//! and the EXIF / XMP segments Pillow reads the orientation from.

use super::entropy::{RawHuffman, Stream, Truncated};
use super::Fail;

/// A frame component as SOF declares it.
#[derive(Clone)]
pub(super) struct FrameComponent {
    pub id: u8,
    pub h: usize,
    pub v: usize,
    pub quant_index: usize,
}

pub(super) struct FrameHeader {
    pub width: usize,
    pub height: usize,
    pub progressive: bool,
    pub components: Vec<FrameComponent>,
}

/// SOS: frame-component indices in scan order, their table selectors, and the spectral band.
pub(super) struct ScanHeader {
    pub components: Vec<(usize, usize, usize)>,
    pub ss: u8,
    pub se: u8,
    pub ah: u8,
    pub al: u8,
}

pub(super) enum Event {
    Sos(ScanHeader),
    Eoi,
}

/// Tables and header facts gathered from marker segments.
#[derive(Default)]
pub(super) struct Tables {
    pub quant: [Option<[u16; 64]>; 4],
    pub dc: [Option<RawHuffman>; 4],
    pub ac: [Option<RawHuffman>; 4],
    pub restart_interval: u16,
    pub frame: Option<FrameHeader>,
    pub saw_jfif: bool,
    pub adobe_transform: Option<u8>,
    /// APP1 "Exif" payloads concatenated as Pillow does (first one whole, later ones without the prefix).
    pub exif: Option<Vec<u8>>,
    /// The last APP1 XMP packet (Pillow's `info["xmp"]`), consulted for the orientation when EXIF has none.
    pub xmp: Option<Vec<u8>>,
    /// Set once the first scan starts.
    pub scans_started: bool,
}

pub(super) fn corrupt(msg: impl Into<String>) -> Fail {
    Fail::Corrupt(msg.into())
}

impl Tables {
    /// libjpeg's `read_markers`: process segments until SOS or EOI. `in_header` adds Pillow's header
    /// checks (its Python parser stops at the first SOS).
    pub fn read_markers(&mut self, s: &mut Stream, in_header: bool) -> Result<Event, Fail> {
        loop {
            let marker = match s.unread_marker.take() {
                Some(m) => m,
                None => {
                    s.next_marker()?;
                    s.unread_marker.take().unwrap_or(0)
                }
            };
            match marker {
                0xC0..=0xC2 => self.read_sof(s, marker == 0xC2)?,
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    return Err(Fail::Unsupported(format!(
                        "{} JPEG (SOF marker 0x{marker:02X})",
                        if marker >= 0xC9 {
                            "arithmetic-coded"
                        } else {
                            "lossless or hierarchical"
                        }
                    )))
                }
                0xDA => {
                    if self.frame.is_none() {
                        return Err(corrupt("SOS marker before the frame header (SOF)"));
                    }
                    return Ok(Event::Sos(self.read_sos(s)?));
                }
                0xD9 => return Ok(Event::Eoi),
                0xD8 => return Err(corrupt("duplicate SOI marker")),
                0xC4 => self.read_dht(s)?,
                0xDB => self.read_dqt(s)?,
                0xDD => {
                    if s.u16()? != 4 {
                        return Err(corrupt("bad DRI marker length"));
                    }
                    self.restart_interval = s.u16()?;
                }
                0xE0..=0xEF => self.read_app(s, marker)?,
                0xFE | 0xCC | 0xDC => skip_segment(s)?,
                // RSTn and TEM outside a scan carry no data; libjpeg ignores them (Pillow's header parser
                // refuses TEM and the reserved range below).
                0xD0..=0xD7 => {}
                0x01 if !in_header => {}
                _ => return Err(corrupt(format!("unknown JPEG marker 0xFF{marker:02X}"))),
            }
        }
    }

    fn read_sof(&mut self, s: &mut Stream, progressive: bool) -> Result<(), Fail> {
        if self.frame.is_some() {
            return Err(corrupt("duplicate SOF marker"));
        }
        let length = usize::from(s.u16()?);
        let precision = s.byte()?;
        let height = usize::from(s.u16()?);
        let width = usize::from(s.u16()?);
        let n = usize::from(s.byte()?);
        if precision != 8 {
            return Err(Fail::Unsupported(format!(
                "cannot handle {precision}-bit layers"
            )));
        }
        if !matches!(n, 1 | 3 | 4) {
            return Err(Fail::Unsupported(format!("cannot handle {n}-layer images")));
        }
        if width == 0 || height == 0 {
            return Err(Fail::ZeroSize(width, height));
        }
        if length != 8 + 3 * n {
            return Err(corrupt("bad SOF marker length"));
        }
        let mut components = Vec::with_capacity(n);
        for _ in 0..n {
            let id = s.byte()?;
            let hv = s.byte()?;
            let quant_index = usize::from(s.byte()?);
            let (h, v) = (usize::from(hv >> 4), usize::from(hv & 15));
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                return Err(corrupt(format!("bad sampling factors {h}x{v}")));
            }
            components.push(FrameComponent {
                id,
                h,
                v,
                quant_index,
            });
        }
        if width > 65500 || height > 65500 {
            return Err(corrupt(format!(
                "image {width}x{height} is larger than JPEG's 65500 pixel limit"
            )));
        }
        self.frame = Some(FrameHeader {
            width,
            height,
            progressive,
            components,
        });
        Ok(())
    }

    fn read_sos(&mut self, s: &mut Stream) -> Result<ScanHeader, Fail> {
        let length = usize::from(s.u16()?);
        let n = usize::from(s.byte()?);
        if length != n * 2 + 6 || !(1..=4).contains(&n) {
            return Err(corrupt("bad SOS marker length"));
        }
        let frame = self.frame.as_ref().expect("checked by the caller");
        let mut taken = [false; 4];
        let mut components = Vec::with_capacity(n);
        for i in 0..n {
            let id = s.byte()?;
            let tables = s.byte()?;
            // libjpeg matches among the first 4 frame components, refusing one already in this scan
            // (its check is indexed by scan position, reproduced as is).
            let found = (0..frame.components.len().min(4))
                .find(|&ci| frame.components[ci].id == id && !taken[ci]);
            let Some(ci) = found else {
                return Err(corrupt(format!("bad component id {id} in SOS")));
            };
            taken[i] = true;
            components.push((ci, usize::from(tables >> 4), usize::from(tables & 15)));
        }
        let ss = s.byte()?;
        let se = s.byte()?;
        let a = s.byte()?;
        Ok(ScanHeader {
            components,
            ss,
            se,
            ah: a >> 4,
            al: a & 15,
        })
    }

    fn read_dht(&mut self, s: &mut Stream) -> Result<(), Fail> {
        let mut length = i64::from(s.u16()?) - 2;
        while length > 16 {
            let index = s.byte()?;
            let mut counts = [0u8; 16];
            for c in &mut counts {
                *c = s.byte()?;
            }
            let count: usize = counts.iter().map(|&c| usize::from(c)).sum();
            length -= 17;
            if count > 256 || count as i64 > length {
                return Err(corrupt("bad Huffman table"));
            }
            let mut symbols = Vec::with_capacity(count);
            for _ in 0..count {
                symbols.push(s.byte()?);
            }
            length -= count as i64;
            let slot = usize::from(index & 0x0F);
            if index & 0xEC != 0 || slot >= 4 {
                return Err(corrupt(format!("bad Huffman table index 0x{index:02X}")));
            }
            let raw = Some(RawHuffman { counts, symbols });
            if index & 0x10 != 0 {
                self.ac[slot] = raw;
            } else {
                self.dc[slot] = raw;
            }
        }
        if length != 0 {
            return Err(corrupt("bad DHT marker length"));
        }
        Ok(())
    }

    fn read_dqt(&mut self, s: &mut Stream) -> Result<(), Fail> {
        let mut length = i64::from(s.u16()?) - 2;
        while length > 0 {
            let n = s.byte()?;
            let (prec, slot) = (n >> 4, usize::from(n & 15));
            if slot >= 4 {
                return Err(corrupt(format!("bad quantization table index {slot}")));
            }
            let mut table = [0u16; 64];
            for k in 0..64 {
                let v = if prec != 0 {
                    s.u16()?
                } else {
                    u16::from(s.byte()?)
                };
                table[super::entropy::NATURAL_ORDER[k]] = v;
            }
            length -= 65 + if prec != 0 { 64 } else { 0 };
            self.quant[slot] = Some(table);
        }
        if length != 0 {
            return Err(corrupt("bad DQT marker length"));
        }
        Ok(())
    }

    fn read_app(&mut self, s: &mut Stream, marker: u8) -> Result<(), Fail> {
        let payload = read_segment(s)?;
        match marker {
            0xE0 if payload.len() >= 14 && payload.starts_with(b"JFIF\0") => self.saw_jfif = true,
            0xEE if payload.len() >= 12 && payload.starts_with(b"Adobe") => {
                self.adobe_transform = Some(payload[11]);
            }
            0xE1 if self.frame_is_open_for_metadata() => {
                if payload.starts_with(b"Exif\0\0") {
                    match &mut self.exif {
                        Some(e) => e.extend_from_slice(&payload[6..]),
                        None => self.exif = Some(payload.to_vec()),
                    }
                } else if let Some(rest) = payload.strip_prefix(b"http://ns.adobe.com/xap/1.0/\0") {
                    self.xmp = Some(rest.to_vec());
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Pillow reads metadata only up to the first SOS; later APP1 segments do not count.
    fn frame_is_open_for_metadata(&self) -> bool {
        !self.scans_started
    }
}

/// A segment's payload (its 2 length bytes counted in the length, as the format defines).
fn read_segment<'a>(s: &mut Stream<'a>) -> Result<&'a [u8], Truncated> {
    let length = usize::from(s.u16()?).saturating_sub(2);
    s.take(length)
}

fn skip_segment(s: &mut Stream) -> Result<(), Truncated> {
    read_segment(s).map(|_| ())
}
