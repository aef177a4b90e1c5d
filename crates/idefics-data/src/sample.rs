//! Sample types: what one training / evaluation example is, independent of the file it came from.
//!
//! - [`ChatSample`]: The Cauldron (images + user/assistant turns), used for instruction fine-tuning and eval.
//! - [`ImageTextPair`]: one image and its caption (PMD / LAION COCO style pre-training pairs).
//! - [`InterleavedDocument`]: OBELICS-style web documents, text and images in reading order.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Where an image's bytes are: inline (parquet `bytes`) or a file on disk. Training data and benchmark
/// samples alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// Encoded image bytes (PNG, JPEG, ...), e.g. the `bytes` field of a HF `Image` struct.
    Bytes(Vec<u8>),
    /// A path (already resolved against the dataset's image folder).
    Path(PathBuf),
}

impl ImageSource {
    /// A short description for messages: the path, or the byte count.
    pub fn origin(&self) -> String {
        match self {
            ImageSource::Bytes(b) => format!("<{} bytes>", b.len()),
            ImageSource::Path(p) => p.display().to_string(),
        }
    }

    /// The encoded bytes (read from disk for `Path`).
    pub fn load_bytes(&self) -> Result<Vec<u8>> {
        match self {
            ImageSource::Bytes(b) => Ok(b.clone()),
            ImageSource::Path(p) => std::fs::read(p).map_err(|e| DataError::io(p, e)),
        }
    }

    /// Decodes the image; undecodable bytes give [`DataError::ImageDecode`] (callers skip and count them).
    pub fn decode(&self) -> Result<image::DynamicImage> {
        let bytes = self.load_bytes()?;
        image::load_from_memory(&bytes).map_err(|e| DataError::ImageDecode {
            origin: self.origin(),
            message: e.to_string(),
        })
    }
}

/// One user/assistant exchange of The Cauldron (`texts` column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub user: String,
    pub assistant: String,
    /// The sub-dataset the turn comes from (e.g. `ai2d`, `synth_shapes`).
    #[serde(default)]
    pub source: String,
}

/// A conversation about zero or more images (The Cauldron row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSample {
    pub images: Vec<ImageSource>,
    pub turns: Vec<Turn>,
}

/// One image with its caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageTextPair {
    pub image: ImageSource,
    pub text: String,
}

/// One position of an interleaved document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocItem {
    Text(String),
    Image(ImageSource),
}

/// A web document with images and text in reading order (OBELICS row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterleavedDocument {
    pub items: Vec<DocItem>,
}

impl InterleavedDocument {
    /// Builds a document from OBELICS's parallel lists, where exactly one of `images[i]` / `texts[i]` is set.
    /// The error says which position breaks the rule; readers prefix the file and row.
    pub fn from_parallel(
        images: Vec<Option<ImageSource>>,
        texts: Vec<Option<String>>,
    ) -> std::result::Result<Self, String> {
        if images.len() != texts.len() {
            return Err(format!(
                "OBELICS `images` has {} entries but `texts` has {} (they must be parallel)",
                images.len(),
                texts.len()
            ));
        }
        let mut items = Vec::with_capacity(images.len());
        for (i, (image, text)) in images.into_iter().zip(texts).enumerate() {
            match (image, text) {
                (Some(img), None) => items.push(DocItem::Image(img)),
                (None, Some(t)) => items.push(DocItem::Text(t)),
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "position {i}: both `images` and `texts` are set (exactly one must be null)"
                    ))
                }
                (None, None) => {
                    return Err(format!(
                        "position {i}: both `images` and `texts` are null (exactly one must be set)"
                    ))
                }
            }
        }
        Ok(Self { items })
    }

    /// The parallel-list form (`images`, `texts`) that OBELICS files store.
    pub fn to_parallel(&self) -> (Vec<Option<&ImageSource>>, Vec<Option<&str>>) {
        self.items
            .iter()
            .map(|it| match it {
                DocItem::Image(img) => (Some(img), None),
                DocItem::Text(t) => (None, Some(t.as_str())),
            })
            .unzip()
    }

    /// The images of the document, in order.
    pub fn images(&self) -> impl Iterator<Item = &ImageSource> {
        self.items.iter().filter_map(|it| match it {
            DocItem::Image(img) => Some(img),
            DocItem::Text(_) => None,
        })
    }
}
