//! The EXIF orientation of a JPEG as Pillow's `Image.getexif()` finds it for `ImageOps.exif_transpose`:
//! tag 0x0112 of IFD0 in the APP1 "Exif" data, else `tiff:Orientation` in the XMP packet. A tag that is
//! present but not a single integer 1..=8 means "no transposition", as in Pillow; unreadable EXIF
//! counts as absent.

/// The orientation value to apply (1..=8), if any.
pub(crate) fn orientation(exif: Option<&[u8]>, xmp: Option<&[u8]>) -> Option<u8> {
    let tag = exif.and_then(|e| ifd0_orientation(e.strip_prefix(b"Exif\0\0").unwrap_or(e)));
    let value = match tag {
        Some(v) => v,
        None => xmp.and_then(xmp_orientation)?,
    };
    match value {
        Some(v @ 1..=8) => Some(v as u8),
        _ => None,
    }
}

/// `Some(value)` if IFD0 has an orientation entry (`Some(None)` if it is not one integer).
fn ifd0_orientation(tiff: &[u8]) -> Option<Option<u32>> {
    let big = match tiff.get(..4)? {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = tiff.get(o..o + 2)?;
        Some(if big {
            u16::from_be_bytes([b[0], b[1]])
        } else {
            u16::from_le_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = tiff.get(o..o + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    };
    let ifd = u32_at(4)? as usize;
    let entries = u16_at(ifd)? as usize;
    for i in 0..entries {
        let e = ifd + 2 + i * 12;
        let Some(tag) = u16_at(e) else { break };
        if tag != 0x0112 {
            continue;
        }
        let (kind, count) = (u16_at(e + 2)?, u32_at(e + 4)?);
        if count != 1 {
            return Some(None);
        }
        return Some(match kind {
            1 => tiff.get(e + 8).map(|&b| u32::from(b)),
            3 => u16_at(e + 8).map(u32::from),
            4 => u32_at(e + 8),
            _ => None,
        });
    }
    None
}

/// Pillow's `rb'tiff:Orientation(="|>)([0-9])'` search.
fn xmp_orientation(xmp: &[u8]) -> Option<Option<u32>> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut from = 0;
    while let Some(i) = xmp[from..].windows(KEY.len()).position(|w| w == KEY) {
        let rest = &xmp[from + i + KEY.len()..];
        let digit = match rest {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(d),
            _ => None,
        };
        if let Some(d) = digit {
            return Some(Some(u32::from(d - b'0')));
        }
        from += i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_then_xmp() {
        // Little-endian TIFF, IFD0 at 8 with one SHORT orientation entry = 6.
        let mut t = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0".to_vec();
        assert_eq!(orientation(Some(&t), None), Some(6));
        t[18] = 9; // out of range: present, so XMP is not consulted, and nothing is applied
        assert_eq!(orientation(Some(&t), Some(b"tiff:Orientation=\"3\"")), None);
        assert_eq!(orientation(None, Some(b"<tiff:Orientation>8</x>")), Some(8));
        assert_eq!(orientation(Some(b"garbage"), None), None);
    }
}
