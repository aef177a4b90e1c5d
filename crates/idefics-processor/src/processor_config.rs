//! The processor-level settings the text side needs: `image_seq_len` and the image-splitting flag.
//!
//! Where transformers 5.24 finds them (image_processing_base.py, processing_utils.py):
//! * `image_seq_len`, `processor_class`: processor_config.json (Idefics2Processor default 64 when absent).
//! * image-processor settings: the `image_processor` object nested in processor_config.json (what 5.x
//!   `save_pretrained` writes) wins over preprocessor_config.json (what the idefics2-8b repo has);
//!   `Idefics2ImageProcessor` defaults `do_image_splitting` to false when neither sets it.

use std::path::Path;

use serde_json::Value;

use crate::prompt::PromptError;

/// Idefics2Processor's default number of `<image>` tokens per (sub-)image (= perceiver latents).
pub const DEFAULT_IMAGE_SEQ_LEN: usize = 64;

/// Text-side processor settings of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorConfig {
    /// `<image>` tokens per (sub-)image; must equal the model's perceiver `resampler_n_latents`.
    pub image_seq_len: usize,
    /// The checkpoint's image-splitting setting (the default for calls that do not override it).
    pub do_image_splitting: bool,
    /// `processor_class` if given (e.g. "Idefics2Processor").
    pub processor_class: Option<String>,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            image_seq_len: DEFAULT_IMAGE_SEQ_LEN,
            do_image_splitting: false,
            processor_class: None,
        }
    }
}

/// Read a JSON file if it exists; a malformed file is an error naming it.
pub(crate) fn read_json_if_exists(path: &Path) -> Result<Option<Value>, PromptError> {
    if !path.is_file() {
        return Ok(None);
    }
    let err = |message: String| PromptError::Config {
        file: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| err(e.to_string()))
}

impl ProcessorConfig {
    /// Read processor_config.json / preprocessor_config.json of a checkpoint directory (both optional).
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let processor_path = dir.join("processor_config.json");
        let processor = read_json_if_exists(&processor_path)?;
        let preprocessor = read_json_if_exists(&dir.join("preprocessor_config.json"))?;
        Self::from_values(processor.as_ref(), preprocessor.as_ref()).map_err(|message| {
            PromptError::Config {
                file: processor_path.display().to_string(),
                message,
            }
        })
    }

    /// Build from the parsed files (either may be absent).
    pub fn from_values(
        processor: Option<&Value>,
        preprocessor: Option<&Value>,
    ) -> Result<Self, String> {
        let mut config = Self::default();
        if let Some(p) = processor {
            if let Some(v) = p.get("image_seq_len") {
                let n = v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("image_seq_len must be a positive integer, got {v}"))?;
                config.image_seq_len = usize::try_from(n).map_err(|e| e.to_string())?;
            }
            config.processor_class = p
                .get("processor_class")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        let image_processor = processor
            .and_then(|p| p.get("image_processor"))
            .or(preprocessor);
        if let Some(v) = image_processor.and_then(|ip| ip.get("do_image_splitting")) {
            config.do_image_splitting = v
                .as_bool()
                .ok_or_else(|| format!("do_image_splitting must be true or false, got {v}"))?;
        }
        Ok(config)
    }
}
