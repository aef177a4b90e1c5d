//! Writing trained weights as a Hugging Face checkpoint that `from_pretrained` loads: `model.safetensors`
//! (every tensor cast once from the f32 merge), the source's config, tokenizer, chat template and processor
//! files, and `idefics merge` (base + peft adapter -> full checkpoint, merged in f32 as peft's
//! `merge_and_unload`).

use super::atomic::atomic_write;
use super::peft::{safetensors_bytes, PeftAdapter};
use super::trainable::{merged_state_dict, TrainableModel, TrainablePlan, Tuning};
use super::TrainError;
use candle_core::{DType, Device, Tensor};
use idefics::model::{LoadOptions, VlmModel};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The weights file we write (single file; the tiny and benchmark models are far below shard sizes).
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Files of a checkpoint directory that are weights (not copied from the source).
fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".bin")
        || name.ends_with(".pt")
        || name == "model.safetensors.index.json"
        || name == "pytorch_model.bin.index.json"
}

/// The name transformers uses for a dtype in config.json.
fn torch_dtype_name(dtype: DType) -> Result<&'static str, TrainError> {
    Ok(match dtype {
        DType::F32 => "float32",
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        other => {
            return Err(TrainError::Invalid(format!(
                "cannot save weights as {other:?}: use f32, bf16 or f16"
            )))
        }
    })
}

/// Writes `state` (f32 tensors under checkpoint names) cast to `dtype` into `out_dir`, with every non-weight
/// file of `src_dir` (config.json gets its dtype field updated). `out_dir` may be `src_dir`'s sibling but not
/// `src_dir` itself.
pub fn write_hf_checkpoint(
    state: &BTreeMap<String, Tensor>,
    src_dir: &Path,
    out_dir: &Path,
    dtype: DType,
) -> Result<(), TrainError> {
    let dtype_name = torch_dtype_name(dtype)?;
    if src_dir.canonicalize().ok() == out_dir.canonicalize().ok() && out_dir.exists() {
        return Err(TrainError::Invalid(format!(
            "refusing to overwrite the source checkpoint {} (choose another output directory)",
            src_dir.display()
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let entries = std::fs::read_dir(src_dir).map_err(|e| TrainError::io(src_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(src_dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        if !path.is_file() || is_weight_file(&name) || name.starts_with('.') {
            continue;
        }
        let mut bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        if name == "config.json" {
            let mut cfg: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|source| TrainError::Json {
                    path: path.clone(),
                    source,
                })?;
            if let Some(obj) = cfg.as_object_mut() {
                // transformers 5.x reads `dtype`, 4.x `torch_dtype`.
                let key = if obj.contains_key("torch_dtype") && !obj.contains_key("dtype") {
                    "torch_dtype"
                } else {
                    "dtype"
                };
                obj.insert(key.into(), dtype_name.into());
            }
            bytes = serde_json::to_vec_pretty(&cfg).map_err(|source| TrainError::Json {
                path: path.clone(),
                source,
            })?;
        }
        atomic_write(&out_dir.join(&name), &bytes)?;
    }
    let tensors = state
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?.contiguous()?)))
        .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = out_dir.join(WEIGHTS_FILE);
    let bytes = safetensors_bytes(&tensors, Some(metadata), &path)?;
    atomic_write(&path, &bytes)?;
    tracing::info!(dir = %out_dir.display(), tensors = tensors.len(), ?dtype, "wrote checkpoint");
    Ok(())
}

/// Writes the merged weights of a model being trained (adapters folded in) as a full checkpoint.
pub fn export_trained(
    model: &TrainableModel,
    src_dir: &Path,
    out_dir: &Path,
    dtype: DType,
) -> Result<(), TrainError> {
    write_hf_checkpoint(&model.merged_state_dict()?, src_dir, out_dir, dtype)
}

/// `idefics merge`: base checkpoint + peft adapter -> full checkpoint. The merge is done in f32 and cast once.
pub fn merge_adapter(
    base_dir: &Path,
    adapter_dir: &Path,
    out_dir: &Path,
    dtype: DType,
) -> Result<(), TrainError> {
    let device = Device::Cpu;
    let adapter = PeftAdapter::load(adapter_dir, &device)?;
    let model = VlmModel::load(
        base_dir,
        &LoadOptions {
            device,
            dtype: DType::F32,
            ..Default::default()
        },
    )?;
    let kind = if adapter.config.use_dora {
        Tuning::Dora
    } else {
        Tuning::Lora
    };
    // Every component may hold adapter modules; those the adapter does not name stay as they are.
    let plan = TrainablePlan {
        vision: kind,
        projection: kind,
        perceiver: match model {
            VlmModel::Idefics2(_) => kind,
            VlmModel::Idefics3(_) => Tuning::Frozen,
        },
        text: kind,
        embeddings: Tuning::Frozen,
        lm_head: if model.is_tied() {
            Tuning::Frozen
        } else {
            kind
        },
    };
    let tied = model.is_tied();
    let adapted = TrainableModel::with_adapter(model, &plan, &adapter)?;
    let state = merged_state_dict(adapted.model(), tied)?;
    write_hf_checkpoint(&state, base_dir, out_dir, dtype)
}
