//! Huffman entropy decoding, sequential and progressive, with libjpeg-turbo's exact behaviour on the
//! edges that change pixels or acceptance: the bit buffer is topped up to 57 bits whenever it runs low
//! and *any* top-up that meets the end of the data (no marker seen) means the file is truncated (libjpeg
//! suspends there and Pillow then raises "image file is truncated"); a marker ends a segment and the
//! missing bits read as zeros; once a segment has run dry its remaining MCUs are skipped; bad codes
//! decode as 0; runs past coefficient 63 land on 63.
//! Reference: libjpeg-turbo `jdhuff.c`, `jdhuff.h`, `jdphuff.c`, `jdmarker.c` (next_marker,
//! read_restart_marker, jpeg_resync_to_restart), https://github.com/libjpeg-turbo/libjpeg-turbo.

/// Zigzag index -> natural (row-major) index, with 16 extra entries so that a corrupt run length that
/// goes past the end of the block writes coefficient 63, as libjpeg's `jpeg_natural_order` does.
pub(super) const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// Bits kept in the bit buffer after a top-up (libjpeg's `MIN_GET_BITS` for a 64-bit buffer).
const MIN_GET_BITS: i32 = 57;
const LOOKAHEAD: i32 = 8;

/// The data ended inside a part of the file the decoder still needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Truncated;

/// A Huffman table as a DHT segment defines it: code counts per length 1..=16 and the symbols.
#[derive(Clone)]
pub(super) struct RawHuffman {
    pub counts: [u8; 16],
    pub symbols: Vec<u8>,
}

/// The decoding form of a table (libjpeg's `d_derived_tbl`).
pub(super) struct HuffTable {
    /// For an 8-bit peek: `(code length << 8) | symbol`, or `9 << 8` when the code is longer.
    lookup: [u16; 256],
    maxcode: [i32; 18],
    valoffset: [i32; 18],
    symbols: [u8; 256],
}

impl HuffTable {
    /// libjpeg's `jpeg_make_d_derived_tbl`, with its validation (over-full tables, all-ones codes and DC
    /// symbols above 15 are errors).
    pub fn derive(raw: &RawHuffman, is_dc: bool) -> Result<Self, String> {
        let mut sizes = Vec::with_capacity(257);
        for (l, &n) in raw.counts.iter().enumerate() {
            if sizes.len() + n as usize > 256 {
                return Err("bad Huffman table (more than 256 codes)".into());
            }
            sizes.extend(std::iter::repeat_n(l as u8 + 1, n as usize));
        }
        let numsymbols = sizes.len();
        let mut codes = vec![0u32; numsymbols];
        let (mut code, mut si, mut p) = (0u32, sizes.first().copied().unwrap_or(0), 0usize);
        while p < numsymbols {
            while p < numsymbols && sizes[p] == si {
                codes[p] = code;
                p += 1;
                code += 1;
            }
            if u64::from(code) >= 1u64 << si {
                return Err("bad Huffman table (code space overflow)".into());
            }
            code <<= 1;
            si += 1;
        }
        let mut t = HuffTable {
            lookup: [((LOOKAHEAD + 1) << LOOKAHEAD) as u16; 256],
            maxcode: [-1; 18],
            valoffset: [0; 18],
            symbols: [0; 256],
        };
        for (i, &s) in raw.symbols.iter().take(256).enumerate() {
            t.symbols[i] = s;
        }
        let mut p = 0usize;
        for l in 1..=16 {
            let n = raw.counts[l - 1] as usize;
            if n > 0 {
                t.valoffset[l] = p as i32 - codes[p] as i32;
                p += n;
                t.maxcode[l] = codes[p - 1] as i32;
            }
        }
        t.valoffset[17] = 0;
        t.maxcode[17] = 0xFFFFF;
        let mut p = 0usize;
        for l in 1..=LOOKAHEAD as usize {
            for _ in 0..raw.counts[l - 1] {
                let look = (codes[p] as usize) << (LOOKAHEAD as usize - l);
                for e in &mut t.lookup[look..look + (1 << (LOOKAHEAD as usize - l))] {
                    *e = ((l as u16) << LOOKAHEAD) | u16::from(t.symbols[p]);
                }
                p += 1;
            }
        }
        if is_dc && t.symbols[..numsymbols].iter().any(|&s| s > 15) {
            return Err("bad Huffman table (DC symbol above 15)".into());
        }
        Ok(t)
    }
}

/// The byte source plus libjpeg's bit-reading state for the entropy-coded segments.
pub(super) struct Stream<'a> {
    data: &'a [u8],
    pub pos: usize,
    buf: u64,
    bits_left: i32,
    /// A marker that ended the current entropy-coded segment (its two bytes are consumed).
    pub unread_marker: Option<u8>,
    /// The current segment ran out of bits (libjpeg's `insufficient_data`).
    pub insufficient_data: bool,
    /// Corrupt-data conditions libjpeg only warns about (decoding goes on, as in Pillow).
    pub warnings: u32,
}

impl<'a> Stream<'a> {
    pub fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            buf: 0,
            bits_left: 0,
            unread_marker: None,
            insufficient_data: false,
            warnings: 0,
        }
    }

    pub fn byte(&mut self) -> Result<u8, Truncated> {
        let b = *self.data.get(self.pos).ok_or(Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(Truncated)?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from(self.byte()?) << 8 | u16::from(self.byte()?))
    }

    /// Start of a scan: empty bit buffer, fresh segment state.
    pub fn reset_bits(&mut self) {
        self.buf = 0;
        self.bits_left = 0;
        self.insufficient_data = false;
    }

    /// libjpeg's `next_marker`: skip to the next `FF xx` (xx not 0 or FF) and remember it.
    pub fn next_marker(&mut self) -> Result<u8, Truncated> {
        loop {
            let mut c = self.byte()?;
            while c != 0xFF {
                self.warnings += 1; // discarded data bytes
                c = self.byte()?;
            }
            loop {
                c = self.byte()?;
                if c != 0xFF {
                    break;
                }
            }
            if c != 0 {
                self.unread_marker = Some(c);
                return Ok(c);
            }
            self.warnings += 1;
        }
    }

    /// `jpeg_fill_bit_buffer`: top up to `MIN_GET_BITS`; a marker stops reading and, if fewer than
    /// `nbits` are left, the segment continues as zero bits.
    #[inline(never)]
    fn fill(&mut self, nbits: i32) -> Result<(), Truncated> {
        if self.unread_marker.is_none() {
            while self.bits_left < MIN_GET_BITS {
                let mut c = self.byte()?;
                if c == 0xFF {
                    loop {
                        c = self.byte()?;
                        if c != 0xFF {
                            break;
                        }
                    }
                    if c == 0 {
                        c = 0xFF;
                    } else {
                        self.unread_marker = Some(c);
                        self.pad_after_marker(nbits);
                        return Ok(());
                    }
                }
                self.buf = (self.buf << 8) | u64::from(c);
                self.bits_left += 8;
            }
            return Ok(());
        }
        self.pad_after_marker(nbits);
        Ok(())
    }

    fn pad_after_marker(&mut self, nbits: i32) {
        if nbits > self.bits_left {
            if !self.insufficient_data {
                self.warnings += 1;
                self.insufficient_data = true;
            }
            self.buf <<= MIN_GET_BITS - self.bits_left;
            self.bits_left = MIN_GET_BITS;
        }
    }

    #[inline(always)]
    fn ensure(&mut self, nbits: i32) -> Result<(), Truncated> {
        if self.bits_left < nbits {
            self.fill(nbits)?;
        }
        Ok(())
    }

    #[inline(always)]
    fn get_bits(&mut self, n: i32) -> i32 {
        self.bits_left -= n;
        ((self.buf >> self.bits_left) & ((1u64 << n) - 1)) as i32
    }

    /// `receive` + `HUFF_EXTEND`: `s` (1..=15) magnitude bits as a signed value.
    #[inline(always)]
    fn receive_extend(&mut self, s: i32) -> Result<i32, Truncated> {
        self.ensure(s)?;
        let r = self.get_bits(s);
        Ok(if r < (1 << (s - 1)) {
            r + (-1 << s) + 1
        } else {
            r
        })
    }

    /// `HUFF_DECODE`: 8-bit lookahead, then bit-by-bit (`jpeg_huff_decode`); an invalid code gives 0.
    #[inline(always)]
    fn decode(&mut self, t: &HuffTable) -> Result<i32, Truncated> {
        let mut nb = 1;
        if self.bits_left < LOOKAHEAD {
            self.fill(0)?;
        }
        if self.bits_left >= LOOKAHEAD {
            let look = ((self.buf >> (self.bits_left - LOOKAHEAD)) & 0xFF) as usize;
            let e = t.lookup[look];
            nb = i32::from(e >> LOOKAHEAD);
            if nb <= LOOKAHEAD {
                self.bits_left -= nb;
                return Ok(i32::from(e & 0xFF));
            }
        }
        self.ensure(nb)?;
        let mut code = self.get_bits(nb);
        let mut l = nb as usize;
        while code > t.maxcode[l] {
            self.ensure(1)?;
            code = (code << 1) | self.get_bits(1);
            l += 1;
        }
        if l > 16 {
            self.warnings += 1;
            return Ok(0);
        }
        Ok(i32::from(
            t.symbols[((code + t.valoffset[l]) as usize) & 0xFF],
        ))
    }

    /// libjpeg's restart processing: drop buffered bits, find RSTn (resynchronising like
    /// `jpeg_resync_to_restart` if it is not the expected one), and clear the out-of-data flag unless
    /// the resync left us at a marker.
    pub fn restart(&mut self, next_restart_num: &mut u8) -> Result<(), Truncated> {
        self.bits_left = 0;
        if self.unread_marker.is_none() {
            self.next_marker()?;
        }
        let desired = *next_restart_num;
        if self.unread_marker == Some(0xD0 + desired) {
            self.unread_marker = None;
        } else {
            self.warnings += 1;
            self.resync(desired)?;
        }
        *next_restart_num = (desired + 1) & 7;
        if self.unread_marker.is_none() {
            self.insufficient_data = false;
        }
        Ok(())
    }

    fn resync(&mut self, desired: u8) -> Result<(), Truncated> {
        loop {
            let marker = self.unread_marker.unwrap_or(0);
            let rst = |d: i32| 0xD0 + (d & 7) as u8;
            let d = i32::from(desired);
            let action = if marker < 0xC0 {
                2
            } else if !(0xD0..=0xD7).contains(&marker)
                || marker == rst(d + 1)
                || marker == rst(d + 2)
            {
                3
            } else if marker == rst(d - 1) || marker == rst(d - 2) {
                2
            } else {
                1
            };
            match action {
                1 => {
                    self.unread_marker = None;
                    return Ok(());
                }
                2 => {
                    self.next_marker()?;
                }
                _ => return Ok(()),
            }
        }
    }
}

/// Per-scan entropy state: DC predictors (by position in the scan), EOB run, restart bookkeeping.
pub(super) struct ScanState {
    pub last_dc: [i32; 4],
    pub eobrun: u32,
    pub restarts_to_go: u32,
    pub next_restart_num: u8,
}

impl ScanState {
    pub fn new(restart_interval: u16) -> Self {
        Self {
            last_dc: [0; 4],
            eobrun: 0,
            restarts_to_go: u32::from(restart_interval),
            next_restart_num: 0,
        }
    }

    /// Called before each MCU: process a due restart marker.
    pub fn before_mcu(&mut self, s: &mut Stream, restart_interval: u16) -> Result<(), Truncated> {
        if restart_interval != 0 {
            if self.restarts_to_go == 0 {
                s.restart(&mut self.next_restart_num)?;
                self.last_dc = [0; 4];
                self.eobrun = 0;
                self.restarts_to_go = u32::from(restart_interval);
            }
            self.restarts_to_go -= 1;
        }
        Ok(())
    }
}

/// The DC difference of one block, added to the predictor of scan component `ci`.
fn decode_dc(
    s: &mut Stream,
    st: &mut ScanState,
    ci: usize,
    dc: &HuffTable,
) -> Result<Result<i32, String>, Truncated> {
    let mut v = s.decode(dc)?;
    if v != 0 {
        v = s.receive_extend(v)?;
    }
    let Some(sum) = st.last_dc[ci].checked_add(v) else {
        return Ok(Err("DC coefficient out of range".into()));
    };
    st.last_dc[ci] = sum;
    Ok(Ok(sum))
}

/// Sequential (baseline / extended) block: DC difference then the 63 AC coefficients.
pub(super) fn decode_block_sequential(
    s: &mut Stream,
    st: &mut ScanState,
    ci: usize,
    dc: &HuffTable,
    ac: &HuffTable,
    block: &mut [i16],
) -> Result<Result<(), String>, Truncated> {
    let dcv = match decode_dc(s, st, ci, dc)? {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    block[0] = dcv as i16;
    let mut k = 1usize;
    while k < 64 {
        let rs = s.decode(ac)?;
        let (r, size) = ((rs >> 4) as usize, rs & 15);
        if size != 0 {
            k += r;
            let v = s.receive_extend(size)?;
            block[NATURAL_ORDER[k]] = v as i16;
        } else {
            if r != 15 {
                break;
            }
            k += 15;
        }
        k += 1;
    }
    Ok(Ok(()))
}

/// Progressive DC first pass for one block.
pub(super) fn decode_dc_first(
    s: &mut Stream,
    st: &mut ScanState,
    ci: usize,
    dc: &HuffTable,
    al: u8,
    block: &mut [i16],
) -> Result<Result<(), String>, Truncated> {
    let v = match decode_dc(s, st, ci, dc)? {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    block[0] = (v as u32).wrapping_shl(u32::from(al)) as i16;
    Ok(Ok(()))
}

/// Progressive DC refinement: one more bit of the DC value.
pub(super) fn decode_dc_refine(s: &mut Stream, al: u8, block: &mut [i16]) -> Result<(), Truncated> {
    s.ensure(1)?;
    if s.get_bits(1) != 0 {
        block[0] |= (1i32 << al) as i16;
    }
    Ok(())
}

/// Progressive AC first pass over the band `ss..=se` of one block.
pub(super) fn decode_ac_first(
    s: &mut Stream,
    st: &mut ScanState,
    ac: &HuffTable,
    (ss, se, al): (u8, u8, u8),
    block: &mut [i16],
) -> Result<(), Truncated> {
    if st.eobrun > 0 {
        st.eobrun -= 1;
        return Ok(());
    }
    let mut k = usize::from(ss);
    while k <= usize::from(se) {
        let rs = s.decode(ac)?;
        let (r, size) = (rs >> 4, rs & 15);
        if size != 0 {
            k += r as usize;
            let v = s.receive_extend(size)?;
            block[NATURAL_ORDER[k]] = (v as u32).wrapping_shl(u32::from(al)) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            let mut run = 1u32 << r;
            if r != 0 {
                s.ensure(r)?;
                run += s.get_bits(r) as u32;
            }
            st.eobrun = run - 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

/// Progressive AC refinement of one block (libjpeg's `decode_mcu_AC_refine`). Suspension is fatal here
/// (the file is truncated), so the newly-nonzero bookkeeping libjpeg keeps for resuming is not needed.
pub(super) fn decode_ac_refine(
    s: &mut Stream,
    st: &mut ScanState,
    ac: &HuffTable,
    (ss, se, al): (u8, u8, u8),
    block: &mut [i16],
) -> Result<(), Truncated> {
    let p1 = (1i32 << al) as i16;
    let m1 = (-1i32 << al) as i16;
    let se = usize::from(se);
    let mut k = usize::from(ss);
    let refine = |s: &mut Stream, coef: &mut i16| -> Result<(), Truncated> {
        s.ensure(1)?;
        if s.get_bits(1) != 0 && (*coef & p1) == 0 {
            *coef = coef.wrapping_add(if *coef >= 0 { p1 } else { m1 });
        }
        Ok(())
    };
    if st.eobrun == 0 {
        while k <= se {
            let rs = s.decode(ac)?;
            let mut r = rs >> 4;
            let size = rs & 15;
            let mut newval = 0i16;
            if size != 0 {
                if size != 1 {
                    s.warnings += 1;
                }
                s.ensure(1)?;
                newval = if s.get_bits(1) != 0 { p1 } else { m1 };
            } else if r != 15 {
                st.eobrun = 1 << r;
                if r != 0 {
                    s.ensure(r)?;
                    st.eobrun += s.get_bits(r) as u32;
                }
                break;
            }
            loop {
                let pos = NATURAL_ORDER[k];
                if block[pos] != 0 {
                    refine(s, &mut block[pos])?;
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
                if k > se {
                    break;
                }
            }
            if newval != 0 {
                block[NATURAL_ORDER[k]] = newval;
            }
            k += 1;
        }
    }
    if st.eobrun > 0 {
        while k <= se {
            let pos = NATURAL_ORDER[k];
            if block[pos] != 0 {
                refine(s, &mut block[pos])?;
            }
            k += 1;
        }
        st.eobrun -= 1;
    }
    Ok(())
}
