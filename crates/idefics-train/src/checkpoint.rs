//! Resumable training checkpoints: one directory per checkpoint with a manifest.
//!
//! Layout (a checkpoint with an adapter is also a directory peft can load):
//!   adapter_config.json, adapter_model.safetensors   the adapter (peft format), if training one
//!   trainable.safetensors                            other trainable weights (full fine-tuning), if any
//!   optimizer.safetensors                            AdamW moments + step
//!   trainer_state.json                               step, schedule, RNG state, data position
//!   manifest.json                                    size and sha256 of every file above
//!
//! Writing is crash-safe: everything goes into a hidden staging directory next to the target, each
//! file fsynced, the manifest last; then the staging directory is renamed into place. Loading checks
//! every file against the manifest and refuses a missing, truncated or altered file by name.

use super::atomic::{atomic_write, sync_dir};
use super::optimizer::AdamW;
use super::peft::{safetensors_bytes, PeftAdapter};
use super::schedule::LrSchedule;
use super::TrainError;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINABLE_FILE: &str = "trainable.safetensors";
const FORMAT: &str = "idefics-rs training checkpoint";
const FORMAT_VERSION: u32 = 1;

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer updates done.
    pub step: u64,
    /// xoshiro256++ state of the training RNG ([`super::rng::TrainRng::state`]).
    pub rng_state: [u64; 4],
    pub schedule: LrSchedule,
    /// Anything else the loop wants back (recipe hash, tokens seen, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// One file's record in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub step: u64,
    pub files: BTreeMap<String, FileRecord>,
}

/// What to save.
pub struct CheckpointContents<'a> {
    pub adapter: Option<&'a PeftAdapter>,
    pub trainable: Option<&'a HashMap<String, Tensor>>,
    pub optimizer: &'a AdamW,
    pub state: &'a TrainerState,
}

/// What a checkpoint held.
pub struct LoadedCheckpoint {
    pub adapter: Option<PeftAdapter>,
    pub trainable: Option<HashMap<String, Tensor>>,
    /// Path of the optimizer state, for [`AdamW::load`] (the optimizer needs its variables first).
    pub optimizer_path: PathBuf,
    pub state: TrainerState,
    pub manifest: Manifest,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ckpt_err(dir: &Path, reason: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Writes a checkpoint to `dir` (replacing an existing one there only once the new one is complete).
pub fn save_checkpoint(dir: &Path, contents: &CheckpointContents) -> Result<Manifest, TrainError> {
    let name = dir
        .file_name()
        .ok_or_else(|| ckpt_err(dir, "not a directory path"))?
        .to_string_lossy()
        .to_string();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| TrainError::io(&parent, e))?;
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| TrainError::io(&staging, e))?;
    }
    std::fs::create_dir(&staging).map_err(|e| TrainError::io(&staging, e))?;

    let result = (|| {
        if let Some(adapter) = contents.adapter {
            adapter.save(&staging)?;
        }
        if let Some(trainable) = contents.trainable {
            let path = staging.join(TRAINABLE_FILE);
            let bytes = safetensors_bytes(trainable, None, &path)?;
            atomic_write(&path, &bytes)?;
        }
        contents.optimizer.save(&staging.join(OPTIMIZER_FILE))?;
        let state_path = staging.join(TRAINER_STATE_FILE);
        let json =
            serde_json::to_vec_pretty(contents.state).map_err(|source| TrainError::Json {
                path: state_path.clone(),
                source,
            })?;
        atomic_write(&state_path, &json)?;

        let mut files = BTreeMap::new();
        let entries = std::fs::read_dir(&staging).map_err(|e| TrainError::io(&staging, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TrainError::io(&staging, e))?;
            let fname = entry.file_name().to_string_lossy().to_string();
            if fname.starts_with('.') {
                continue;
            }
            let bytes = std::fs::read(entry.path()).map_err(|e| TrainError::io(entry.path(), e))?;
            files.insert(
                fname,
                FileRecord {
                    bytes: bytes.len() as u64,
                    sha256: sha256_hex(&bytes),
                },
            );
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            step: contents.state.step,
            files,
        };
        let mpath = staging.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|source| TrainError::Json {
            path: mpath.clone(),
            source,
        })?;
        atomic_write(&mpath, &json)?;
        sync_dir(&staging).map_err(|e| TrainError::io(&staging, e))?;
        Ok(manifest)
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };

    // Swap into place: the old checkpoint (if any) is moved aside first and removed after.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(|e| TrainError::io(dir, e))?;
    }
    std::fs::rename(&staging, dir).map_err(|e| TrainError::io(dir, e))?;
    sync_dir(&parent).map_err(|e| TrainError::io(&parent, e))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    tracing::info!(dir = %dir.display(), step = manifest.step, "checkpoint saved");
    Ok(manifest)
}

/// Checks every file of the checkpoint in `dir` against its manifest.
pub fn verify_checkpoint(dir: &Path) -> Result<Manifest, TrainError> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = std::fs::read(&mpath).map_err(|e| {
        ckpt_err(
            dir,
            format!("no readable {MANIFEST_FILE} ({e}): incomplete or not a checkpoint"),
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| ckpt_err(dir, format!("{MANIFEST_FILE} is corrupt: {e}")))?;
    if manifest.format != FORMAT || manifest.format_version != FORMAT_VERSION {
        return Err(ckpt_err(
            dir,
            format!(
                "unknown format {:?} v{} (expected {FORMAT:?} v{FORMAT_VERSION})",
                manifest.format, manifest.format_version
            ),
        ));
    }
    for (fname, rec) in &manifest.files {
        // The manifest comes with the checkpoint: it may only name plain files inside the folder.
        if !is_plain_file_name(fname) {
            return Err(ckpt_err(
                dir,
                format!(
                    "the manifest names {fname:?}, which is not a file of the checkpoint folder"
                ),
            ));
        }
        let path = dir.join(fname);
        let bytes = std::fs::read(&path).map_err(|e| {
            ckpt_err(
                dir,
                format!("{fname} is listed in the manifest but unreadable: {e}"),
            )
        })?;
        if bytes.len() as u64 != rec.bytes {
            return Err(ckpt_err(
                dir,
                format!(
                    "{fname} is truncated or resized: {} bytes, manifest says {}",
                    bytes.len(),
                    rec.bytes
                ),
            ));
        }
        if sha256_hex(&bytes) != rec.sha256 {
            return Err(ckpt_err(
                dir,
                format!("{fname} is corrupt: sha256 differs from the manifest"),
            ));
        }
    }
    for required in [OPTIMIZER_FILE, TRAINER_STATE_FILE] {
        if !manifest.files.contains_key(required) {
            return Err(ckpt_err(dir, format!("manifest lists no {required}")));
        }
    }
    Ok(manifest)
}

/// A single normal path component: no separator, no `..`, not absolute, not empty.
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.contains(['/', '\\'])
}

/// Verifies and reads the checkpoint in `dir`.
pub fn load_checkpoint(dir: &Path, device: &Device) -> Result<LoadedCheckpoint, TrainError> {
    let manifest = verify_checkpoint(dir)?;
    let spath = dir.join(TRAINER_STATE_FILE);
    let text = std::fs::read(&spath).map_err(|e| TrainError::io(&spath, e))?;
    let state: TrainerState = serde_json::from_slice(&text).map_err(|source| TrainError::Json {
        path: spath,
        source,
    })?;
    let adapter = if manifest
        .files
        .contains_key(super::peft::ADAPTER_CONFIG_FILE)
    {
        Some(PeftAdapter::load(dir, device)?)
    } else {
        None
    };
    let trainable = if manifest.files.contains_key(TRAINABLE_FILE) {
        let path = dir.join(TRAINABLE_FILE);
        Some(candle_core::safetensors::load(&path, device).map_err(|e| {
            TrainError::Safetensors {
                path,
                reason: e.to_string(),
            }
        })?)
    } else {
        None
    };
    Ok(LoadedCheckpoint {
        adapter,
        trainable,
        optimizer_path: dir.join(OPTIMIZER_FILE),
        state,
        manifest,
    })
}
