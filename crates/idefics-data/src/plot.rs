//! Line charts as PNG (training loss curves, evaluation scores), drawn with the synthetic-data rasteriser and
//! the bundled DejaVu font, so no plotting dependency is needed.

use crate::error::Result;
use crate::synth::{measure, png_bytes, Canvas, Fonts};

/// One named series of `(x, y)` points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
    pub color: [u8; 3],
}

const W: u32 = 900;
const H: u32 = 520;
const LEFT: f32 = 80.0;
const RIGHT: f32 = 30.0;
const TOP: f32 = 50.0;
const BOTTOM: f32 = 60.0;

/// "Nice" tick step (1, 2 or 5 times a power of ten) for a range.
fn tick_step(range: f64, target_ticks: f64) -> f64 {
    let raw = (range / target_ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm < 1.5 {
        1.0
    } else if norm < 3.5 {
        2.0
    } else if norm < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    // A tick at zero reached by accumulation can be -0.0 or 1e-17: print it as 0.
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

/// Renders the series on shared axes; non-finite points are skipped. Returns PNG bytes.
pub fn line_chart_png(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<Vec<u8>> {
    let fonts = Fonts::load()?;
    let mut c = Canvas::new(W, H, [255, 255, 255]);
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = all.iter().fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = (W as f32 - LEFT - RIGHT, H as f32 - TOP - BOTTOM);
    let sx = |x: f64| LEFT + ((x - x0) / (x1 - x0)) as f32 * pw;
    let sy = |y: f64| TOP + ph - ((y - y0) / (y1 - y0)) as f32 * ph;

    let grey = [220, 220, 220];
    let dark = [60, 60, 60];
    let ystep = tick_step(y1 - y0, 6.0);
    let mut v = (y0 / ystep).ceil() * ystep;
    while v <= y1 {
        let y = sy(v);
        c.line((LEFT, y), (LEFT + pw, y), 1.0, grey);
        let label = fmt_tick(v, ystep);
        let (tw, th) = measure(&fonts.sans, 13.0, &label);
        c.text(
            &fonts.sans,
            13.0,
            LEFT - 8.0 - tw,
            y - th / 2.0,
            dark,
            &label,
        );
        v += ystep;
    }
    let xstep = tick_step(x1 - x0, 8.0);
    let mut v = (x0 / xstep).ceil() * xstep;
    while v <= x1 {
        let x = sx(v);
        c.line((x, TOP), (x, TOP + ph), 1.0, grey);
        let label = fmt_tick(v, xstep);
        let (tw, _) = measure(&fonts.sans, 13.0, &label);
        c.text(
            &fonts.sans,
            13.0,
            x - tw / 2.0,
            TOP + ph + 6.0,
            dark,
            &label,
        );
        v += xstep;
    }
    c.stroke_rect(LEFT, TOP, LEFT + pw, TOP + ph, 1.0, dark);
    c.text(&fonts.sans, 18.0, LEFT, 14.0, [0, 0, 0], title);
    let (tw, _) = measure(&fonts.sans, 14.0, x_label);
    c.text(
        &fonts.sans,
        14.0,
        LEFT + pw / 2.0 - tw / 2.0,
        H as f32 - 26.0,
        dark,
        x_label,
    );
    c.text(&fonts.sans, 14.0, 8.0, TOP - 22.0, dark, y_label);

    let mut legend_x = LEFT + pw;
    for s in series.iter().rev() {
        let (tw, _) = measure(&fonts.sans, 13.0, s.name);
        legend_x -= tw + 40.0;
        c.line((legend_x, 24.0), (legend_x + 20.0, 24.0), 3.0, s.color);
        c.text(&fonts.sans, 13.0, legend_x + 25.0, 16.0, dark, s.name);
    }
    for s in series {
        let pts: Vec<(f32, f32)> = s
            .points
            .iter()
            .filter(finite)
            .map(|&(x, y)| (sx(x), sy(y)))
            .collect();
        if pts.len() == 1 {
            c.fill_circle(pts[0].0, pts[0].1, 3.0, s.color);
        }
        for w in pts.windows(2) {
            c.line(w[0], w[1], 2.0, s.color);
        }
    }
    png_bytes(&c.img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_a_png_with_the_series_drawn() {
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|i| (i as f64, 5.0 / (1.0 + i as f64)))
            .collect();
        let png = line_chart_png(
            "loss",
            "step",
            "loss",
            &[Series {
                name: "train",
                points: &pts,
                color: [200, 30, 30],
            }],
        )
        .unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (W, H));
        let red = img.pixels().filter(|p| p.0[0] > 150 && p.0[1] < 80).count();
        assert!(red > 200, "the curve is missing ({red} red pixels)");
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(10.0, 5.0), 2.0);
        assert!((tick_step(0.9, 4.0) - 0.2).abs() < 1e-12);
        assert!((tick_step(700.0, 6.0) - 100.0).abs() < 1e-9);
        assert_eq!(fmt_tick(0.4, 0.2), "0.4");
    }
}
