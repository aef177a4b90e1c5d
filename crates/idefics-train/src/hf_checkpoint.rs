//! Hugging Face-format model directories for the training pipeline: read every tensor of a checkpoint, and
//! write `config.json` + `model.safetensors` (+ the tokenizer / processor files copied from elsewhere), the
//! layout `Idefics2ForConditionalGeneration.from_pretrained` and our own loader read.

use super::atomic::atomic_write;
use super::peft::safetensors_bytes;
use super::TrainError;
use candle_core::{DType, Device, Tensor};
use idefics::weights::Checkpoint;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The weights file we write (one file: the tiny models are far below the 5 GB shard size).
pub const MODEL_FILE: &str = "model.safetensors";

/// Files besides the weights and config that make a directory usable by the processor and for generation.
pub const SIDE_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "processor_config.json",
    "preprocessor_config.json",
    "generation_config.json",
];

/// Reads `dir/config.json` as JSON (kept raw, so fields we do not model survive a rewrite).
pub fn read_config_json(dir: &Path) -> Result<Value, TrainError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|source| TrainError::Json { path, source })
}

/// Every tensor of the checkpoint in `dir` (single file or shards), converted to `dtype`.
pub fn load_tensors(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let ck = Checkpoint::open(dir).map_err(|e| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let names: Vec<String> = ck.names().map(str::to_string).collect();
    let mut out = HashMap::with_capacity(names.len());
    for name in names {
        let t = ck
            .load(&name, dtype, device)
            .map_err(|e| TrainError::Safetensors {
                path: dir.to_path_buf(),
                reason: format!("tensor {name}: {e}"),
            })?;
        out.insert(name, t);
    }
    Ok(out)
}

/// Writes a Hugging Face model directory: `config.json`, `model.safetensors` (tensors in their own dtype,
/// metadata `format: pt` as transformers writes), and each of [`SIDE_FILES`] found in `side_files_from`
/// (the first directory that has a file wins) unless already written by the caller.
pub fn save_hf_checkpoint(
    dir: &Path,
    config: &Value,
    tensors: &HashMap<String, Tensor>,
    side_files_from: &[&Path],
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    // Validate before writing: a config our loader refuses must not reach disk.
    idefics::Idefics2Config::from_json_value(config)
        .map_err(|e| TrainError::Invalid(format!("config for {}: {e}", dir.display())))?;
    let cpath = dir.join("config.json");
    let json = serde_json::to_vec_pretty(config).map_err(|source| TrainError::Json {
        path: cpath.clone(),
        source,
    })?;
    atomic_write(&cpath, &json)?;
    let wpath = dir.join(MODEL_FILE);
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors_bytes(tensors, Some(meta), &wpath)?;
    atomic_write(&wpath, &bytes)?;
    for name in SIDE_FILES {
        let dst = dir.join(name);
        for src_dir in side_files_from {
            let src = src_dir.join(name);
            if src.is_file() && src != dst {
                std::fs::copy(&src, &dst).map_err(|e| TrainError::io(&src, e))?;
                break;
            }
        }
    }
    tracing::info!(dir = %dir.display(), tensors = tensors.len(), bytes = bytes.len(), "wrote HF checkpoint");
    Ok(())
}
