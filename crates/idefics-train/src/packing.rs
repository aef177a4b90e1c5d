//! Pre-training rows from pairs and documents, as the paper's data pipeline builds them (m4
//! `vision/m4/training/DATA_DOCUMENTATION.md` in huggingface/m4; the paper's section 4.1):
//!
//! * [`PairPacker`]: image-text pairs are concatenated (`<s>` + `<fake><image>…<fake> caption</s>` + …) until the
//!   next pair would exceed `max_seq_len` or `max_num_images`; a pair is never split. A pair longer than a whole
//!   row is skipped (and counted by the caller).
//! * [`document_windows`]: a document is cut into windows of at most `max_seq_len` tokens (each starting with
//!   `<s>`) and at most `max_num_images` images; text may be cut anywhere, an image block never. m4 samples a
//!   random window with a bias towards images; we cut the whole document into consecutive windows instead, so
//!   every token is seen once per epoch and the cut is reproducible. Windows without text labels are dropped.
//!
//! Rows are plain causal sequences (no per-pair attention reset), as in m4.

use super::collate::{Segment, Skip, SkipReason, TrainExample};
use super::loss::IGNORE_INDEX;

/// Row limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    pub max_seq_len: usize,
    pub max_num_images: usize,
    /// Starts every row (unlabelled).
    pub bos: Option<u32>,
    /// Idefics2's fake image token: a row never holds two in a row (its processor collapses `<fake><fake>`).
    /// `None` for Idefics3 / SmolVLM, whose processors keep both.
    pub fake_image: Option<u32>,
}

/// A row being assembled.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    ex: TrainExample,
}

impl Row {
    fn new(limits: &PackLimits) -> Self {
        let mut ex = TrainExample {
            input_ids: Vec::new(),
            labels: Vec::new(),
            frames: Vec::new(),
            n_images: 0,
            split: false,
        };
        if let Some(bos) = limits.bos {
            ex.input_ids.push(bos);
            ex.labels.push(IGNORE_INDEX);
        }
        Self { ex }
    }

    /// Tokens `seg` would add here (one less when its first fake token merges with the row's last).
    fn cost(&self, limits: &PackLimits, seg_ids: &[u32]) -> usize {
        let merge = limits.fake_image.is_some()
            && self.ex.input_ids.last().copied() == limits.fake_image
            && seg_ids.first().copied() == limits.fake_image;
        seg_ids.len() - usize::from(merge)
    }

    fn fits(&self, limits: &PackLimits, seg: &Segment) -> bool {
        self.ex.input_ids.len() + self.cost(limits, &seg.ids) <= limits.max_seq_len
            && self.ex.n_images + seg.n_images <= limits.max_num_images
    }

    fn append(&mut self, limits: &PackLimits, seg: Segment) {
        let skip = seg.ids.len() - self.cost(limits, &seg.ids);
        self.ex.input_ids.extend(seg.ids.into_iter().skip(skip));
        self.ex.labels.extend(seg.labels.into_iter().skip(skip));
        self.ex.frames.extend(seg.frames);
        self.ex.n_images += seg.n_images;
    }

    fn has_labels(&self) -> bool {
        self.ex.n_label_tokens() > 0
    }
}

/// Greedy packing of pairs into rows, in arrival order.
#[derive(Debug, Clone)]
pub struct PairPacker {
    limits: PackLimits,
    row: Option<Row>,
}

impl PairPacker {
    pub fn new(limits: PackLimits) -> Self {
        Self { limits, row: None }
    }

    /// Whether no row is in progress.
    pub fn is_empty(&self) -> bool {
        self.row.is_none()
    }

    /// Drops the row in progress.
    pub fn clear(&mut self) {
        self.row = None;
    }

    /// Adds a pair. Returns the finished row when the pair does not fit in the current one (the pair then starts
    /// the next row), or a [`SkipReason::TooLong`] skip when it does not fit even in an empty row.
    pub fn push(&mut self, seg: Segment) -> Result<Option<TrainExample>, Skip> {
        let fresh = Row::new(&self.limits);
        if !fresh.fits(&self.limits, &seg) {
            return Err(Skip::new(
                SkipReason::TooLong,
                format!(
                    "pair of {} tokens / {} images does not fit in a row of {} tokens / {} images",
                    seg.ids.len(),
                    seg.n_images,
                    self.limits.max_seq_len,
                    self.limits.max_num_images
                ),
            ));
        }
        match &mut self.row {
            Some(row) if row.fits(&self.limits, &seg) => {
                row.append(&self.limits, seg);
                Ok(None)
            }
            _ => {
                let mut next = fresh;
                next.append(&self.limits, seg);
                let done = self.row.replace(next);
                Ok(done.filter(Row::has_labels).map(|r| r.ex))
            }
        }
    }

    /// The row in progress, if any (end of a finite stream).
    pub fn flush(&mut self) -> Option<TrainExample> {
        self.row.take().filter(Row::has_labels).map(|r| r.ex)
    }
}

/// Cuts a document's segments into windows (see the module docs). Fails with [`SkipReason::TooLong`] when an image
/// block cannot fit in an empty window, and with [`SkipReason::NoLabels`] when no window has text.
pub fn document_windows(
    segments: Vec<Segment>,
    limits: &PackLimits,
) -> Result<Vec<TrainExample>, Skip> {
    let mut windows = Vec::new();
    let mut row = Row::new(limits);
    for seg in segments {
        if seg.n_images > 0 {
            if !Row::new(limits).fits(limits, &seg) {
                return Err(Skip::new(
                    SkipReason::TooLong,
                    format!(
                        "an image block of {} tokens does not fit in a window of {} tokens",
                        seg.ids.len(),
                        limits.max_seq_len
                    ),
                ));
            }
            if !row.fits(limits, &seg) {
                windows.push(std::mem::replace(&mut row, Row::new(limits)));
            }
            row.append(limits, seg);
            continue;
        }
        // Text: fill the window, continue in the next one.
        let mut rest = seg;
        while !rest.ids.is_empty() {
            let room = limits.max_seq_len.saturating_sub(row.ex.input_ids.len());
            if room == 0 {
                windows.push(std::mem::replace(&mut row, Row::new(limits)));
                continue;
            }
            let take = room.min(rest.ids.len());
            let head = Segment {
                ids: rest.ids.drain(..take).collect(),
                labels: rest.labels.drain(..take).collect(),
                frames: Vec::new(),
                n_images: 0,
            };
            row.append(limits, head);
            if Row::new(limits).ex.input_ids.len() >= limits.max_seq_len {
                // A BOS-only window has no room for text: avoid looping forever.
                break;
            }
        }
    }
    windows.push(row);
    let out: Vec<TrainExample> = windows
        .into_iter()
        .filter(Row::has_labels)
        .map(|r| r.ex)
        .collect();
    if out.is_empty() {
        return Err(Skip::new(SkipReason::NoLabels, "no window has text"));
    }
    Ok(out)
}
