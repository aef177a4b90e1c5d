//! Truncation checks the decoders do not make, so that a cut file is refused as Pillow refuses it
//! (with `ImageFile.LOAD_TRUNCATED_IMAGES` off) instead of being decoded with made-up pixels.
//!
//! - WebP: the `image-webp` decoder reads a lossy frame cut by a few bytes as if the missing bits were
//!   zeros; libwebp (Pillow) checks the RIFF size first. Refused when the data is shorter than the RIFF
//!   header says, or when a chunk claims more bytes than the file holds (image-webp would allocate the
//!   claimed size first: gigabytes for a crafted 4 KiB file). Bytes after the RIFF chunk are not passed
//!   on (image-webp would read them as more chunks).
//! - GIF: a first frame whose last data sub-block is cut still decodes when the cut falls after the
//!   last pixel's code; Pillow refuses it. Refused when a sub-block of the first frame is cut (a
//!   missing block terminator or trailer after complete data is accepted, as Pillow does).
//!
//! PNG, BMP and JPEG need nothing here: their decoders refuse missing pixel data themselves (and are
//! stricter than Pillow about bytes after the pixels: a PNG missing only its final CRC / IEND, or a BMP
//! missing its last padding byte, is refused where Pillow decodes it).

use super::ImageError;

fn truncated(format: &'static str) -> ImageError {
    ImageError::Decode {
        format,
        message: "image file is truncated".into(),
    }
}

/// WebP: the RIFF chunk must be complete and its chunks must fit in it. Returns the RIFF chunk's bytes,
/// which is all the decoder may see: image-webp also parses bytes after the RIFF end as chunks.
pub(crate) fn check_webp(bytes: &[u8]) -> Result<&[u8], ImageError> {
    let Some(size) = bytes.get(4..8) else {
        return Err(truncated("WebP"));
    };
    let riff_len = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as u64 + 8;
    if (bytes.len() as u64) < riff_len {
        return Err(truncated("WebP"));
    }
    // Every chunk must fit in the RIFF data: image-webp allocates a metadata chunk (EXIF, XMP, ICC) at
    // the size its header claims before reading it, so a 4 GiB claim in a 4 KiB file allocates 4 GiB.
    let end = riff_len.min(bytes.len() as u64) as usize;
    let mut pos = 12usize;
    while pos + 8 <= end {
        let size = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]);
        let next = pos as u64 + 8 + u64::from(size) + u64::from(size & 1);
        if next > end as u64 + u64::from(size & 1) {
            return Err(ImageError::Decode {
                format: "WebP",
                message: format!(
                    "chunk {:?} claims {size} bytes, more than the file holds",
                    String::from_utf8_lossy(&bytes[pos..pos + 4])
                ),
            });
        }
        pos = next as usize;
    }
    Ok(&bytes[..end])
}

/// GIF: every data sub-block up to the end of the first image must be present, and the first frame
/// must fit the pixel cap (the gif decoder allocates a frame at its declared size, which may exceed the
/// logical screen size that the header check sees).
pub(crate) fn check_gif(bytes: &[u8], max_pixels: u64) -> Result<(), ImageError> {
    let err = || truncated("GIF");
    let mut pos = 13usize; // header + logical screen descriptor
    let packed = *bytes.get(10).ok_or_else(err)?;
    if packed & 0x80 != 0 {
        pos += 3 << ((packed & 7) + 1);
    }
    // Sub-blocks until the terminator; `Ok(true)` if the data ended cleanly where a block would start.
    let skip_sub_blocks = |pos: &mut usize| -> Result<bool, ImageError> {
        loop {
            let Some(&len) = bytes.get(*pos) else {
                return Ok(true);
            };
            *pos += 1;
            if len == 0 {
                return Ok(false);
            }
            if *pos + usize::from(len) > bytes.len() {
                return Err(err());
            }
            *pos += usize::from(len);
        }
    };
    loop {
        match bytes.get(pos) {
            Some(0x21) => {
                pos += 2; // introducer + label
                if skip_sub_blocks(&mut pos)? {
                    return Err(err());
                }
            }
            Some(0x2C) => {
                let packed = *bytes.get(pos + 9).ok_or_else(err)?;
                let le = |o: usize| u64::from(u16::from_le_bytes([bytes[o], bytes[o + 1]]));
                let (width, height) = (le(pos + 5), le(pos + 7));
                if width * height > max_pixels {
                    return Err(ImageError::TooManyPixels {
                        width,
                        height,
                        pixels: width * height,
                        max_pixels,
                    });
                }
                pos += 10;
                if packed & 0x80 != 0 {
                    pos += 3 << ((packed & 7) + 1);
                }
                pos += 1; // LZW minimum code size
                if pos > bytes.len() {
                    return Err(err());
                }
                skip_sub_blocks(&mut pos)?;
                return Ok(());
            }
            // Trailer, junk, or the end: the decoder reports what it makes of it.
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riff_size_and_gif_sub_blocks() {
        let mut webp = b"RIFF\x0c\0\0\0WEBPVP8 ".to_vec();
        webp.extend_from_slice(&[0; 8]);
        assert!(check_webp(&webp).is_ok());
        assert!(check_webp(&webp[..19]).is_err());
        let mut huge_chunk = webp.clone();
        huge_chunk[16..20].copy_from_slice(&0xF000_0000u32.to_le_bytes());
        assert!(check_webp(&huge_chunk).is_err());
        // GIF: no global table, one 1x1 image with one 2-byte data block.
        let gif = b"GIF89a\x01\0\x01\0\0\0\0\x2c\0\0\0\0\x01\0\x01\0\0\x02\x02\x4c\x01\0\x3b";
        assert!(check_gif(gif, 10).is_ok());
        assert!(check_gif(&gif[..gif.len() - 2], 10).is_ok()); // no terminator / trailer: accepted
        assert!(check_gif(&gif[..gif.len() - 3], 10).is_err()); // data cut
        let mut big_frame = gif.to_vec();
        big_frame[18..22].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0x00]); // frame 65535 x 255
        assert!(matches!(
            check_gif(&big_frame, 1 << 20),
            Err(ImageError::TooManyPixels { .. })
        ));
    }
}
