//! What every task family produces: an image, a caption, and questions with short exact answers.

use image::RgbImage;

use crate::rng::Rng;

/// Named colours used for shapes, text and bars (the answer vocabulary of colour questions).
pub const COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [214, 39, 40]),
    ("green", [44, 160, 44]),
    ("blue", [31, 90, 220]),
    ("yellow", [240, 200, 20]),
    ("purple", [148, 60, 189]),
    ("orange", [250, 127, 14]),
];

/// Colours readable as text on a light background (no yellow), plus black.
pub const TEXT_COLOURS: [(&str, [u8; 3]); 6] = [
    ("red", [200, 30, 30]),
    ("green", [30, 130, 40]),
    ("blue", [30, 70, 200]),
    ("purple", [130, 40, 170]),
    ("orange", [225, 110, 0]),
    ("black", [20, 20, 20]),
];

/// One question with its exact answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qa {
    /// Question type within the family (chance levels are per type).
    pub kind: String,
    pub question: String,
    pub answer: String,
    /// How many answers this question type can have (uniform chance = 1 / vocab).
    pub vocab: usize,
}

impl Qa {
    pub fn new(
        kind: &str,
        question: impl Into<String>,
        answer: impl Into<String>,
        vocab: usize,
    ) -> Self {
        Self {
            kind: kind.to_string(),
            question: question.into(),
            answer: answer.into(),
            vocab,
        }
    }

    /// The user turn: the question plus an instruction that fixes the answer format.
    pub fn prompt(&self) -> String {
        if self.kind.ends_with("_mc") {
            // The options are already in the question.
            format!(
                "{}\nAnswer with the option's letter from the given choices directly.",
                self.question
            )
        } else if self.answer == "yes" || self.answer == "no" {
            format!("{}\nAnswer yes or no.", self.question)
        } else {
            format!("{}\nAnswer with a single word or number.", self.question)
        }
    }

    /// Turns the question into a 4-option multiple choice (answer = a letter) with distractors from `vocab`.
    pub fn into_multiple_choice(self, rng: &mut Rng, vocab: &[&str]) -> Qa {
        let mut options: Vec<&str> = vocab
            .iter()
            .copied()
            .filter(|v| *v != self.answer)
            .collect();
        rng.shuffle(&mut options);
        options.truncate(3);
        if options.len() < 3 {
            return self;
        }
        options.push(&self.answer);
        rng.shuffle(&mut options);
        let letters = ["A", "B", "C", "D"];
        let mut question = self.question.clone();
        let mut answer = "A";
        for (letter, opt) in letters.iter().zip(&options) {
            question.push_str(&format!("\n{letter}. {opt}"));
            if *opt == self.answer {
                answer = letter;
            }
        }
        Qa::new(&format!("{}_mc", self.kind), question, answer, 4)
    }
}

/// One generated example: an image, its caption, its questions, and a JSON record of what was drawn
/// (tests check the answers against it).
#[derive(Debug, Clone)]
pub struct Example {
    pub image: RgbImage,
    pub caption: String,
    pub qas: Vec<Qa>,
    pub record: serde_json::Value,
}

/// A random canvas size: the long side in `[min_long, max_long]` and an aspect ratio from a fixed set.
pub fn random_size(rng: &mut Rng, min_long: u32, max_long: u32) -> (u32, u32) {
    const ASPECTS: [f32; 7] = [0.5, 0.67, 0.75, 1.0, 1.33, 1.5, 2.0];
    let long = rng.range(min_long as i64, max_long as i64) as f32;
    let aspect = *rng.pick(&ASPECTS).unwrap_or(&1.0);
    if aspect >= 1.0 {
        (long as u32, (long / aspect).round() as u32)
    } else {
        ((long * aspect).round() as u32, long as u32)
    }
}

/// A light background colour (each channel in 225..=255).
pub fn light_background(rng: &mut Rng) -> [u8; 3] {
    [
        rng.range(225, 255) as u8,
        rng.range(225, 255) as u8,
        rng.range(225, 255) as u8,
    ]
}

/// Where a point is, in words (a 3x3 grid).
pub fn region(x: f32, y: f32, w: f32, h: f32) -> String {
    let col = ["left", "center", "right"][((x / w * 3.0) as usize).min(2)];
    let row = ["top", "middle", "bottom"][((y / h * 3.0) as usize).min(2)];
    match (row, col) {
        ("middle", "center") => "center".to_string(),
        _ => format!("{row} {col}"),
    }
}

/// Picks up to `k` questions with distinct kinds, in random order (the families pass `usize::MAX`;
/// [`super::generate_example_with_questions`] keeps a prefix).
pub fn choose_questions(rng: &mut Rng, mut qas: Vec<Qa>, k: usize) -> Vec<Qa> {
    rng.shuffle(&mut qas);
    let mut out: Vec<Qa> = Vec::new();
    for qa in qas {
        if out.len() < k && !out.iter().any(|o| o.kind == qa.kind) {
            out.push(qa);
        }
    }
    out
}
