//! A contact sheet: generated examples tiled in a grid with one question and answer under each, so people can
//! see what the generator draws (`docs/synth-examples.png`).

use image::imageops::{resize, FilterType};
use image::RgbImage;

use super::canvas::{Canvas, Fonts};
use super::task::Example;

/// Tiles `examples` in `cols` columns of `cell`x`cell` pixels, with the first question and its answer below.
pub fn contact_sheet(examples: &[Example], cols: usize, cell: u32, fonts: &Fonts) -> RgbImage {
    let cols = cols.max(1);
    let rows = examples.len().div_ceil(cols).max(1);
    let text_h = 58;
    let (cw, ch) = (cell + 8, cell + text_h + 8);
    let mut c = Canvas::new(cols as u32 * cw, rows as u32 * ch, [255, 255, 255]);
    for (k, ex) in examples.iter().enumerate() {
        let (x0, y0) = ((k % cols) as u32 * cw + 4, (k / cols) as u32 * ch + 4);
        let (w, h) = ex.image.dimensions();
        let scale = (cell as f32 / w.max(h) as f32).min(1.0);
        let (sw, sh) = (
            ((w as f32 * scale) as u32).max(1),
            ((h as f32 * scale) as u32).max(1),
        );
        let small = resize(&ex.image, sw, sh, FilterType::Triangle);
        image::imageops::overlay(&mut c.img, &small, x0 as i64, y0 as i64);
        c.stroke_rect(
            x0 as f32,
            y0 as f32,
            (x0 + sw) as f32,
            (y0 + sh) as f32,
            1.0,
            [180, 180, 180],
        );
        if let Some(qa) = ex.qas.first() {
            let q: String = qa.question.lines().next().unwrap_or("").chars().collect();
            let mut lines: Vec<String> = Vec::new();
            let mut cur = String::new();
            for word in q.split_whitespace() {
                if cur.len() + word.len() + 1 > (cell as usize / 7) {
                    lines.push(std::mem::take(&mut cur));
                }
                if !cur.is_empty() {
                    cur.push(' ');
                }
                cur.push_str(word);
            }
            lines.push(cur);
            let ty = (y0 + cell + 4) as f32;
            for (i, l) in lines.iter().take(2).enumerate() {
                c.text(
                    &fonts.sans,
                    12.0,
                    x0 as f32,
                    ty + i as f32 * 15.0,
                    [40, 40, 40],
                    l,
                );
            }
            c.text(
                &fonts.sans,
                13.0,
                x0 as f32,
                ty + 32.0,
                [0, 110, 0],
                &format!("answer: {}", qa.answer),
            );
        }
    }
    c.img
}
