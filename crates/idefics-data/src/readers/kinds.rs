//! How one row becomes a sample, for each dataset layout (parquet row or JSONL line).
//!
//! | kind | parquet columns | JSONL keys |
//! |---|---|---|
//! | [`ChatSample`] (The Cauldron) | `images: list<image>`, `texts: list<struct<user, assistant, source>>` | `{"images": [path], "texts": [{user, assistant, source}]}` |
//! | [`ImageTextPair`] | `image: image`, `text: string` | `{"image": path, "text": str}` |
//! | [`InterleavedDocument`] (OBELICS) | `images: list<image or url>`, `texts: list<string>` | `{"images": [path or null], "texts": [str or null]}` |
//!
//! `image` is a HF `Image` struct `{bytes, path}`, raw bytes, or a path string (relative to the image root).

use std::path::Path;

use arrow_array::{Array, RecordBatch};
use serde_json::Value;

use super::columns::{column, image_at, list_at, resolve, string_at, struct_field};
use crate::sample::{ChatSample, ImageSource, ImageTextPair, InterleavedDocument, Turn};

/// A sample type the generic reader can produce.
pub trait SampleKind: Sized {
    /// Top-level parquet columns this kind reads (the others are not decoded).
    const COLUMNS: &'static [&'static str];
    /// Decodes row `i` of a batch; the error message names the field (the reader adds file and row).
    fn from_row(batch: &RecordBatch, i: usize, root: &Path) -> Result<Self, String>;
    /// Decodes one JSON line.
    fn from_json(value: &Value, root: &Path) -> Result<Self, String>;
}

fn json_path(v: &Value, what: &str, root: &Path) -> Result<Option<ImageSource>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(p) => Ok(Some(resolve(root, p))),
        other => Err(format!("{what}: expected a path string, found {other}")),
    }
}

fn json_list<'a>(value: &'a Value, key: &str) -> Result<&'a Vec<Value>, String> {
    match value.get(key) {
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!("`{key}`: expected a list, found {other}")),
        None => Err(format!("missing key `{key}`")),
    }
}

impl SampleKind for ChatSample {
    const COLUMNS: &'static [&'static str] = &["images", "texts"];

    fn from_row(batch: &RecordBatch, i: usize, root: &Path) -> Result<Self, String> {
        let images_col = column(batch, "images").map_err(|e| format!("`images`: {e}"))?;
        let texts_col = column(batch, "texts").map_err(|e| format!("`texts`: {e}"))?;
        let mut images = Vec::new();
        if let Some(list) = list_at(images_col.as_ref(), i).map_err(|e| format!("`images`: {e}"))? {
            for j in 0..list.len() {
                match image_at(list.as_ref(), j, root).map_err(|e| format!("`images[{j}]`: {e}"))? {
                    Some(img) => images.push(img),
                    None => return Err(format!("`images[{j}]` is null")),
                }
            }
        }
        let list = list_at(texts_col.as_ref(), i)
            .map_err(|e| format!("`texts`: {e}"))?
            .ok_or("`texts` is null")?;
        let field =
            |name: &str| struct_field(list.as_ref(), name).map_err(|e| format!("`texts`: {e}"));
        let (user, assistant) = (field("user")?, field("assistant")?);
        let source = field("source").ok();
        let mut turns = Vec::with_capacity(list.len());
        for j in 0..list.len() {
            let get = |arr: &dyn Array, name: &str| {
                string_at(arr, j)
                    .map_err(|e| format!("`texts[{j}].{name}`: {e}"))?
                    .ok_or_else(|| format!("`texts[{j}].{name}` is null"))
            };
            let source = match source {
                Some(s) => string_at(s.as_ref(), j)
                    .map_err(|e| format!("`texts[{j}].source`: {e}"))?
                    .unwrap_or_default(),
                None => String::new(),
            };
            turns.push(Turn {
                user: get(user.as_ref(), "user")?,
                assistant: get(assistant.as_ref(), "assistant")?,
                source,
            });
        }
        Ok(ChatSample { images, turns })
    }

    fn from_json(value: &Value, root: &Path) -> Result<Self, String> {
        let images = match value.get("images") {
            None | Some(Value::Null) => Vec::new(),
            Some(_) => json_list(value, "images")?
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    json_path(v, &format!("`images[{j}]`"), root)?
                        .ok_or_else(|| format!("`images[{j}]` is null"))
                })
                .collect::<Result<_, _>>()?,
        };
        let turns = json_list(value, "texts")?
            .iter()
            .enumerate()
            .map(|(j, v)| {
                serde_json::from_value::<Turn>(v.clone()).map_err(|e| format!("`texts[{j}]`: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(ChatSample { images, turns })
    }
}

impl SampleKind for ImageTextPair {
    const COLUMNS: &'static [&'static str] = &["image", "text"];

    fn from_row(batch: &RecordBatch, i: usize, root: &Path) -> Result<Self, String> {
        let image_col = column(batch, "image").map_err(|e| format!("`image`: {e}"))?;
        let text_col = column(batch, "text").map_err(|e| format!("`text`: {e}"))?;
        let image = image_at(image_col.as_ref(), i, root)
            .map_err(|e| format!("`image`: {e}"))?
            .ok_or("`image` is null")?;
        let text = string_at(text_col.as_ref(), i)
            .map_err(|e| format!("`text`: {e}"))?
            .ok_or("`text` is null")?;
        Ok(ImageTextPair { image, text })
    }

    fn from_json(value: &Value, root: &Path) -> Result<Self, String> {
        let image = json_path(value.get("image").unwrap_or(&Value::Null), "`image`", root)?
            .ok_or("`image` is missing or null")?;
        let text = match value.get("text") {
            Some(Value::String(t)) => t.clone(),
            Some(other) => return Err(format!("`text`: expected a string, found {other}")),
            None => return Err("missing key `text`".into()),
        };
        Ok(ImageTextPair { image, text })
    }
}

impl SampleKind for InterleavedDocument {
    const COLUMNS: &'static [&'static str] = &["images", "texts"];

    fn from_row(batch: &RecordBatch, i: usize, root: &Path) -> Result<Self, String> {
        let images_col = column(batch, "images").map_err(|e| format!("`images`: {e}"))?;
        let texts_col = column(batch, "texts").map_err(|e| format!("`texts`: {e}"))?;
        let images = match list_at(images_col.as_ref(), i).map_err(|e| format!("`images`: {e}"))? {
            Some(list) => (0..list.len())
                .map(|j| {
                    image_at(list.as_ref(), j, root).map_err(|e| format!("`images[{j}]`: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let texts = match list_at(texts_col.as_ref(), i).map_err(|e| format!("`texts`: {e}"))? {
            Some(list) => (0..list.len())
                .map(|j| string_at(list.as_ref(), j).map_err(|e| format!("`texts[{j}]`: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        InterleavedDocument::from_parallel(images, texts)
    }

    fn from_json(value: &Value, root: &Path) -> Result<Self, String> {
        let images = json_list(value, "images")?
            .iter()
            .enumerate()
            .map(|(j, v)| json_path(v, &format!("`images[{j}]`"), root))
            .collect::<Result<Vec<_>, _>>()?;
        let texts = json_list(value, "texts")?
            .iter()
            .enumerate()
            .map(|(j, v)| match v {
                Value::Null => Ok(None),
                Value::String(t) => Ok(Some(t.clone())),
                other => Err(format!(
                    "`texts[{j}]`: expected a string or null, found {other}"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        InterleavedDocument::from_parallel(images, texts)
    }
}
