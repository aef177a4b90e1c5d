//! The synthetic data generator: `idefics data synth --out DIR --n N --seed S`.
//!
//! Five task families (shapes, OCR, documents, charts, and `basics`: single-object scenes that only the image
//! can answer, a curriculum for small models), each image with a caption and up to 3 questions (or
//! `--questions-per-image K` for the training split) whose answers are short and exact (a word, a number, a
//! colour, yes/no, or a letter for multiple-choice variants).
//! Everything derives from the seed: example `i` of family `f` uses `Rng::derive([seed, f, i])`, so examples do
//! not depend on each other or on which families are selected. Output (per split `train` / `heldout`):
//!
//! - `chat_<family>.parquet`: The Cauldron layout (`images`, `texts` with `source = synth_<family>`);
//! - `pairs.parquet`: every image with its caption;
//! - `interleaved.parquet`: OBELICS-layout documents mixing 2-4 images with text about them;
//!
//! plus `metadata.json` (seeds, counts, chance levels per family and question type, generator version).
//! The held-out split uses a different seed derived from the training seed.

pub mod basics;
mod canvas;
pub mod charts;
pub mod docs;
pub mod ocr;
pub mod shapes;
mod sheet;
mod task;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use canvas::{measure, png_bytes, Canvas, Fonts};
pub use sheet::contact_sheet;
pub use task::{Example, Qa, COLOURS, TEXT_COLOURS};

use crate::error::{DataError, Result};
use crate::rng::Rng;
use crate::sample::{ChatSample, DocItem, ImageSource, ImageTextPair, InterleavedDocument, Turn};
use crate::writer::ParquetWriter;

/// Bumped whenever the output for a given seed changes.
pub const GENERATOR_VERSION: &str = "idefics-synth/2";

/// A task family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Shapes,
    Ocr,
    Docs,
    Charts,
    Basics,
}

impl Family {
    /// All families, in output order.
    pub const ALL: [Family; 5] = [
        Family::Shapes,
        Family::Ocr,
        Family::Docs,
        Family::Charts,
        Family::Basics,
    ];

    /// The name used in file names, `--tasks` and `source`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Shapes => "shapes",
            Family::Ocr => "ocr",
            Family::Docs => "docs",
            Family::Charts => "charts",
            Family::Basics => "basics",
        }
    }

    /// Parses a family name.
    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.name()).collect();
                DataError::Invalid(format!(
                    "unknown task family `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }

    fn id(self) -> u64 {
        self as u64 + 1
    }
}

/// Questions per image unless asked otherwise (the held-out split always uses this).
pub const DEFAULT_QUESTIONS_PER_IMAGE: usize = 3;

/// Generates example `index` of `family` for `seed` (deterministic; independent of other examples), with up
/// to [`DEFAULT_QUESTIONS_PER_IMAGE`] questions.
pub fn generate_example(family: Family, seed: u64, index: u64, fonts: &Fonts) -> Example {
    generate_example_with_questions(family, seed, index, fonts, DEFAULT_QUESTIONS_PER_IMAGE)
}

/// [`generate_example`] with up to `questions` questions of distinct kinds. The image, the caption and the
/// first questions do not depend on `questions`: every family draws all its candidate questions in one
/// shuffled order and this keeps a prefix, so more questions per image only adds turns.
pub fn generate_example_with_questions(
    family: Family,
    seed: u64,
    index: u64,
    fonts: &Fonts,
    questions: usize,
) -> Example {
    let mut rng = Rng::derive(&[seed, family.id(), index]);
    let mut ex = match family {
        Family::Shapes => shapes::generate(&mut rng),
        Family::Ocr => ocr::generate(&mut rng, fonts),
        Family::Docs => docs::generate(&mut rng, fonts),
        Family::Charts => charts::generate(&mut rng, fonts),
        Family::Basics => basics::generate(&mut rng),
    };
    ex.qas.truncate(questions);
    ex
}

/// The held-out seed for a training seed.
pub fn heldout_seed(seed: u64) -> u64 {
    Rng::derive(&[seed, 0x4_E1D0_u64]).next_u64()
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub out: PathBuf,
    /// Training examples (images) per family.
    pub n: usize,
    /// Held-out examples per family.
    pub heldout: usize,
    pub seed: u64,
    pub families: Vec<Family>,
    /// Rows per parquet row group (the unit the readers shuffle).
    pub rows_per_group: usize,
    /// Questions per training image (distinct kinds, as many as the family has at most). The held-out split
    /// keeps [`DEFAULT_QUESTIONS_PER_IMAGE`], so that evaluations stay comparable.
    pub questions_per_image: usize,
}

/// Chance levels and counts for one question type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindStats {
    pub questions: usize,
    /// Mean of 1 / (possible answers) over the questions: accuracy of uniform guessing.
    pub chance_uniform: f64,
    /// Share of the most frequent answer: accuracy of always answering it.
    pub majority_baseline: f64,
    #[serde(skip)]
    answers: BTreeMap<String, usize>,
    #[serde(skip)]
    inv_vocab_sum: f64,
}

/// Counts and chance levels for one family in one split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FamilyStats {
    pub examples: usize,
    pub questions: usize,
    /// Mean over this family's questions of 1 / (possible answers).
    pub chance_uniform: f64,
    /// Accuracy of answering each question type's most frequent answer.
    pub majority_baseline: f64,
    pub kinds: BTreeMap<String, KindStats>,
}

impl FamilyStats {
    fn add(&mut self, ex: &Example) {
        self.examples += 1;
        for qa in &ex.qas {
            let k = self.kinds.entry(qa.kind.clone()).or_default();
            k.questions += 1;
            k.inv_vocab_sum += 1.0 / qa.vocab.max(1) as f64;
            *k.answers.entry(qa.answer.clone()).or_default() += 1;
        }
    }

    fn finish(&mut self) {
        let (mut inv, mut majority) = (0.0, 0usize);
        self.questions = 0;
        for k in self.kinds.values_mut() {
            k.chance_uniform = k.inv_vocab_sum / k.questions.max(1) as f64;
            let top = k.answers.values().copied().max().unwrap_or(0);
            k.majority_baseline = top as f64 / k.questions.max(1) as f64;
            self.questions += k.questions;
            inv += k.inv_vocab_sum;
            majority += top;
        }
        self.chance_uniform = inv / self.questions.max(1) as f64;
        self.majority_baseline = majority as f64 / self.questions.max(1) as f64;
    }
}

/// One split's summary.
#[derive(Debug, Clone, Serialize)]
pub struct SplitMetadata {
    pub seed: u64,
    pub families: BTreeMap<String, FamilyStats>,
    pub pairs: usize,
    pub interleaved_documents: usize,
    pub files: Vec<String>,
}

/// `metadata.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Metadata {
    pub generator_version: String,
    pub seed: u64,
    pub n_per_family: usize,
    pub heldout_per_family: usize,
    pub questions_per_image: BTreeMap<String, usize>,
    pub splits: BTreeMap<String, SplitMetadata>,
}

/// Generates the dataset under `cfg.out` (`train/`, `heldout/`, `metadata.json`) and returns the metadata.
pub fn generate(cfg: &SynthConfig) -> Result<Metadata> {
    if cfg.families.is_empty() {
        return Err(DataError::Invalid("no task families selected".into()));
    }
    if cfg.questions_per_image == 0 {
        return Err(DataError::Invalid(
            "questions per image must be at least 1".into(),
        ));
    }
    let fonts = Fonts::load()?;
    let mut splits = BTreeMap::new();
    let mut questions_per_image = BTreeMap::new();
    for (split, seed, n, questions) in [
        ("train", cfg.seed, cfg.n, cfg.questions_per_image),
        (
            "heldout",
            heldout_seed(cfg.seed),
            cfg.heldout,
            DEFAULT_QUESTIONS_PER_IMAGE,
        ),
    ] {
        let meta = write_split(cfg, &cfg.out.join(split), seed, n, questions, &fonts)?;
        splits.insert(split.to_string(), meta);
        questions_per_image.insert(split.to_string(), questions);
    }
    let metadata = Metadata {
        generator_version: GENERATOR_VERSION.to_string(),
        seed: cfg.seed,
        n_per_family: cfg.n,
        heldout_per_family: cfg.heldout,
        questions_per_image,
        splits,
    };
    let path = cfg.out.join("metadata.json");
    let json = serde_json::to_string_pretty(&metadata)
        .map_err(|e| DataError::Invalid(format!("metadata: {e}")))?;
    std::fs::write(&path, json + "\n").map_err(|e| DataError::io(&path, e))?;
    Ok(metadata)
}

fn write_split(
    cfg: &SynthConfig,
    dir: &Path,
    seed: u64,
    n: usize,
    questions: usize,
    fonts: &Fonts,
) -> Result<SplitMetadata> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files = Vec::new();
    let mut families = BTreeMap::new();
    let pairs_path = dir.join("pairs.parquet");
    let mut pairs = ParquetWriter::<ImageTextPair>::create(&pairs_path, cfg.rows_per_group)?;
    // Interleaved documents are built from every 3rd image of each family (a bounded pool, kept in memory).
    let mut pool: Vec<(Vec<u8>, String, Qa)> = Vec::new();
    for &family in &cfg.families {
        let name = format!("chat_{}.parquet", family.name());
        let mut chat = ParquetWriter::<ChatSample>::create(&dir.join(&name), cfg.rows_per_group)?;
        let mut stats = FamilyStats::default();
        for i in 0..n {
            let ex = generate_example_with_questions(family, seed, i as u64, fonts, questions);
            stats.add(&ex);
            let png = png_bytes(&ex.image)?;
            let source = format!("synth_{}", family.name());
            let turns = ex
                .qas
                .iter()
                .map(|qa| Turn {
                    user: qa.prompt(),
                    assistant: qa.answer.clone(),
                    source: source.clone(),
                })
                .collect();
            if i % 3 == 0 {
                if let Some(qa) = ex.qas.first() {
                    pool.push((png.clone(), ex.caption.clone(), qa.clone()));
                }
            }
            pairs.write(ImageTextPair {
                image: ImageSource::Bytes(png.clone()),
                text: ex.caption.clone(),
            })?;
            chat.write(ChatSample {
                images: vec![ImageSource::Bytes(png)],
                turns,
            })?;
        }
        chat.finish()?;
        stats.finish();
        files.push(name);
        families.insert(family.name().to_string(), stats);
    }
    let n_pairs = pairs.finish()?;
    files.push("pairs.parquet".into());

    let docs = interleaved_documents(seed, pool);
    let n_docs = docs.len();
    let mut inter = ParquetWriter::<InterleavedDocument>::create(
        &dir.join("interleaved.parquet"),
        cfg.rows_per_group,
    )?;
    for d in docs {
        inter.write(d)?;
    }
    inter.finish()?;
    files.push("interleaved.parquet".into());
    tracing::info!(split = %dir.display(), pairs = n_pairs, documents = n_docs, "wrote synthetic split");
    Ok(SplitMetadata {
        seed,
        families,
        pairs: n_pairs,
        interleaved_documents: n_docs,
        files,
    })
}

/// Documents of 2-4 images from the pool (shuffled), each image followed by text about it.
fn interleaved_documents(
    seed: u64,
    mut pool: Vec<(Vec<u8>, String, Qa)>,
) -> Vec<InterleavedDocument> {
    let mut rng = Rng::derive(&[seed, 0xD0C5]);
    rng.shuffle(&mut pool);
    let mut docs = Vec::new();
    let mut rest = pool.as_slice();
    while rest.len() >= 2 {
        let k = (rng.range(2, 4) as usize).min(rest.len());
        let (chunk, tail) = rest.split_at(k);
        rest = tail;
        let mut items = vec![DocItem::Text(format!(
            "Here are {k} pictures with notes about each of them."
        ))];
        for (idx, (png, caption, qa)) in chunk.iter().enumerate() {
            items.push(DocItem::Image(ImageSource::Bytes(png.clone())));
            let ordinal = ["first", "second", "third", "fourth"]
                .get(idx)
                .copied()
                .unwrap_or("next");
            items.push(DocItem::Text(format!(
                "The {ordinal} picture: {caption} Question: {} Answer: {}.",
                qa.question.replace('\n', " "),
                qa.answer
            )));
        }
        docs.push(InterleavedDocument { items });
    }
    docs
}
