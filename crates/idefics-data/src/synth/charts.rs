//! Bar and line charts: read values, find maxima / minima, compare, count bars, follow trends.

use serde_json::json;

use super::canvas::{measure, Canvas, Fonts};
use super::task::{choose_questions, Example, Qa, COLOURS};
use crate::rng::Rng;

/// Bar labels (the answer vocabulary of "which category" questions).
pub const CATEGORIES: [&str; 12] = [
    "cats", "dogs", "birds", "fish", "frogs", "bees", "owls", "bats", "ants", "cows", "pigs",
    "ducks",
];
/// Values are integers in 1..=MAX_VALUE.
pub const MAX_VALUE: i64 = 20;

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Draws axes with ticks 0, 5, 10, 15, 20 and light grid lines; returns a value -> y mapping.
fn axes(
    c: &mut Canvas,
    fonts: &Fonts,
    left: f32,
    top: f32,
    right: f32,
    bottom: f32,
) -> impl Fn(f32) -> f32 {
    let px = 11.0;
    let to_y = move |v: f32| bottom - (bottom - top) * v / MAX_VALUE as f32;
    for t in (0..=MAX_VALUE).step_by(5) {
        let y = to_y(t as f32);
        c.line((left, y), (right, y), 1.0, [225, 225, 225]);
        let s = t.to_string();
        let (tw, th) = measure(&fonts.sans, px, &s);
        c.text(
            &fonts.sans,
            px,
            left - tw - 4.0,
            y - th / 2.0,
            [60, 60, 60],
            &s,
        );
    }
    c.line((left, top), (left, bottom), 1.5, [40, 40, 40]);
    c.line((left, bottom), (right, bottom), 1.5, [40, 40, 40]);
    to_y
}

/// Generates one chart (bar or line).
pub fn generate(rng: &mut Rng, fonts: &Fonts) -> Example {
    if rng.chance(0.5) {
        bar(rng, fonts)
    } else {
        line(rng, fonts)
    }
}

fn bar(rng: &mut Rng, fonts: &Fonts) -> Example {
    let n = rng.range(3, 6) as usize;
    let labels: Vec<&str> = rng
        .sample_indices(CATEGORIES.len(), n)
        .into_iter()
        .map(|i| CATEGORIES[i])
        .collect();
    let values: Vec<i64> = (0..n).map(|_| rng.range(1, MAX_VALUE)).collect();
    let annotated = rng.chance(0.6);
    let colour = COLOURS[rng.below(COLOURS.len())].1;
    let w = rng.range(300, 480) as u32;
    let h = (w as f32 / (1.2 + rng.unit() * 0.6)) as u32;
    let (wf, hf) = (w as f32, h as f32);
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let (left, top, right, bottom) = (34.0, 28.0, wf - 10.0, hf - 24.0);
    c.text(
        &fonts.sans,
        13.0,
        left,
        6.0,
        [20, 20, 20],
        "Animals counted",
    );
    let to_y = axes(&mut c, fonts, left, top, right, bottom);
    let slot = (right - left) / n as f32;
    for (i, (&v, label)) in values.iter().zip(&labels).enumerate() {
        let x0 = left + slot * i as f32 + slot * 0.2;
        let x1 = x0 + slot * 0.6;
        c.fill_rect(x0, to_y(v as f32), x1, bottom, colour);
        let (lw, _) = measure(&fonts.sans, 11.0, label);
        c.text(
            &fonts.sans,
            11.0,
            (x0 + x1 - lw) / 2.0,
            bottom + 4.0,
            [40, 40, 40],
            label,
        );
        if annotated {
            let s = v.to_string();
            let (vw, vh) = measure(&fonts.sans, 11.0, &s);
            c.text(
                &fonts.sans,
                11.0,
                (x0 + x1 - vw) / 2.0,
                to_y(v as f32) - vh - 1.0,
                [20, 20, 20],
                &s,
            );
        }
    }

    let mut qas = vec![Qa::new(
        "count_bars",
        "How many bars are in the chart?",
        n.to_string(),
        4,
    )];
    let i = rng.below(n);
    if annotated {
        qas.push(Qa::new(
            "value",
            format!("What is the value for {}?", labels[i]),
            values[i].to_string(),
            MAX_VALUE as usize,
        ));
    }
    let max = values.iter().copied().max().unwrap_or(0);
    let min = values.iter().copied().min().unwrap_or(0);
    if values.iter().filter(|&&v| v == max).count() == 1 {
        if let Some(j) = values.iter().position(|&v| v == max) {
            let qa = Qa::new(
                "max",
                "Which category has the highest value?",
                labels[j],
                CATEGORIES.len(),
            );
            qas.push(if rng.chance(0.3) {
                qa.into_multiple_choice(rng, &labels)
            } else {
                qa
            });
        }
    }
    if values.iter().filter(|&&v| v == min).count() == 1 {
        if let Some(j) = values.iter().position(|&v| v == min) {
            qas.push(Qa::new(
                "min",
                "Which category has the lowest value?",
                labels[j],
                CATEGORIES.len(),
            ));
        }
    }
    let pair = rng.sample_indices(n, 2);
    if let [a, b] = pair[..] {
        if values[a] != values[b] {
            qas.push(Qa::new(
                "compare",
                format!(
                    "Is the value for {} greater than for {}?",
                    labels[a], labels[b]
                ),
                yes_no(values[a] > values[b]),
                2,
            ));
        }
    }
    let caption = format!(
        "A bar chart of animals counted: {}.",
        labels
            .iter()
            .zip(&values)
            .map(|(l, v)| format!("{l} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let record = json!({"type": "bar", "labels": labels, "values": values, "annotated": annotated});
    Example {
        image: c.img,
        caption,
        qas: choose_questions(rng, qas, usize::MAX),
        record,
    }
}

fn line(rng: &mut Rng, fonts: &Fonts) -> Example {
    let n = rng.range(4, 8) as usize;
    let start = rng.range(2000, 2016);
    let years: Vec<i64> = (0..n as i64).map(|k| start + k).collect();
    let values: Vec<i64> = (0..n).map(|_| rng.range(1, MAX_VALUE)).collect();
    let annotated = rng.chance(0.6);
    let colour = COLOURS[rng.below(COLOURS.len())].1;
    let w = rng.range(320, 480) as u32;
    let h = (w as f32 / (1.3 + rng.unit() * 0.5)) as u32;
    let (wf, hf) = (w as f32, h as f32);
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let (left, top, right, bottom) = (34.0, 28.0, wf - 16.0, hf - 24.0);
    c.text(
        &fonts.sans,
        13.0,
        left,
        6.0,
        [20, 20, 20],
        "Visitors per year (thousands)",
    );
    let to_y = axes(&mut c, fonts, left, top, right, bottom);
    let step = (right - left - 20.0) / (n - 1) as f32;
    let pts: Vec<(f32, f32)> = values
        .iter()
        .enumerate()
        .map(|(k, &v)| (left + 10.0 + step * k as f32, to_y(v as f32)))
        .collect();
    for seg in pts.windows(2) {
        c.line(seg[0], seg[1], 2.5, colour);
    }
    for ((&(x, y), year), &v) in pts.iter().zip(&years).zip(&values) {
        c.fill_circle(x, y, 3.5, colour);
        let s = year.to_string();
        let (yw, _) = measure(&fonts.sans, 10.0, &s);
        c.text(
            &fonts.sans,
            10.0,
            x - yw / 2.0,
            bottom + 4.0,
            [40, 40, 40],
            &s,
        );
        if annotated {
            let s = v.to_string();
            let (vw, vh) = measure(&fonts.sans, 11.0, &s);
            c.text(
                &fonts.sans,
                11.0,
                x - vw / 2.0,
                y - vh - 4.0,
                [20, 20, 20],
                &s,
            );
        }
    }

    let mut qas = Vec::new();
    let k = rng.below(n);
    if annotated {
        qas.push(Qa::new(
            "value",
            format!("What is the value in {}?", years[k]),
            values[k].to_string(),
            MAX_VALUE as usize,
        ));
    }
    let max = values.iter().copied().max().unwrap_or(0);
    if values.iter().filter(|&&v| v == max).count() == 1 {
        if let Some(j) = values.iter().position(|&v| v == max) {
            qas.push(Qa::new(
                "max_year",
                "In which year is the value highest?",
                years[j].to_string(),
                n,
            ));
        }
    }
    let k = rng.below(n - 1);
    if values[k] != values[k + 1] {
        qas.push(Qa::new(
            "trend",
            format!(
                "Does the value increase from {} to {}?",
                years[k],
                years[k + 1]
            ),
            yes_no(values[k + 1] > values[k]),
            2,
        ));
    }
    qas.push(Qa::new(
        "first_year",
        "What is the first year shown in the chart?",
        years[0].to_string(),
        17,
    ));
    let caption = format!(
        "A line chart of visitors per year from {} to {}: {}.",
        years[0],
        years[n - 1],
        years
            .iter()
            .zip(&values)
            .map(|(y, v)| format!("{y}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let record = json!({"type": "line", "years": years, "values": values, "annotated": annotated});
    Example {
        image: c.img,
        caption,
        qas: choose_questions(rng, qas, usize::MAX),
        record,
    }
}
