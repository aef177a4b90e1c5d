//! The training data stream: a weighted mixture of sources -> examples -> batches, deterministic from a seed and
//! resumable.
//!
//! API: [`SourceSpec`] (one `[[data.sources]]` table of a recipe), [`MixtureStream::new`],
//! [`MixtureStream::next_batch`] / [`MixtureStream::next_examples`], [`MixtureStream::state`] /
//! [`MixtureStream::restore`] ([`MixtureState`] is serde), [`MixtureStream::skips`] ([`SkipCounts`]).
//!
//! Order: each example comes from a source drawn with probability proportional to its weight (a [`TrainRng`]
//! seeded from the stream seed). Each source reads its files in a shuffled order (seed derived from the stream
//! seed and the source's index; see `idefics_data::readers`) and, when it reaches the end, starts the next epoch
//! with a new order. The random choices of one sample (image splitting, up-scaling) use a generator derived from
//! `(seed, source, sample number)`, so they do not depend on what other sources did.
//!
//! Resumption: a source's position is the reader cursor of a *restart point* (the raw sample from which its next
//! examples are produced: a conversation, a document whose remaining windows are pending, or the first pair of
//! the row being packed) plus how many examples were already taken from it. [`MixtureStream::restore`] seeks
//! there, re-produces and drops the taken ones; the following batches are then exactly those of an uninterrupted
//! run.
//!
//! Unusable samples (malformed rows, undecodable images, too long, no labels) are skipped and counted, never
//! replaced. A source that meets as many unusable samples in a row as it has rows (an epoch's worth) is an error
//! naming it. Known inexactness: after a resume, skips among the pairs of the row being packed are counted again
//! (the examples themselves are exact).

use std::collections::VecDeque;
use std::path::PathBuf;

use candle_core::Device;
use idefics_data::rng::Rng;
use idefics_data::{CauldronReader, Cursor, ObelicsReader, PairReader, ReaderOptions};
use serde::{Deserialize, Serialize};

use super::collate::{unit, Collator, Skip, SkipReason, TrainBatch, TrainExample};
use super::packing::{document_windows, PackLimits, PairPacker};
use super::rng::TrainRng;
use super::TrainError;

/// The layout of a source's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The Cauldron conversations (instruction tuning).
    Cauldron,
    /// Image-text pairs, packed (pre-training).
    Pairs,
    /// OBELICS interleaved documents, cut into windows (pre-training).
    Documents,
}

fn default_weight() -> f64 {
    1.0
}

/// One data source of the mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Name for logs and checkpoints (default: `<kind><index>`).
    #[serde(default)]
    pub name: Option<String>,
    pub kind: SourceKind,
    /// `.parquet` / `.jsonl` files or folders of them.
    pub paths: Vec<PathBuf>,
    /// Relative sampling weight (> 0).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Drop the images (text-only language-model data).
    #[serde(default)]
    pub text_only: bool,
    /// Folder that relative image paths are resolved against (default: each data file's folder).
    #[serde(default)]
    pub image_root: Option<PathBuf>,
}

/// Samples skipped so far, per reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCounts {
    pub malformed_row: u64,
    pub undecodable_image: u64,
    pub too_long: u64,
    pub too_many_images: u64,
    pub no_labels: u64,
    /// Examples produced (rows returned).
    pub examples: u64,
}

impl SkipCounts {
    fn record(&mut self, reason: SkipReason) {
        let c = match reason {
            SkipReason::MalformedRow => &mut self.malformed_row,
            SkipReason::UndecodableImage => &mut self.undecodable_image,
            SkipReason::TooLong => &mut self.too_long,
            SkipReason::TooManyImages => &mut self.too_many_images,
            SkipReason::NoLabels => &mut self.no_labels,
        };
        *c += 1;
    }

    /// Samples skipped for any reason.
    pub fn total_skipped(&self) -> u64 {
        self.malformed_row
            + self.undecodable_image
            + self.too_long
            + self.too_many_images
            + self.no_labels
    }

    /// Logs the counts: `info` when nothing was skipped, `warn` otherwise.
    pub fn log_summary(&self) {
        if self.total_skipped() == 0 {
            tracing::info!(examples = self.examples, "data: no sample skipped");
        } else {
            tracing::warn!(
                examples = self.examples,
                malformed_row = self.malformed_row,
                undecodable_image = self.undecodable_image,
                too_long = self.too_long,
                too_many_images = self.too_many_images,
                no_labels = self.no_labels,
                "data: samples skipped"
            );
        }
    }
}

/// A source's resumable position (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub name: String,
    pub cursor: Cursor,
    /// Raw samples read before the restart point (numbers the per-sample generators).
    pub drawn: u64,
    /// Examples already taken from the restart sample.
    pub emitted: usize,
}

/// Everything needed to continue a stream exactly: serialise it into a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixtureState {
    pub seed: u64,
    pub rng: TrainRng,
    pub sources: Vec<SourcePosition>,
    pub skips: SkipCounts,
    /// Examples drawn from each source so far (statistics only).
    #[serde(default)]
    pub examples_per_source: Vec<u64>,
}

enum Reader {
    Chat(CauldronReader),
    Pairs(PairReader),
    Docs(ObelicsReader),
}

impl Reader {
    fn cursor(&self) -> Cursor {
        match self {
            Reader::Chat(r) => r.cursor(),
            Reader::Pairs(r) => r.cursor(),
            Reader::Docs(r) => r.cursor(),
        }
    }

    fn seek(&mut self, c: &Cursor) -> idefics_data::Result<()> {
        match self {
            Reader::Chat(r) => r.seek(c),
            Reader::Pairs(r) => r.seek(c),
            Reader::Docs(r) => r.seek(c),
        }
    }

    fn num_rows(&self) -> usize {
        match self {
            Reader::Chat(r) => r.num_rows(),
            Reader::Pairs(r) => r.num_rows(),
            Reader::Docs(r) => r.num_rows(),
        }
    }
}

struct Source {
    name: String,
    index: u64,
    text_only: bool,
    reader: Reader,
    restart: SourcePosition,
    drawn: u64,
    pending: VecDeque<TrainExample>,
    packer: PairPacker,
    /// Raw samples in a row that gave nothing usable, and why the last one failed.
    unusable_run: usize,
    last_skip: Option<String>,
    num_rows: usize,
    examples: u64,
}

/// What reading one raw sample gave.
enum Produced {
    /// Examples from this sample (pushed to `pending`) or a pair added to the row in progress.
    Usable,
    /// A pair closed the previous row (returned as is; the pair starts the next row).
    ClosedRow(TrainExample),
    Skipped(Skip),
}

/// How many skips are logged one by one (the rest only at debug level and in the summary).
const LOGGED_SKIPS: u64 = 20;

impl Source {
    fn open(
        spec: &SourceSpec,
        index: usize,
        seed: u64,
        limits: PackLimits,
    ) -> Result<Self, TrainError> {
        let name = spec.name.clone().unwrap_or_else(|| {
            let kind = match spec.kind {
                SourceKind::Cauldron => "cauldron",
                SourceKind::Pairs => "pairs",
                SourceKind::Documents => "documents",
            };
            format!("{kind}{index}")
        });
        if !(spec.weight.is_finite() && spec.weight > 0.0) {
            return Err(TrainError::Invalid(format!(
                "data source `{name}`: weight must be a positive number, got {}",
                spec.weight
            )));
        }
        let opts = ReaderOptions {
            shuffle_seed: Some(Rng::derive(&[seed, index as u64, 0x5EED]).next_u64()),
            image_root: spec.image_root.clone(),
            repeat: true,
            ..ReaderOptions::default()
        };
        let open_err =
            |e: idefics_data::DataError| TrainError::Invalid(format!("data source `{name}`: {e}"));
        let reader = match spec.kind {
            SourceKind::Cauldron => {
                Reader::Chat(CauldronReader::open(&spec.paths, opts).map_err(open_err)?)
            }
            SourceKind::Pairs => {
                Reader::Pairs(PairReader::open(&spec.paths, opts).map_err(open_err)?)
            }
            SourceKind::Documents => {
                Reader::Docs(ObelicsReader::open(&spec.paths, opts).map_err(open_err)?)
            }
        };
        let num_rows = reader.num_rows();
        if num_rows == 0 {
            return Err(TrainError::Invalid(format!(
                "data source `{name}`: the files hold no rows"
            )));
        }
        let restart = SourcePosition {
            name: name.clone(),
            cursor: reader.cursor(),
            drawn: 0,
            emitted: 0,
        };
        Ok(Self {
            name,
            index: index as u64,
            text_only: spec.text_only,
            reader,
            restart,
            drawn: 0,
            pending: VecDeque::new(),
            packer: PairPacker::new(limits),
            unusable_run: 0,
            last_skip: None,
            num_rows,
            examples: 0,
        })
    }

    /// The generator of raw sample number `drawn`.
    fn sample_rng(&self, seed: u64, drawn: u64) -> TrainRng {
        TrainRng::seed_from_u64(Rng::derive(&[seed, self.index, drawn]).next_u64())
    }

    /// Reads one raw sample and turns it into examples (or a packed pair).
    fn produce(
        &mut self,
        collator: &Collator,
        limits: &PackLimits,
        seed: u64,
    ) -> Result<Produced, TrainError> {
        let before = self.reader.cursor();
        let drawn = self.drawn;
        let epoch = before.epoch;
        let mut rng = self.sample_rng(seed, drawn);
        self.drawn += 1;
        let malformed =
            |e: idefics_data::DataError| Skip::new(SkipReason::MalformedRow, e.to_string());
        let restart = SourcePosition {
            name: self.name.clone(),
            cursor: before.clone(),
            drawn,
            emitted: 0,
        };
        let produced = match &mut self.reader {
            Reader::Chat(r) => {
                let sample = r.next().ok_or_else(|| self.ended())?;
                self.restart = restart;
                match sample
                    .map_err(malformed)
                    .and_then(|s| collator.encode_chat(&s, self.text_only, &mut rng))
                {
                    Ok(ex) => {
                        self.pending.push_back(ex);
                        Produced::Usable
                    }
                    Err(skip) => Produced::Skipped(skip),
                }
            }
            Reader::Docs(r) => {
                let sample = r.next().ok_or_else(|| self.ended())?;
                self.restart = restart;
                let windows = sample.map_err(malformed).and_then(|d| {
                    let segs = collator.encode_document(&d, self.text_only, &mut rng)?;
                    document_windows(segs, limits)
                });
                match windows {
                    Ok(ws) => {
                        self.pending.extend(ws);
                        Produced::Usable
                    }
                    Err(skip) => Produced::Skipped(skip),
                }
            }
            Reader::Pairs(r) => {
                let sample = r.next().ok_or_else(|| self.ended())?;
                let starts_row = self.packer.is_empty();
                match sample
                    .map_err(malformed)
                    .and_then(|p| collator.encode_pair(&p, self.text_only, &mut rng))
                    .and_then(|seg| self.packer.push(seg))
                {
                    Ok(Some(row)) => {
                        // This pair starts the next row: it is the new restart point.
                        self.restart = restart;
                        Produced::ClosedRow(row)
                    }
                    Ok(None) => {
                        if starts_row {
                            self.restart = restart;
                        }
                        Produced::Usable
                    }
                    Err(skip) => Produced::Skipped(skip),
                }
            }
        };
        let now = self.reader.cursor().epoch;
        if now != epoch {
            tracing::info!(source = %self.name, epoch = now, "data source starts a new epoch");
        }
        Ok(produced)
    }

    fn ended(&self) -> TrainError {
        TrainError::Invalid(format!(
            "data source `{}`: the reader ended (it should repeat)",
            self.name
        ))
    }

    fn next_example(
        &mut self,
        collator: &Collator,
        limits: &PackLimits,
        seed: u64,
        skips: &mut SkipCounts,
    ) -> Result<TrainExample, TrainError> {
        loop {
            if let Some(ex) = self.pending.pop_front() {
                self.restart.emitted += 1;
                return Ok(ex);
            }
            let produced = self.produce(collator, limits, seed)?;
            match produced {
                Produced::Skipped(skip) => {
                    skips.record(skip.reason);
                    if skips.total_skipped() <= LOGGED_SKIPS {
                        tracing::warn!(source = %self.name, reason = ?skip.reason, detail = %skip.detail, "sample skipped");
                    } else {
                        tracing::debug!(source = %self.name, reason = ?skip.reason, detail = %skip.detail, "sample skipped");
                    }
                    self.last_skip = Some(skip.detail);
                    self.unusable_run += 1;
                    if self.unusable_run >= self.num_rows {
                        return Err(TrainError::Invalid(format!(
                            "data source `{}`: none of its {} samples is usable (last: {})",
                            self.name,
                            self.num_rows,
                            self.last_skip.as_deref().unwrap_or("?")
                        )));
                    }
                }
                Produced::Usable => self.unusable_run = 0,
                Produced::ClosedRow(row) => {
                    self.unusable_run = 0;
                    return Ok(row);
                }
            }
        }
    }
}

/// A deterministic, resumable, weighted mixture of data sources producing training examples.
pub struct MixtureStream {
    collator: Collator,
    limits: PackLimits,
    sources: Vec<Source>,
    weights: Vec<f64>,
    rng: TrainRng,
    seed: u64,
    skips: SkipCounts,
}

impl MixtureStream {
    /// Opens every source (reading only file footers / offsets). Errors on an empty list, a bad weight or
    /// unreadable files, naming the source.
    pub fn new(specs: &[SourceSpec], collator: Collator, seed: u64) -> Result<Self, TrainError> {
        if specs.is_empty() {
            return Err(TrainError::Invalid("no data sources given".into()));
        }
        let cfg = collator.config();
        let limits = PackLimits {
            max_seq_len: cfg.max_seq_len,
            max_num_images: cfg.max_num_images,
            bos: collator.bos(),
            fake_image: collator.collapsing_fake_image_id(),
        };
        let sources = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Source::open(s, i, seed, limits))
            .collect::<Result<Vec<_>, _>>()?;
        for (s, spec) in sources.iter().zip(specs) {
            tracing::info!(source = %s.name, kind = ?spec.kind, rows = s.num_rows, weight = spec.weight, text_only = spec.text_only, "data source");
        }
        Ok(Self {
            collator,
            limits,
            sources,
            weights: specs.iter().map(|s| s.weight).collect(),
            rng: TrainRng::seed_from_u64(seed),
            seed,
            skips: SkipCounts::default(),
        })
    }

    /// The collator (tokenizer, settings, `collate`).
    pub fn collator(&self) -> &Collator {
        &self.collator
    }

    /// Skip counts so far.
    pub fn skips(&self) -> &SkipCounts {
        &self.skips
    }

    fn pick_source(&mut self) -> usize {
        let total: f64 = self.weights.iter().sum();
        let mut x = unit(&mut self.rng) * total;
        for (i, w) in self.weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        self.weights.len() - 1
    }

    /// The next example of the mixture.
    pub fn next_example(&mut self) -> Result<TrainExample, TrainError> {
        let i = self.pick_source();
        let source = self
            .sources
            .get_mut(i)
            .ok_or_else(|| TrainError::Invalid("no data sources".into()))?;
        let ex = source.next_example(&self.collator, &self.limits, self.seed, &mut self.skips)?;
        source.examples += 1;
        self.skips.examples += 1;
        Ok(ex)
    }

    /// The next `n` examples.
    pub fn next_examples(&mut self, n: usize) -> Result<Vec<TrainExample>, TrainError> {
        (0..n).map(|_| self.next_example()).collect()
    }

    /// The next `batch_size` examples, padded into a batch on `device`.
    pub fn next_batch(
        &mut self,
        batch_size: usize,
        device: &Device,
    ) -> Result<TrainBatch, TrainError> {
        let examples = self.next_examples(batch_size)?;
        self.collator.collate(&examples, device)
    }

    /// The position after the last returned example.
    pub fn state(&self) -> MixtureState {
        MixtureState {
            seed: self.seed,
            rng: self.rng.clone(),
            sources: self.sources.iter().map(|s| s.restart.clone()).collect(),
            skips: self.skips.clone(),
            examples_per_source: self.sources.iter().map(|s| s.examples).collect(),
        }
    }

    /// `(source name, examples drawn from it)`, in recipe order.
    pub fn examples_per_source(&self) -> Vec<(&str, u64)> {
        self.sources
            .iter()
            .map(|s| (s.name.as_str(), s.examples))
            .collect()
    }

    /// Logs the examples per source and the skip counts.
    pub fn log_summary(&self) {
        for (name, n) in self.examples_per_source() {
            tracing::info!(source = %name, examples = n, "data source usage");
        }
        self.skips.log_summary();
    }

    /// Continues from a saved position (same sources, in the same order, and the same seed).
    pub fn restore(&mut self, state: &MixtureState) -> Result<(), TrainError> {
        if state.seed != self.seed {
            return Err(TrainError::Invalid(format!(
                "data state was saved with seed {}, the stream uses seed {}",
                state.seed, self.seed
            )));
        }
        if state.sources.len() != self.sources.len() {
            return Err(TrainError::Invalid(format!(
                "data state has {} sources, the recipe has {}",
                state.sources.len(),
                self.sources.len()
            )));
        }
        for (source, pos) in self.sources.iter_mut().zip(&state.sources) {
            if source.name != pos.name {
                return Err(TrainError::Invalid(format!(
                    "data state source `{}` does not match recipe source `{}`",
                    pos.name, source.name
                )));
            }
            source
                .reader
                .seek(&pos.cursor)
                .map_err(|e| TrainError::Invalid(format!("data source `{}`: {e}", source.name)))?;
            source.drawn = pos.drawn;
            source.pending.clear();
            source.packer.clear();
            source.unusable_run = 0;
            source.restart = pos.clone();
            if pos.emitted > 0 {
                // Re-produce the restart sample and drop what was already taken from it.
                if let Produced::Skipped(skip) =
                    source.produce(&self.collator, &self.limits, self.seed)?
                {
                    return Err(TrainError::Invalid(format!(
                        "data source `{}`: the sample at the saved position is no longer usable ({})",
                        source.name, skip.detail
                    )));
                }
                if source.pending.len() < pos.emitted {
                    return Err(TrainError::Invalid(format!(
                        "data source `{}`: the saved position took {} examples from a sample that gives {}",
                        source.name,
                        pos.emitted,
                        source.pending.len()
                    )));
                }
                source.pending.drain(..pos.emitted);
                source.restart.emitted = pos.emitted;
            }
        }
        for (i, source) in self.sources.iter_mut().enumerate() {
            source.examples = state.examples_per_source.get(i).copied().unwrap_or(0);
        }
        self.rng = state.rng.clone();
        self.skips = state.skips.clone();
        Ok(())
    }
}

impl std::fmt::Debug for MixtureStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MixtureStream")
            .field(
                "sources",
                &self.sources.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("seed", &self.seed)
            .field("skips", &self.skips)
            .finish()
    }
}
