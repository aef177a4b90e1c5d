//! Rendered text (OCR): words and numbers in several sizes (some small), colours, fonts and positions.

use serde_json::json;

use super::canvas::{measure, Canvas, Fonts};
use super::task::{
    choose_questions, light_background, random_size, region, Example, Qa, TEXT_COLOURS,
};
use crate::rng::Rng;

/// The words that can appear (the answer vocabulary of reading questions, with the numbers 0-999).
pub const WORDS: [&str; 40] = [
    "apple", "river", "stone", "cloud", "green", "house", "train", "music", "tiger", "ocean",
    "paper", "light", "horse", "table", "chair", "bread", "plant", "clock", "water", "smile",
    "dream", "storm", "beach", "forest", "garden", "window", "rocket", "silver", "yellow",
    "planet", "market", "doctor", "winter", "summer", "island", "castle", "bridge", "candle",
    "pencil", "mirror",
];

/// Answers a reading question can have: the words plus the numbers 0-999.
pub const READ_VOCAB: usize = WORDS.len() + 1000;

struct Item {
    text: String,
    colour: usize,
    px: f32,
    x: f32,
    y: f32,
    w: f32,
    h: f32,
    mono: bool,
}

/// Generates one image with 1-4 pieces of text.
pub fn generate(rng: &mut Rng, fonts: &Fonts) -> Example {
    let (w, h) = random_size(rng, 192, 480);
    let (wf, hf) = (w as f32, h as f32);
    let mut canvas = Canvas::new(w, h, light_background(rng));
    let want = rng.range(1, 4) as usize;
    let colours = rng.sample_indices(TEXT_COLOURS.len(), want);
    let mut items: Vec<Item> = Vec::new();
    for colour in colours {
        let text = if rng.chance(0.35) {
            rng.range(0, 999).to_string()
        } else {
            rng.pick(&WORDS).copied().unwrap_or("apple").to_string()
        };
        if items.iter().any(|i| i.text == text) {
            continue;
        }
        // A quarter of the text is small (9-13 px): the case image splitting is meant to help.
        let px = if rng.chance(0.25) {
            rng.range(9, 13) as f32
        } else {
            rng.range(14, 48) as f32
        };
        let mono = rng.chance(0.3);
        let font = if mono { &fonts.mono } else { &fonts.sans };
        let (tw, th) = measure(font, px, &text);
        if tw + 4.0 > wf || th + 4.0 > hf {
            continue;
        }
        for _attempt in 0..100 {
            let x = 2.0 + rng.unit() * (wf - tw - 4.0);
            let y = 2.0 + rng.unit() * (hf - th - 4.0);
            let clear = items.iter().all(|o| {
                x + tw + 6.0 < o.x
                    || o.x + o.w + 6.0 < x
                    || y + th + 4.0 < o.y
                    || o.y + o.h + 4.0 < y
            });
            if clear {
                items.push(Item {
                    text: text.clone(),
                    colour,
                    px,
                    x,
                    y,
                    w: tw,
                    h: th,
                    mono,
                });
                break;
            }
        }
    }
    if items.is_empty() {
        // Every placement failed (tiny canvas): one small word in the corner keeps the example valid.
        let (tw, th) = measure(&fonts.sans, 12.0, "apple");
        items.push(Item {
            text: "apple".into(),
            colour: 5,
            px: 12.0,
            x: 2.0,
            y: 2.0,
            w: tw,
            h: th,
            mono: false,
        });
    }
    for it in &items {
        let font = if it.mono { &fonts.mono } else { &fonts.sans };
        canvas.text(font, it.px, it.x, it.y, TEXT_COLOURS[it.colour].1, &it.text);
    }

    let n = items.len();
    let mut qas = vec![Qa::new(
        "count",
        "How many separate words or numbers are written in the image?",
        n.to_string(),
        4,
    )];
    if let Some(it) = items.get(rng.below(n.max(1))) {
        let what = if it.text.chars().all(|c| c.is_ascii_digit()) {
            "number"
        } else {
            "word"
        };
        qas.push(Qa::new(
            "read_colour",
            format!("What {what} is written in {}?", TEXT_COLOURS[it.colour].0),
            &it.text,
            READ_VOCAB,
        ));
        qas.push(Qa::new(
            "colour",
            format!("What colour is the text \"{}\"?", it.text),
            TEXT_COLOURS[it.colour].0,
            TEXT_COLOURS.len(),
        ));
    }
    let mut by_size: Vec<&Item> = items.iter().collect();
    by_size.sort_by(|a, b| b.px.total_cmp(&a.px));
    if let [first, second, ..] = by_size.as_slice() {
        if first.px >= second.px * 1.3 {
            qas.push(Qa::new(
                "read_largest",
                "What is the text written in the largest letters?",
                &first.text,
                READ_VOCAB,
            ));
        }
    } else if let [only] = by_size.as_slice() {
        qas.push(Qa::new(
            "read_largest",
            "What is the text written in the largest letters?",
            &only.text,
            READ_VOCAB,
        ));
    }
    let word = rng.pick(&WORDS).copied().unwrap_or("apple");
    let word = if rng.chance(0.5) {
        items
            .iter()
            .find(|i| !i.text.chars().all(|c| c.is_ascii_digit()))
            .map_or(word, |i| i.text.as_str())
    } else {
        word
    };
    let present = items.iter().any(|i| i.text == word);
    qas.push(Qa::new(
        "exists",
        format!("Is the word \"{word}\" written in the image?"),
        if present { "yes" } else { "no" },
        2,
    ));
    let qas = choose_questions(rng, qas, usize::MAX);

    let parts: Vec<String> = items
        .iter()
        .map(|i| {
            format!(
                "\"{}\" in {} at the {}",
                i.text,
                TEXT_COLOURS[i.colour].0,
                region(i.x + i.w / 2.0, i.y + i.h / 2.0, wf, hf)
            )
        })
        .collect();
    let caption = format!("Text on a plain background: {}.", parts.join(", "));
    let record = json!({
        "items": items.iter().map(|i| json!({
            "text": i.text, "colour": TEXT_COLOURS[i.colour].0, "px": i.px, "x": i.x, "y": i.y, "mono": i.mono,
        })).collect::<Vec<_>>(),
    });
    Example {
        image: canvas.img,
        caption,
        qas,
        record,
    }
}
