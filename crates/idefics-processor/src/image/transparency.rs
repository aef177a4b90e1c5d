//! The single transparent colour Pillow remembers after `convert("RGB")`.
//!
//! Through `Idefics2Processor`, `load_image` converts a palette / grey / RGB image that declares one
//! transparent colour (PNG `tRNS`, GIF graphic control extension) to RGB, and Pillow keeps that colour in
//! `info["transparency"]`. The image processor's `convert_to_rgb` then sees "transparency", converts to RGBA
//! (alpha 0 exactly where the pixel equals that colour) and composites over white: every pixel of the
//! transparent colour becomes (255, 255, 255). To reproduce it we read the colour from the file's headers.
//! Not covered (Pillow drops or transforms the key there): palettes with several partial alphas (PIL warns
//! and deletes the key), 16-bit and sub-8-bit grey/RGB keys.

/// PNG: the `tRNS` colour of an 8-bit grey / RGB image, or of a palette whose `tRNS` marks exactly one
/// entry fully transparent and the rest opaque (Pillow's `_simple_palette`).
pub(crate) fn png_color_key(bytes: &[u8]) -> Option<[u8; 3]> {
    let mut pos = 8;
    let (mut depth, mut color_type) = (0u8, 0u8);
    let mut palette: &[u8] = &[];
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?) as usize;
        let kind = bytes.get(pos + 4..pos + 8)?;
        let data = bytes.get(pos + 8..pos + 8 + len)?;
        match kind {
            b"IHDR" => {
                depth = *data.get(8)?;
                color_type = *data.get(9)?;
            }
            b"PLTE" => palette = data,
            b"tRNS" => {
                return match (color_type, depth) {
                    (3, _) => {
                        let simple = data.iter().filter(|&&a| a == 0).count() == 1
                            && data.iter().all(|&a| a == 0 || a == 0xFF);
                        let idx = data.iter().position(|&a| a == 0)?;
                        let rgb = palette.get(idx * 3..idx * 3 + 3)?;
                        simple.then(|| [rgb[0], rgb[1], rgb[2]])
                    }
                    (0, 8) => {
                        let v = u16::from_be_bytes(data.get(0..2)?.try_into().ok()?);
                        let v = u8::try_from(v).ok()?;
                        Some([v, v, v])
                    }
                    (2, 8) => {
                        let c = |i: usize| -> Option<u8> {
                            u8::try_from(u16::from_be_bytes(data.get(i..i + 2)?.try_into().ok()?))
                                .ok()
                        };
                        Some([c(0)?, c(2)?, c(4)?])
                    }
                    _ => None,
                };
            }
            b"IDAT" | b"IEND" => return None,
            _ => {}
        }
        pos += 12 + len;
    }
    None
}

/// GIF: the palette colour of the first frame's transparent index (graphic control extension).
pub(crate) fn gif_color_key(bytes: &[u8]) -> Option<[u8; 3]> {
    let packed = *bytes.get(10)?;
    let mut pos = 13;
    let mut global: &[u8] = &[];
    if packed & 0x80 != 0 {
        let n = 3 << ((packed & 7) + 1);
        global = bytes.get(pos..pos + n)?;
        pos += n;
    }
    let mut transparent: Option<usize> = None;
    loop {
        match *bytes.get(pos)? {
            0x21 => {
                let label = *bytes.get(pos + 1)?;
                pos += 2;
                if label == 0xF9 && *bytes.get(pos)? >= 4 {
                    let flags = *bytes.get(pos + 1)?;
                    if flags & 1 != 0 {
                        transparent = Some(usize::from(*bytes.get(pos + 4)?));
                    }
                }
                // Skip the data sub-blocks.
                loop {
                    let n = usize::from(*bytes.get(pos)?);
                    pos += 1 + n;
                    if n == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let idx = transparent?;
                let flags = *bytes.get(pos + 9)?;
                let table = if flags & 0x80 != 0 {
                    let n = 3 << ((flags & 7) + 1);
                    bytes.get(pos + 10..pos + 10 + n)?
                } else {
                    global
                };
                let rgb = table.get(idx * 3..idx * 3 + 3)?;
                return Some([rgb[0], rgb[1], rgb[2]]);
            }
            _ => return None,
        }
    }
}
