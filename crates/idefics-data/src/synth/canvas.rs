//! A small anti-aliased rasteriser for the synthetic images: rectangles, circles, convex polygons, thick lines
//! and text (ab_glyph with the DejaVu fonts shipped in `assets/fonts`). Own code instead of `imageproc`
//! (which pulls nalgebra) keeps the build lean; everything is deterministic f32 arithmetic.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

use crate::error::{DataError, Result};

static SANS: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSans.ttf");
static MONO: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSansMono.ttf");

/// The embedded fonts.
pub struct Fonts {
    pub sans: FontRef<'static>,
    pub mono: FontRef<'static>,
}

impl Fonts {
    /// Parses the embedded DejaVu Sans / Sans Mono.
    pub fn load() -> Result<Self> {
        let parse = |bytes: &'static [u8], name: &str| {
            FontRef::try_from_slice(bytes)
                .map_err(|e| DataError::Invalid(format!("embedded font {name}: {e}")))
        };
        Ok(Self {
            sans: parse(SANS, "DejaVuSans.ttf")?,
            mono: parse(MONO, "DejaVuSansMono.ttf")?,
        })
    }
}

/// An RGB image being drawn on.
pub struct Canvas {
    pub img: RgbImage,
}

impl Canvas {
    /// A `w`x`h` canvas filled with `bg`.
    pub fn new(w: u32, h: u32, bg: [u8; 3]) -> Self {
        Self {
            img: RgbImage::from_pixel(w.max(1), h.max(1), Rgb(bg)),
        }
    }

    pub fn width(&self) -> f32 {
        self.img.width() as f32
    }

    pub fn height(&self) -> f32 {
        self.img.height() as f32
    }

    /// Blends `color` into pixel (x, y) with coverage `a` in [0, 1]; outside pixels are ignored.
    pub fn blend(&mut self, x: i64, y: i64, color: [u8; 3], a: f32) {
        if x < 0 || y < 0 || a <= 0.0 {
            return;
        }
        let (x, y) = (x as u32, y as u32);
        if x >= self.img.width() || y >= self.img.height() {
            return;
        }
        let a = a.min(1.0);
        let p = self.img.get_pixel_mut(x, y);
        for (dst, &src) in p.0.iter_mut().zip(&color) {
            let v = *dst as f32 * (1.0 - a) + src as f32 * a;
            *dst = v.round().clamp(0.0, 255.0) as u8;
        }
    }

    /// Fills the axis-aligned rectangle [x0, x1) x [y0, y1) (pixel-aligned).
    pub fn fill_rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, color: [u8; 3]) {
        for y in y0.round() as i64..y1.round() as i64 {
            for x in x0.round() as i64..x1.round() as i64 {
                self.blend(x, y, color, 1.0);
            }
        }
    }

    /// Outlines a rectangle with lines of width `w`.
    pub fn stroke_rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, w: f32, color: [u8; 3]) {
        self.fill_rect(x0, y0, x1, y0 + w, color);
        self.fill_rect(x0, y1 - w, x1, y1, color);
        self.fill_rect(x0, y0, x0 + w, y1, color);
        self.fill_rect(x1 - w, y0, x1, y1, color);
    }

    /// Fills a disc; the edge pixel coverage is the distance to the boundary (1-pixel anti-aliasing).
    pub fn fill_circle(&mut self, cx: f32, cy: f32, r: f32, color: [u8; 3]) {
        let (x0, x1) = ((cx - r - 1.0).floor() as i64, (cx + r + 1.0).ceil() as i64);
        let (y0, y1) = ((cy - r - 1.0).floor() as i64, (cy + r + 1.0).ceil() as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let d = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)).sqrt();
                self.blend(x, y, color, (r - d + 0.5).clamp(0.0, 1.0));
            }
        }
    }

    /// Fills a convex polygon (either winding), 4x4 supersampled.
    pub fn fill_convex(&mut self, pts: &[(f32, f32)], color: [u8; 3]) {
        if pts.len() < 3 {
            return;
        }
        let area: f32 = (0..pts.len())
            .map(|i| {
                let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
                a.0 * b.1 - b.0 * a.1
            })
            .sum();
        let sign = if area < 0.0 { -1.0 } else { 1.0 };
        let inside = |x: f32, y: f32| {
            (0..pts.len()).all(|i| {
                let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
                sign * ((b.0 - a.0) * (y - a.1) - (b.1 - a.1) * (x - a.0)) >= 0.0
            })
        };
        let min_x = pts.iter().map(|p| p.0).fold(f32::MAX, f32::min).floor() as i64;
        let max_x = pts.iter().map(|p| p.0).fold(f32::MIN, f32::max).ceil() as i64;
        let min_y = pts.iter().map(|p| p.1).fold(f32::MAX, f32::min).floor() as i64;
        let max_y = pts.iter().map(|p| p.1).fold(f32::MIN, f32::max).ceil() as i64;
        for y in min_y..=max_y {
            for x in min_x..=max_x {
                let mut hits = 0;
                for sy in 0..4 {
                    for sx in 0..4 {
                        let px = x as f32 + (sx as f32 + 0.5) / 4.0;
                        let py = y as f32 + (sy as f32 + 0.5) / 4.0;
                        hits += inside(px, py) as u32;
                    }
                }
                self.blend(x, y, color, hits as f32 / 16.0);
            }
        }
    }

    /// A straight line of width `w` (a thin rotated rectangle).
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), w: f32, color: [u8; 3]) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if len == 0.0 {
            return;
        }
        let (nx, ny) = (-dy / len * w / 2.0, dx / len * w / 2.0);
        self.fill_convex(
            &[
                (a.0 + nx, a.1 + ny),
                (b.0 + nx, b.1 + ny),
                (b.0 - nx, b.1 - ny),
                (a.0 - nx, a.1 - ny),
            ],
            color,
        );
    }

    /// Draws `text` with its top-left corner at (x, y) and returns its width in pixels.
    pub fn text(
        &mut self,
        font: &FontRef<'_>,
        px: f32,
        x: f32,
        y: f32,
        color: [u8; 3],
        text: &str,
    ) -> f32 {
        let scaled = font.as_scaled(PxScale::from(px));
        let baseline = y + scaled.ascent();
        let mut pen = x;
        let mut prev = None;
        for ch in text.chars() {
            let id = scaled.glyph_id(ch);
            if let Some(p) = prev {
                pen += scaled.kern(p, id);
            }
            let glyph = id.with_scale_and_position(px, ab_glyph::point(pen, baseline));
            if let Some(outline) = font.outline_glyph(glyph) {
                let bounds = outline.px_bounds();
                outline.draw(|gx, gy, c| {
                    self.blend(
                        bounds.min.x as i64 + gx as i64,
                        bounds.min.y as i64 + gy as i64,
                        color,
                        c,
                    );
                });
            }
            pen += scaled.h_advance(id);
            prev = Some(id);
        }
        pen - x
    }
}

/// Width and height (ascent - descent) of `text` at `px`.
pub fn measure(font: &FontRef<'_>, px: f32, text: &str) -> (f32, f32) {
    let scaled = font.as_scaled(PxScale::from(px));
    let mut w = 0.0;
    let mut prev = None;
    for ch in text.chars() {
        let id = scaled.glyph_id(ch);
        if let Some(p) = prev {
            w += scaled.kern(p, id);
        }
        w += scaled.h_advance(id);
        prev = Some(id);
    }
    (w, scaled.ascent() - scaled.descent())
}

/// PNG bytes of an image (deterministic for a given `png` crate version).
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| DataError::Invalid(format!("PNG encoding failed: {e}")))?;
    Ok(out)
}
