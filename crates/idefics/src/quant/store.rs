//! A quantized model saved once and loaded without quantizing again: `model.gguf` next to the checkpoint's
//! `config.json`, tokenizer and processor files.
//!
//! Layout (documented in `docs/quantization.md`): GGUF v2 as candle writes it; every tensor under its Hugging Face
//! checkpoint name (`model.text_model.layers.0.self_attn.q_proj.weight`, ...; not llama.cpp's `blk.0.attn_q`
//! names, because the model is Idefics2 / Idefics3 and llama.cpp has no mapping for their connectors); quantized
//! tensors in their GGUF block type, every other tensor as F32 in its checkpoint shape; metadata
//! `general.architecture = "idefics-rs"`, `idefics.format = 1`, `idefics.quant = "q4k"` (what was asked for),
//! `idefics.quant_vision` (bool) and `idefics.config` (the config.json text it was made from).
//!
//! Loading reads one tensor at a time: dense tensors through a `VarBuilder` backend, and the quantized blocks of
//! a layer straight from the file when the layer asks for them (the layer's dense copy, dequantized to build it,
//! is dropped at once). The blocks are the saved bytes, so the logits are bit-identical to quantizing at load.

use super::streaming::Pending;
use super::{QWeight, QuantConfig, QuantType};
use crate::error::{Error, Result};
use crate::nn::{Linear, ParamVisitor, VisitParams};
use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file name of a saved quantized model inside a model directory.
pub const STORE_FILE: &str = "model.gguf";
const FORMAT: u32 = 1;

/// An open `model.gguf`: its index, read tensor by tensor.
#[derive(Debug)]
pub struct GgufStore {
    path: PathBuf,
    content: Content,
    file: Mutex<BufReader<File>>,
    quant: QuantConfig,
    used: Mutex<BTreeSet<String>>,
}

impl GgufStore {
    /// Opens `dir/model.gguf` when there is one.
    pub fn open(dir: &Path) -> Result<Option<Arc<Self>>> {
        let path = dir.join(STORE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let bad = |msg: String| Error::Weights(format!("{}: {msg}", path.display()));
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::new(file);
        let content =
            Content::read(&mut reader).map_err(|e| bad(format!("not a GGUF file: {e}")))?;
        let meta_str = |key: &str| -> Result<String> {
            match content.metadata.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(bad(format!(
                    "no string metadata {key:?}: not written by `idefics quantize`"
                ))),
            }
        };
        if meta_str("general.architecture")? != "idefics-rs" {
            return Err(bad("general.architecture is not \"idefics-rs\"".into()));
        }
        match content.metadata.get("idefics.format") {
            Some(Value::U32(FORMAT)) => {}
            other => {
                return Err(bad(format!(
                    "unsupported idefics.format {other:?} (expected {FORMAT})"
                )))
            }
        }
        let weights: QuantType = meta_str("idefics.quant")?.parse().map_err(bad)?;
        let vision = matches!(
            content.metadata.get("idefics.quant_vision"),
            Some(Value::Bool(true))
        );
        Ok(Some(Arc::new(Self {
            path,
            content,
            file: Mutex::new(reader),
            quant: QuantConfig { weights, vision },
            used: Mutex::new(BTreeSet::new()),
        })))
    }

    /// The quantization the file was made with.
    pub fn quant_config(&self) -> QuantConfig {
        self.quant
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The quant type of `name` when it is stored quantized.
    pub fn stored_quant_type(&self, name: &str) -> Option<QuantType> {
        self.stored_type(name).and_then(QuantType::from_ggml)
    }

    fn stored_type(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    pub(crate) fn read(&self, name: &str) -> candle_core::Result<QTensor> {
        self.used.lock().expect("poisoned").insert(name.to_string());
        let mut file = self.file.lock().expect("poisoned");
        self.content
            .tensor(&mut *file, name, &Device::Cpu)
            .map_err(|e| {
                candle_core::Error::Msg(format!("{}: tensor {name}: {e}", self.path.display()))
            })
    }

    /// Stored tensors no part of the model asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().expect("poisoned");
        let mut names: Vec<String> = self
            .content
            .tensor_infos
            .keys()
            .filter(|n| !used.contains(*n))
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// The tensors of a `model.gguf` for a `VarBuilder`: dense ones as tensors; quantized ones are set aside in
/// `pending` for their layer (which gets a placeholder meanwhile, see `super::streaming`).
pub struct GgufBackend {
    pub store: Arc<GgufStore>,
    pub pending: Pending,
}

impl GgufBackend {
    /// The stored blocks of `name` when it is stored quantized.
    pub fn quantized(&self, name: &str) -> candle_core::Result<Option<QWeight>> {
        match self.store.stored_type(name).and_then(QuantType::from_ggml) {
            Some(_) => Ok(Some(QWeight::from_qtensor(self.store.read(name)?)?)),
            None => Ok(None),
        }
    }
}

impl SimpleBackend for GgufBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let stored = match self.store.content.tensor_infos.get(name) {
            Some(info) => info.shape.dims().to_vec(),
            None => candle_core::bail!("{}: missing tensor {name}", self.store.path.display()),
        };
        if stored != s.dims() {
            candle_core::bail!(
                "{}: tensor {name} has shape {stored:?}, the config expects {:?}",
                self.store.path.display(),
                s.dims()
            );
        }
        if let Some(q) = self.quantized(name)? {
            self.pending
                .lock()
                .expect("poisoned")
                .insert(name.to_string(), q);
            return Tensor::zeros((), dtype, dev)?.broadcast_as(s);
        }
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !self.store.contains(name) {
            candle_core::bail!("{}: missing tensor {name}", self.store.path.display());
        }
        self.store.read(name)?.dequantize(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.contains(name)
    }
}

/// Collects every parameter of a model under its checkpoint name, as GGUF tensors.
struct Collect {
    tensors: Vec<(String, Arc<QTensor>)>,
}

impl Collect {
    fn dense(
        &mut self,
        name: String,
        t: &Tensor,
        shape: Option<&[usize]>,
    ) -> candle_core::Result<()> {
        let mut t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        if let Some(shape) = shape {
            t = t.reshape(shape)?;
        }
        let q = QTensor::quantize(&t, GgmlDType::F32)?;
        self.tensors.push((name, Arc::new(q)));
        Ok(())
    }
}

impl ParamVisitor for Collect {
    fn linear(&mut self, path: &str, layer: &mut Linear) -> candle_core::Result<()> {
        match layer.quantized() {
            Some(q) => self
                .tensors
                .push((format!("{path}.weight"), Arc::new(shared_qtensor(q)?))),
            None => self.dense(
                format!("{path}.weight"),
                layer.weight()?,
                layer.stored_shape(),
            )?,
        }
        if let Some(b) = layer.bias() {
            self.dense(format!("{path}.bias"), b, None)?;
        }
        Ok(())
    }

    fn tensor(&mut self, name: &str, tensor: &mut Tensor) -> candle_core::Result<()> {
        self.dense(name.to_string(), tensor, None)
    }

    fn quantized(&mut self, name: &str, weight: &QWeight) -> candle_core::Result<()> {
        self.tensors
            .push((name.to_string(), Arc::new(shared_qtensor(weight)?)));
        Ok(())
    }
}

/// A `QTensor` with the same blocks as `q` (candle's writer wants owned tensors; the bytes are copied once).
fn shared_qtensor(q: &QWeight) -> candle_core::Result<QTensor> {
    let t = q.qtensor();
    let storage = candle_core::quantized::QStorage::from_data(t.data()?, &Device::Cpu, t.dtype())?;
    QTensor::new(storage, t.shape().clone())
}

/// Writes `model` (loaded with `quant`) to `out_dir/model.gguf`, with `config.json` as its metadata, and copies
/// the other files a model directory needs (config, tokenizer, processor, chat template, generation config)
/// from `src_dir`. A tied head (`tied`) is not written: it is the embeddings.
pub fn save(
    model: &mut dyn VisitParams,
    quant: QuantConfig,
    tied: bool,
    src_dir: &Path,
    out_dir: &Path,
) -> Result<()> {
    let config_path = src_dir.join("config.json");
    let config = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut collect = Collect {
        tensors: Vec::new(),
    };
    model.visit_params("", &mut collect)?;
    let mut seen = BTreeSet::new();
    collect
        .tensors
        .retain(|(name, _)| !(tied && name == "lm_head.weight") && seen.insert(name.clone()));
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    for entry in std::fs::read_dir(src_dir).map_err(|e| Error::io(src_dir, e))? {
        let entry = entry.map_err(|e| Error::io(src_dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let keep = name.ends_with(".json") && !name.starts_with("model.safetensors")
            || name.ends_with(".jinja")
            || name == "tokenizer.model";
        if keep && entry.path().is_file() {
            let to = out_dir.join(&name);
            std::fs::copy(entry.path(), &to).map_err(|e| Error::io(&to, e))?;
        }
    }
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("idefics-rs".into())),
        ("idefics.format", Value::U32(FORMAT)),
        ("idefics.quant", Value::String(quant.weights.name().into())),
        ("idefics.quant_vision", Value::Bool(quant.vision)),
        ("idefics.config", Value::String(config)),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = collect
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_ref()))
        .collect();
    let path = out_dir.join(STORE_FILE);
    // Written beside, then renamed: an interrupted save never leaves a half file under the real name.
    let tmp = out_dir.join(format!("{STORE_FILE}.partial"));
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = std::io::BufWriter::new(file);
    gguf_file::write(&mut w, &metadata, &tensors)
        .map_err(|e| Error::Weights(format!("{}: writing GGUF: {e}", tmp.display())))?;
    use std::io::Write;
    w.flush().map_err(|e| Error::io(&tmp, e))?;
    drop(w);
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(())
}
