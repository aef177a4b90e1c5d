//! Parquet writers in the layouts the readers read (and that Hugging Face `datasets` writes):
//! The Cauldron (`images: list<struct<bytes, path>>`, `texts: list<struct<user, assistant, source>>`),
//! pairs (`image: struct<bytes, path>`, `text`), OBELICS (`images: list<struct<bytes, path>>`, `texts: list<string>`,
//! exactly one of the two set per position). Row groups have a fixed size so that readers can shuffle them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{ArrowError, DataType, Field, Fields, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::error::{DataError, Result};
use crate::sample::{ChatSample, DocItem, ImageSource, ImageTextPair, InterleavedDocument};

/// A sample type that can be written as parquet rows.
pub trait WriteKind: Sized {
    /// The arrow schema of the file.
    fn schema() -> SchemaRef;
    /// The rows as one record batch.
    fn to_batch(rows: &[Self]) -> std::result::Result<RecordBatch, ArrowError>;
}

fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

fn turn_fields() -> Fields {
    Fields::from(vec![
        Field::new("user", DataType::Utf8, true),
        Field::new("assistant", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, true),
    ])
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", item, true)))
}

/// HF `Image` structs; `None` entries are null.
fn image_structs(images: &[Option<&ImageSource>]) -> StructArray {
    let bytes: BinaryArray = images
        .iter()
        .map(|im| match im {
            Some(ImageSource::Bytes(b)) => Some(b.as_slice()),
            _ => None,
        })
        .collect();
    let paths: StringArray = images
        .iter()
        .map(|im| match im {
            Some(ImageSource::Path(p)) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let nulls = NullBuffer::from(images.iter().map(Option::is_some).collect::<Vec<bool>>());
    StructArray::new(
        image_fields(),
        vec![Arc::new(bytes), Arc::new(paths)],
        Some(nulls),
    )
}

fn list_array(item: DataType, lengths: Vec<usize>, values: ArrayRef) -> ListArray {
    ListArray::new(
        Arc::new(Field::new("item", item, true)),
        OffsetBuffer::from_lengths(lengths),
        values,
        None,
    )
}

impl WriteKind for ChatSample {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("images", list_of(DataType::Struct(image_fields())), true),
            Field::new("texts", list_of(DataType::Struct(turn_fields())), true),
        ]))
    }

    fn to_batch(rows: &[Self]) -> std::result::Result<RecordBatch, ArrowError> {
        let images: Vec<Option<&ImageSource>> = rows
            .iter()
            .flat_map(|r| r.images.iter().map(Some))
            .collect();
        let images = list_array(
            DataType::Struct(image_fields()),
            rows.iter().map(|r| r.images.len()).collect(),
            Arc::new(image_structs(&images)),
        );
        let turns: Vec<_> = rows.iter().flat_map(|r| r.turns.iter()).collect();
        let col = |f: fn(&crate::sample::Turn) -> &str| -> ArrayRef {
            Arc::new(turns.iter().map(|t| Some(f(t))).collect::<StringArray>())
        };
        let turns = StructArray::new(
            turn_fields(),
            vec![col(|t| &t.user), col(|t| &t.assistant), col(|t| &t.source)],
            None,
        );
        let texts = list_array(
            DataType::Struct(turn_fields()),
            rows.iter().map(|r| r.turns.len()).collect(),
            Arc::new(turns),
        );
        RecordBatch::try_new(Self::schema(), vec![Arc::new(images), Arc::new(texts)])
    }
}

impl WriteKind for ImageTextPair {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("image", DataType::Struct(image_fields()), true),
            Field::new("text", DataType::Utf8, true),
        ]))
    }

    fn to_batch(rows: &[Self]) -> std::result::Result<RecordBatch, ArrowError> {
        let images: Vec<Option<&ImageSource>> = rows.iter().map(|r| Some(&r.image)).collect();
        let text: StringArray = rows.iter().map(|r| Some(r.text.as_str())).collect();
        RecordBatch::try_new(
            Self::schema(),
            vec![Arc::new(image_structs(&images)), Arc::new(text)],
        )
    }
}

impl WriteKind for InterleavedDocument {
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("images", list_of(DataType::Struct(image_fields())), true),
            Field::new("texts", list_of(DataType::Utf8), true),
        ]))
    }

    fn to_batch(rows: &[Self]) -> std::result::Result<RecordBatch, ArrowError> {
        let lengths: Vec<usize> = rows.iter().map(|r| r.items.len()).collect();
        let items: Vec<&DocItem> = rows.iter().flat_map(|r| r.items.iter()).collect();
        let images: Vec<Option<&ImageSource>> = items
            .iter()
            .map(|it| match it {
                DocItem::Image(img) => Some(img),
                DocItem::Text(_) => None,
            })
            .collect();
        let texts: StringArray = items
            .iter()
            .map(|it| match it {
                DocItem::Text(t) => Some(t.as_str()),
                DocItem::Image(_) => None,
            })
            .collect();
        let images = list_array(
            DataType::Struct(image_fields()),
            lengths.clone(),
            Arc::new(image_structs(&images)),
        );
        let texts = list_array(DataType::Utf8, lengths, Arc::new(texts));
        RecordBatch::try_new(Self::schema(), vec![Arc::new(images), Arc::new(texts)])
    }
}

/// Streams samples into a parquet file, one row group per `rows_per_group` samples.
pub struct ParquetWriter<S: WriteKind> {
    path: PathBuf,
    writer: ArrowWriter<File>,
    pending: Vec<S>,
    rows_per_group: usize,
    written: usize,
}

impl<S: WriteKind> ParquetWriter<S> {
    /// Creates (truncates) `path`.
    pub fn create(path: &Path, rows_per_group: usize) -> Result<Self> {
        let rows_per_group = rows_per_group.max(1);
        let file = File::create(path).map_err(|e| DataError::io(path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(rows_per_group))
            .build();
        let writer = ArrowWriter::try_new(file, S::schema(), Some(props)).map_err(|source| {
            DataError::Parquet {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            pending: Vec::new(),
            rows_per_group,
            written: 0,
        })
    }

    /// Adds one sample.
    pub fn write(&mut self, sample: S) -> Result<()> {
        self.pending.push(sample);
        if self.pending.len() >= self.rows_per_group {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = S::to_batch(&self.pending).map_err(|source| DataError::Arrow {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path.clone();
        let parquet = |source| DataError::Parquet {
            path: path.clone(),
            source,
        };
        self.writer.write(&batch).map_err(parquet)?;
        self.writer.flush().map_err(parquet)?;
        self.written += self.pending.len();
        self.pending.clear();
        Ok(())
    }

    /// Writes the last row group and the footer; returns the number of rows written.
    pub fn finish(mut self) -> Result<usize> {
        self.flush_group()?;
        let path = self.path.clone();
        self.writer
            .close()
            .map_err(|source| DataError::Parquet { path, source })?;
        Ok(self.written)
    }
}

/// Writes all `rows` to `path` (convenience for tests and small files).
pub fn write_parquet<S: WriteKind + Clone>(
    path: &Path,
    rows: &[S],
    rows_per_group: usize,
) -> Result<usize> {
    let mut w = ParquetWriter::create(path, rows_per_group)?;
    for r in rows {
        w.write(r.clone())?;
    }
    w.finish()
}
