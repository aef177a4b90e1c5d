//! Streaming, shuffled, resumable readers: files -> samples.
//!
//! A dataset is a list of parquet and/or JSONL files. It is cut into *units*: a parquet row group, or a block of
//! `jsonl_block_rows` lines of a JSONL file (located by one byte offset recorded in a streaming pass at open).
//! Only the footers / block offsets are kept; rows are read when their unit is reached.
//!
//! Shuffle (deterministic from `shuffle_seed`):
//! 1. the unit order is a Fisher-Yates permutation seeded by `(seed, epoch)`;
//! 2. consecutive units of that order are grouped into windows of `window` units (the bounded shuffle buffer:
//!    at most `window` row groups are in memory), and the rows of a window are permuted with a generator seeded
//!    by `(seed, epoch, first unit of the window)`.
//!
//! So a row can move anywhere within its window, and windows come in a random order. With no seed, rows come in
//! file order. The [`Cursor`] is `(epoch, unit, row)`: the window starting at position `unit` of the epoch's
//! unit order, and how many of its rows were already returned; restoring it with [`DatasetReader::seek`]
//! continues exactly the same sequence. Malformed rows are yielded as `Err` and the stream goes on.

pub(crate) mod columns;
mod kinds;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use serde::{Deserialize, Serialize};

pub use kinds::SampleKind;

use crate::error::{DataError, Result};
use crate::rng::Rng;
use crate::sample::{ChatSample, ImageTextPair, InterleavedDocument};

/// The Cauldron reader (parquet or JSONL conversations).
pub type CauldronReader = DatasetReader<ChatSample>;
/// Image-text pair reader.
pub type PairReader = DatasetReader<ImageTextPair>;
/// OBELICS-shaped interleaved document reader.
pub type ObelicsReader = DatasetReader<InterleavedDocument>;

/// How to read a dataset.
#[derive(Debug, Clone)]
pub struct ReaderOptions {
    /// `Some(seed)`: deterministic shuffled order; `None`: file order.
    pub shuffle_seed: Option<u64>,
    /// Units (row groups / JSONL blocks) whose rows are shuffled together; bounds memory.
    pub window: usize,
    /// Lines per JSONL unit.
    pub jsonl_block_rows: usize,
    /// Folder that relative image paths are resolved against (default: each data file's folder).
    pub image_root: Option<PathBuf>,
    /// Start the next epoch (with a new order) instead of ending.
    pub repeat: bool,
    /// Rows per arrow batch when decoding a row group.
    pub batch_rows: usize,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            shuffle_seed: None,
            window: 4,
            jsonl_block_rows: 256,
            image_root: None,
            repeat: false,
            batch_rows: 256,
        }
    }
}

/// A resumable position in the stream (serialise it with serde into a checkpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Shuffle seed the position belongs to.
    pub seed: Option<u64>,
    /// Epoch (0-based; the order changes per epoch).
    pub epoch: u64,
    /// Position in the epoch's unit order where the current window starts.
    pub unit: usize,
    /// Rows of that window already returned.
    pub row: usize,
    /// Units in the dataset (guards against resuming on different files).
    pub num_units: usize,
    /// Window size used (the row order depends on it).
    pub window: usize,
}

enum FileFormat {
    Parquet(ArrowReaderMetadata),
    Jsonl,
}

struct DataFile {
    path: PathBuf,
    root: PathBuf,
    format: FileFormat,
}

#[derive(Debug, Clone, Copy)]
struct Unit {
    file: usize,
    /// Row group index (parquet) or block index (JSONL).
    group: usize,
    rows: usize,
    /// Row number (in the file) of the unit's first row.
    first_row: usize,
    /// JSONL: byte offset and 0-based line index of the block's first line.
    offset: u64,
    line: usize,
}

/// Streams samples of kind `S` from parquet / JSONL files (see the module docs for order and resumption).
pub struct DatasetReader<S> {
    files: Vec<DataFile>,
    units: Vec<Unit>,
    opts: ReaderOptions,
    epoch: u64,
    order: Vec<usize>,
    unit_pos: usize,
    window_rows: VecDeque<Result<S>>,
    taken: usize,
    loaded: bool,
}

/// Expands directories into their `.parquet` / `.jsonl` files (sorted, so the file order is stable).
pub fn list_data_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| DataError::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| matches!(extension(f).as_deref(), Some("parquet" | "jsonl")))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(DataError::Invalid(
            "no .parquet or .jsonl files found".into(),
        ));
    }
    Ok(out)
}

fn extension(p: &Path) -> Option<String> {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

impl<S: SampleKind> DatasetReader<S> {
    /// Opens files and/or folders of `.parquet` / `.jsonl` files. Reads only parquet footers and JSONL block
    /// offsets here.
    pub fn open(paths: &[PathBuf], opts: ReaderOptions) -> Result<Self> {
        if opts.window == 0 || opts.jsonl_block_rows == 0 || opts.batch_rows == 0 {
            return Err(DataError::Invalid(
                "window, jsonl_block_rows and batch_rows must be at least 1".into(),
            ));
        }
        let mut files = Vec::new();
        let mut units = Vec::new();
        for path in list_data_files(paths)? {
            let root = match &opts.image_root {
                Some(r) => r.clone(),
                None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            let index = files.len();
            let format = match extension(&path).as_deref() {
                Some("parquet") => {
                    let meta = parquet_metadata(&path)?;
                    let mut first_row = 0;
                    for (group, rg) in meta.metadata().row_groups().iter().enumerate() {
                        let rows = usize::try_from(rg.num_rows()).unwrap_or(0);
                        units.push(Unit {
                            file: index,
                            group,
                            rows,
                            first_row,
                            offset: 0,
                            line: 0,
                        });
                        first_row += rows;
                    }
                    FileFormat::Parquet(meta)
                }
                Some("jsonl") => {
                    units.extend(index_jsonl(&path, index, opts.jsonl_block_rows)?);
                    FileFormat::Jsonl
                }
                _ => {
                    return Err(DataError::Invalid(format!(
                        "{}: unsupported data file (expected .parquet or .jsonl)",
                        path.display()
                    )))
                }
            };
            files.push(DataFile { path, root, format });
        }
        units.retain(|u| u.rows > 0);
        let mut reader = Self {
            files,
            units,
            opts,
            epoch: 0,
            order: Vec::new(),
            unit_pos: 0,
            window_rows: VecDeque::new(),
            taken: 0,
            loaded: false,
        };
        reader.order = reader.unit_order(0);
        Ok(reader)
    }

    /// Rows in one epoch (including rows that will fail to decode).
    pub fn num_rows(&self) -> usize {
        self.units.iter().map(|u| u.rows).sum()
    }

    /// Units (row groups / JSONL blocks) in the dataset.
    pub fn num_units(&self) -> usize {
        self.units.len()
    }

    /// The position of the next sample.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            seed: self.opts.shuffle_seed,
            epoch: self.epoch,
            unit: self.unit_pos,
            row: if self.loaded { self.taken } else { 0 },
            num_units: self.units.len(),
            window: self.opts.window,
        }
    }

    /// Moves to a saved position; the following samples are the ones that followed it when it was saved.
    pub fn seek(&mut self, cursor: &Cursor) -> Result<()> {
        if cursor.num_units != self.units.len() {
            return Err(DataError::Cursor(format!(
                "saved for {} units (row groups / blocks), dataset has {}",
                cursor.num_units,
                self.units.len()
            )));
        }
        if cursor.seed != self.opts.shuffle_seed || cursor.window != self.opts.window {
            return Err(DataError::Cursor(format!(
                "saved with seed {:?} / window {}, reader uses seed {:?} / window {}",
                cursor.seed, cursor.window, self.opts.shuffle_seed, self.opts.window
            )));
        }
        if cursor.unit > self.units.len() || (cursor.unit == self.units.len() && cursor.row > 0) {
            return Err(DataError::Cursor(format!(
                "unit {} is past the end",
                cursor.unit
            )));
        }
        self.epoch = cursor.epoch;
        self.order = self.unit_order(cursor.epoch);
        self.unit_pos = cursor.unit;
        self.loaded = false;
        self.window_rows.clear();
        self.taken = 0;
        if cursor.row > 0 {
            self.load_window();
            if cursor.row > self.window_rows.len() {
                return Err(DataError::Cursor(format!(
                    "row {} is past the end of its window ({} rows)",
                    cursor.row,
                    self.window_rows.len()
                )));
            }
            self.window_rows.drain(..cursor.row);
            self.taken = cursor.row;
        }
        Ok(())
    }

    fn unit_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.units.len()).collect();
        if let Some(seed) = self.opts.shuffle_seed {
            Rng::derive(&[seed, epoch, 0x0DE2]).shuffle(&mut order);
        }
        order
    }

    fn window_end(&self) -> usize {
        (self.unit_pos + self.opts.window).min(self.order.len())
    }

    fn load_window(&mut self) {
        let mut rows = Vec::new();
        for pos in self.unit_pos..self.window_end() {
            let Some(unit) = self
                .order
                .get(pos)
                .and_then(|&u| self.units.get(u))
                .copied()
            else {
                continue;
            };
            if let Err(e) = self.read_unit(&unit, &mut rows) {
                rows.push(Err(e));
            }
        }
        if let Some(seed) = self.opts.shuffle_seed {
            Rng::derive(&[seed, self.epoch, self.unit_pos as u64]).shuffle(&mut rows);
        }
        tracing::debug!(
            epoch = self.epoch,
            unit = self.unit_pos,
            rows = rows.len(),
            "loaded window"
        );
        self.window_rows = rows.into();
        self.taken = 0;
        self.loaded = true;
    }

    fn read_unit(&self, unit: &Unit, out: &mut Vec<Result<S>>) -> Result<()> {
        let Some(file) = self.files.get(unit.file) else {
            return Ok(());
        };
        let path = &file.path;
        match &file.format {
            FileFormat::Parquet(meta) => {
                let mut indices = Vec::new();
                for name in S::COLUMNS {
                    let idx = meta
                        .schema()
                        .index_of(name)
                        .map_err(|_| DataError::schema(path, name, "missing from the file"))?;
                    indices.push(idx);
                }
                let handle = File::open(path).map_err(|e| DataError::io(path, e))?;
                let builder =
                    ParquetRecordBatchReaderBuilder::new_with_metadata(handle, meta.clone());
                let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
                let batches = builder
                    .with_row_groups(vec![unit.group])
                    .with_projection(mask)
                    .with_batch_size(self.opts.batch_rows)
                    .build()
                    .map_err(|source| DataError::Parquet {
                        path: path.clone(),
                        source,
                    })?;
                let mut row = unit.first_row;
                for batch in batches {
                    let batch = batch.map_err(|source| DataError::Arrow {
                        path: path.clone(),
                        source,
                    })?;
                    for i in 0..batch.num_rows() {
                        out.push(
                            S::from_row(&batch, i, &file.root)
                                .map_err(|m| DataError::row(path, row, m)),
                        );
                        row += 1;
                    }
                }
            }
            FileFormat::Jsonl => {
                let mut handle = File::open(path).map_err(|e| DataError::io(path, e))?;
                handle
                    .seek(SeekFrom::Start(unit.offset))
                    .map_err(|e| DataError::io(path, e))?;
                let mut lines = BufReader::new(handle).lines();
                let (mut row, mut line_no) = (unit.first_row, unit.line);
                while row < unit.first_row + unit.rows {
                    let Some(line) = lines.next() else { break };
                    let line = line.map_err(|e| DataError::io(path, e))?;
                    line_no += 1;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let sample = serde_json::from_str::<serde_json::Value>(&line)
                        .map_err(|e| format!("line {line_no}: invalid JSON: {e}"))
                        .and_then(|v| {
                            S::from_json(&v, &file.root).map_err(|m| format!("line {line_no}: {m}"))
                        });
                    out.push(sample.map_err(|m| DataError::row(path, row, m)));
                    row += 1;
                }
            }
        }
        Ok(())
    }
}

impl<S: SampleKind> Iterator for DatasetReader<S> {
    type Item = Result<S>;

    fn next(&mut self) -> Option<Result<S>> {
        loop {
            if !self.loaded {
                if self.unit_pos >= self.order.len() {
                    if !self.opts.repeat || self.units.is_empty() {
                        return None;
                    }
                    self.epoch += 1;
                    self.order = self.unit_order(self.epoch);
                    self.unit_pos = 0;
                }
                self.load_window();
            }
            if let Some(item) = self.window_rows.pop_front() {
                self.taken += 1;
                if self.window_rows.is_empty() {
                    // Point the cursor at the next window right away, so a checkpoint taken now resumes there.
                    self.unit_pos = self.window_end();
                    self.loaded = false;
                }
                return Some(item);
            }
            self.unit_pos = self.window_end();
            self.loaded = false;
        }
    }
}

fn parquet_metadata(path: &Path) -> Result<ArrowReaderMetadata> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|source| {
        DataError::Parquet {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// One streaming pass over a JSONL file: a unit per `block_rows` non-empty lines, located by byte offset.
fn index_jsonl(path: &Path, file: usize, block_rows: usize) -> Result<Vec<Unit>> {
    let handle = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::new(handle);
    let mut units: Vec<Unit> = Vec::new();
    let (mut offset, mut line_no, mut rows) = (0u64, 0usize, 0usize);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            if rows % block_rows == 0 {
                units.push(Unit {
                    file,
                    group: units.len(),
                    rows: 0,
                    first_row: rows,
                    offset,
                    line: line_no,
                });
            }
            if let Some(u) = units.last_mut() {
                u.rows += 1;
            }
            rows += 1;
        }
        offset += n as u64;
        line_no += 1;
    }
    Ok(units)
}
