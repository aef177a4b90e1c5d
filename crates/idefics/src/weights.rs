//! Checkpoint loading: single or sharded safetensors, read tensor by tensor.
//!
//! Why not `VarBuilder::from_mmaped_safetensors`: an mmap that has been read stays resident (it counts in the
//! process RSS) while the converted copies are alive too, so peak memory is ~2x the weights. Here every tensor
//! is read with one positioned read into a temporary buffer (the page cache is not process memory), converted to
//! the requested dtype and device, and the buffer dropped: peak RSS ~ weights + the largest tensor.
//!
//! Every problem (missing, unexpected, mis-shaped, non-float or truncated tensors, bad index) is one error line
//! naming the tensor and the file.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use rayon::prelude::*;
use safetensors::tensor::Metadata;
use safetensors::Dtype;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct TensorEntry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    offset: u64,
    len: usize,
}

/// The tensor index of a checkpoint directory; tensors are read on demand.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<PathBuf>,
    tensors: BTreeMap<String, TensorEntry>,
    used: Mutex<BTreeSet<String>>,
    first_error: Mutex<Option<String>>,
}

impl Checkpoint {
    /// Indexes `dir/model.safetensors.index.json` (sharded) or `dir/model.safetensors`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (files, weight_map) = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Weights(format!("{}: not valid JSON: {e}", index.display())))?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    Error::Weights(format!("{}: no \"weight_map\" object", index.display()))
                })?;
            let mut files: Vec<PathBuf> = Vec::new();
            let mut weight_map = BTreeMap::new();
            for (name, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    Error::Weights(format!(
                        "{}: weight_map[{name}] is not a file name",
                        index.display()
                    ))
                })?;
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(Error::Weights(format!(
                        "{}: weight_map[{name}] = {file:?} is not a plain file name",
                        index.display()
                    )));
                }
                let path = dir.join(file);
                let idx = match files.iter().position(|f| f == &path) {
                    Some(i) => i,
                    None => {
                        files.push(path);
                        files.len() - 1
                    }
                };
                weight_map.insert(name.clone(), idx);
            }
            (files, Some(weight_map))
        } else if single.exists() {
            (vec![single], None)
        } else {
            return Err(Error::Weights(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        let mut tensors = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            for (name, mut entry) in read_header(path)? {
                entry.file = i;
                if let Some(map) = &weight_map {
                    // A tensor the index assigns to another shard is a broken checkpoint, not a choice to make.
                    if map.get(&name).is_some_and(|&f| f != i) {
                        continue;
                    }
                }
                tensors.insert(name, entry);
            }
        }
        if let Some(map) = &weight_map {
            for (name, &f) in map {
                if !tensors.contains_key(name) {
                    return Err(Error::Weights(format!(
                        "index names tensor {name} in {} but that file does not contain it",
                        files[f].display()
                    )));
                }
            }
        }
        Ok(Self {
            files,
            tensors,
            used: Mutex::new(BTreeSet::new()),
            first_error: Mutex::new(None),
        })
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Stored dtype and shape of a tensor.
    pub fn info(&self, name: &str) -> Option<(DType, &[usize])> {
        self.tensors
            .get(name)
            .map(|e| (e.dtype, e.shape.as_slice()))
    }

    /// Total bytes the checkpoint's tensors take once converted to `dtype`.
    pub fn bytes_as(&self, dtype: DType) -> usize {
        self.tensors
            .values()
            .map(|e| e.shape.iter().product::<usize>() * dtype.size_in_bytes())
            .sum()
    }

    /// Reads one tensor (any stored float dtype) and converts it to `dtype` on `device`.
    pub fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            Error::Weights(format!(
                "missing tensor {name} (not in any checkpoint file)"
            ))
        })?;
        if dtype == DType::F32 && device.is_cpu() {
            let n = entry.shape.iter().product();
            let data = self.read_f32(name, entry, 0, n)?;
            return Ok(Tensor::from_vec(data, entry.shape.as_slice(), device)?);
        }
        let buf = self.read_bytes(name, entry, 0, entry.len)?;
        let t = Tensor::from_raw_buffer(&buf, entry.dtype, &entry.shape, device)?;
        drop(buf);
        Ok(t.to_dtype(dtype)?)
    }

    /// Rows `start..start + n` of a 2-D tensor, in f32: one positioned read of just those rows' bytes.
    pub fn load_rows_f32(&self, name: &str, start: usize, n: usize) -> Result<Vec<f32>> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            Error::Weights(format!(
                "missing tensor {name} (not in any checkpoint file)"
            ))
        })?;
        let (rows, cols) = match entry.shape.as_slice() {
            [r, c] => (*r, *c),
            other => {
                return Err(Error::Weights(format!(
                    "tensor {name}: {other:?} is not a matrix"
                )))
            }
        };
        if start + n > rows {
            return Err(Error::Weights(format!(
                "tensor {name}: rows {start}..{} of {rows}",
                start + n
            )));
        }
        self.read_f32(name, entry, start * cols, n * cols)
    }

    /// Elements `from..from + n` of tensor `name`, converted to f32 as they are read: positioned reads of
    /// [`READ_CHUNK`] elements on rayon's threads, each converted from the stored dtype straight into the result.
    /// Against reading the whole tensor, building a tensor of the stored dtype and converting it (candle's
    /// `to_dtype`, one thread), this touches no buffer of the tensor's size but the result.
    fn read_f32(&self, name: &str, entry: &TensorEntry, from: usize, n: usize) -> Result<Vec<f32>> {
        let path = &self.files[entry.file];
        let elem = entry.dtype.size_in_bytes();
        if (from + n) * elem > entry.len {
            return Err(Error::Weights(format!(
                "tensor {name}: elements {from}..{} of {}",
                from + n,
                entry.len / elem
            )));
        }
        let start = entry.offset + (from * elem) as u64;
        let mut out = vec![0f32; n];
        out.par_chunks_mut(READ_CHUNK)
            .enumerate()
            .try_for_each(|(i, dst)| {
                SCRATCH.with_borrow_mut(|bytes| {
                    bytes.resize(dst.len() * elem, 0);
                    let at = start + (i * READ_CHUNK * elem) as u64;
                    read_at(path, at, bytes).map_err(|e| {
                        Error::Weights(format!(
                            "tensor {name}: cannot read its data from {}: {e}",
                            path.display()
                        ))
                    })?;
                    convert_to_f32(entry.dtype, bytes, dst)
                        .map_err(|e| Error::Weights(format!("tensor {name}: {e}")))
                })
            })?;
        Ok(out)
    }

    /// `len` bytes of tensor `name`'s data from byte `from` of it: one positioned read.
    fn read_bytes(
        &self,
        name: &str,
        entry: &TensorEntry,
        from: usize,
        len: usize,
    ) -> Result<Vec<u8>> {
        let path = &self.files[entry.file];
        let mut buf = vec![0u8; len];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        f.seek(SeekFrom::Start(entry.offset + from as u64))
            .map_err(|e| Error::io(path, e))?;
        f.read_exact(&mut buf).map_err(|e| {
            Error::Weights(format!(
                "tensor {name}: cannot read its data from {}: {e}",
                path.display()
            ))
        })?;
        Ok(buf)
    }

    /// Marks a tensor as consumed by the model (for the unexpected-tensor check).
    pub fn mark_used(&self, name: &str) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
    }

    /// Tensors present in the checkpoint that nothing loaded (rotary `inv_freq` buffers of old checkpoints are
    /// ignored, as transformers does).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        self.tensors
            .keys()
            .filter(|n| !used.contains(*n) && !n.ends_with("rotary_emb.inv_freq"))
            .cloned()
            .collect()
    }

    /// The first error the backend reported while a model was being built (candle wraps it otherwise).
    pub fn take_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|mut e| e.take())
    }

    fn fail(&self, msg: String) -> candle_core::Error {
        if let Ok(mut first) = self.first_error.lock() {
            if first.is_none() {
                *first = Some(msg.clone());
            }
        }
        candle_core::Error::Msg(msg)
    }

    fn file_of(&self, name: &str) -> String {
        self.tensors
            .get(name)
            .map(|e| self.files[e.file].display().to_string())
            .unwrap_or_default()
    }
}

/// Elements per positioned read of [`Checkpoint::read_f32`]: 0.5-1 MB, long enough that a read's system call and
/// a task's dispatch are noise, small enough that a thread's scratch (kept for the process's life) stays in the
/// caches' reach and weighs little in a quantized model's peak RSS.
const READ_CHUNK: usize = 1 << 18;

thread_local! {
    /// Each thread's buffer for the stored bytes of one chunk, reused across chunks and tensors.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Fills `buf` from byte `at` of `path`. Each call opens the file, so that reads on several threads share no
/// file position.
fn read_at(path: &Path, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(buf)
}

/// Little-endian values of `dtype` in `bytes` to f32 in `dst` (as many as `dst` holds). bf16 is the top half of
/// an f32, so it converts exactly; f16 through `half`'s slice conversion (F16C where the CPU has it); f64 rounds.
fn convert_to_f32(dtype: DType, bytes: &[u8], dst: &mut [f32]) -> std::result::Result<(), String> {
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([s[0], s[1]])) << 16);
            }
        }
        DType::F16 => {
            use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
            let bits: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|s| u16::from_le_bytes([s[0], s[1]]))
                .collect();
            bits.reinterpret_cast::<half::f16>()
                .convert_to_f32_slice(dst);
        }
        DType::F64 => {
            for (d, s) in dst.iter_mut().zip(bytes.chunks_exact(8)) {
                let v = [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]];
                *d = f64::from_le_bytes(v) as f32;
            }
        }
        other => return Err(format!("cannot convert {other:?} to f32")),
    }
    Ok(())
}

/// `VarBuilder` backend over a shared [`Checkpoint`].
pub(crate) struct CheckpointBackend(pub std::sync::Arc<Checkpoint>);

impl SimpleBackend for CheckpointBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let ck = &self.0;
        match ck.tensors.get(name) {
            None => {
                return Err(ck.fail(format!(
                    "missing tensor {name} (not in any checkpoint file)"
                )))
            }
            Some(e) if e.shape.as_slice() != s.dims() => {
                return Err(ck.fail(format!(
                    "tensor {name} in {} has shape {:?}, the config expects {:?}",
                    ck.file_of(name),
                    e.shape,
                    s.dims()
                )))
            }
            Some(_) => {}
        }
        self.get_unchecked(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let ck = &self.0;
        ck.mark_used(name);
        ck.load(name, dtype, dev)
            .map_err(|e| ck.fail(e.to_string().trim_start_matches("weights: ").to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

/// Reads the safetensors header of `path` (`u64 LE header length`, JSON header, data) with the `safetensors`
/// crate, which validates the header (offsets contiguous, byte sizes matching dtype and shape). Only the header
/// is read, not the file: the crate's `SafeTensors::read_metadata` wants the whole file in one buffer, so the
/// header bytes are deserialised into its `Metadata` directly. Then checks what the crate cannot without the
/// data: float dtypes only, and every tensor's bytes inside the file (catches truncated downloads).
fn read_header(path: &Path) -> Result<HashMap<String, TensorEntry>> {
    let bad = |msg: String| Error::Weights(format!("{}: {msg}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(|_| {
        bad(format!(
            "truncated or not a safetensors file ({file_len} bytes)"
        ))
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    // The crate's own bound on the header size (`MAX_HEADER_SIZE` in safetensors/src/tensor.rs).
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(bad(format!(
            "truncated or not a safetensors file (header of {header_len} bytes, file of {file_len} bytes)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read header: {e}")))?;
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;
    let mut out = HashMap::new();
    for (name, info) in metadata.tensors() {
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(bad(format!(
                    "tensor {name} has dtype {other:?}, expected a float dtype (F32, BF16 or F16)"
                )))
            }
        };
        let (begin, end) = info.data_offsets;
        if end as u64 > data_len {
            return Err(bad(format!(
                "truncated: tensor {name} needs bytes up to {end} but the file has only {data_len} data bytes"
            )));
        }
        out.insert(
            name,
            TensorEntry {
                file: 0,
                dtype,
                shape: info.shape.clone(),
                offset: data_start + begin as u64,
                len: end - begin,
            },
        );
    }
    Ok(out)
}

/// Parses a torch-style dtype name (`float32`, `f32`, `bfloat16`, `bf16`, `float16`, `f16`).
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "f64" | "float64" => Ok(DType::F64),
        other => Err(Error::Config(format!(
            "dtype \"{other}\" is not supported (f32, bf16, f16)"
        ))),
    }
}

/// Peak resident memory of this process (`VmHWM` in /proc/self/status), in bytes; `None` off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident memory of this process (`VmRSS`), in bytes; `None` off Linux.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn proc_status_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Where a model's weights come from when it loads: the safetensors checkpoint (quantized tensor by tensor as
/// it is read, when the load options ask for it) or a `model.gguf` saved by `idefics quantize` (see
/// `crate::quant::store` and `crate::quant::streaming`).
pub struct ModelWeights {
    /// Reads the dense tensors (and sets the quantized ones aside for `quant`).
    pub vb: candle_nn::VarBuilder<'static>,
    /// Supplies the quantized weights; `None` = a dense model.
    pub quant: Option<Box<dyn crate::quant::QuantSource>>,
    /// Whether the vision tower and connector are quantized too.
    pub quant_vision: bool,
    /// The quantization asked for or stored.
    pub quant_config: Option<crate::quant::QuantConfig>,
    origin: Origin,
}

enum Origin {
    Safetensors(std::sync::Arc<Checkpoint>),
    Gguf(std::sync::Arc<crate::quant::store::GgufStore>),
}

impl ModelWeights {
    /// Opens the weights of `dir` for `dtype` on `device`, quantized as `quant` asks. A directory with a saved
    /// `model.gguf` loads it (its own quantization; asking for a different one is an error).
    pub fn open(
        dir: &Path,
        dtype: DType,
        device: &Device,
        quant: Option<crate::quant::QuantConfig>,
    ) -> Result<Self> {
        use crate::quant::store::{GgufBackend, GgufStore};
        use crate::quant::streaming::{PendingQuant, QuantizingBackend, Selection};
        use crate::quant::InSituQuantizer;
        use std::sync::{Arc, Mutex};
        let cpu_only = || Error::Weights("quantized models run on the CPU only".to_string());
        let pending: crate::quant::streaming::Pending = Default::default();
        if let Some(store) = GgufStore::open(dir)? {
            let saved = store.quant_config();
            if let Some(asked) = quant {
                if asked != saved {
                    let vision = |v: bool| if v { " with the vision tower" } else { "" };
                    return Err(Error::Weights(format!(
                        "{} holds a model quantized as {}{}; it cannot be loaded as {}{} (quantize the original \
                         checkpoint instead)",
                        store.path().display(),
                        saved.weights,
                        vision(saved.vision),
                        asked.weights,
                        vision(asked.vision),
                    )));
                }
            }
            if !matches!(device, Device::Cpu) {
                return Err(cpu_only());
            }
            let backend = GgufBackend {
                store: store.clone(),
                pending: pending.clone(),
            };
            let vb = candle_nn::VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
            return Ok(Self {
                vb,
                quant: Some(Box::new(PendingQuant::new(pending, None))),
                quant_vision: saved.vision,
                quant_config: Some(saved),
                origin: Origin::Gguf(store),
            });
        }
        if quant.is_some() && !matches!(device, Device::Cpu) {
            return Err(cpu_only());
        }
        let ck = Arc::new(Checkpoint::open(dir)?);
        let dense: Box<dyn SimpleBackend> = Box::new(CheckpointBackend(ck.clone()));
        let (backend, source): (
            Box<dyn SimpleBackend>,
            Option<Box<dyn crate::quant::QuantSource>>,
        ) = match quant {
            Some(q) => {
                let quantizer = Arc::new(Mutex::new(InSituQuantizer::new(q.weights)));
                let selection = Selection { vision: q.vision };
                let backend = QuantizingBackend::new(
                    dense,
                    ck.clone(),
                    selection,
                    quantizer.clone(),
                    pending.clone(),
                );
                (
                    Box::new(backend),
                    Some(Box::new(PendingQuant::new(pending, Some(quantizer)))),
                )
            }
            None => (dense, None),
        };
        let vb = candle_nn::VarBuilder::from_backend(backend, dtype, device.clone());
        Ok(Self {
            vb,
            quant: source,
            quant_vision: quant.is_some_and(|q| q.vision),
            quant_config: quant,
            origin: Origin::Safetensors(ck),
        })
    }

    /// The quantized-weight source for a model build.
    pub fn source(&mut self) -> Option<&mut dyn crate::quant::QuantSource> {
        match &mut self.quant {
            Some(q) => Some(q.as_mut()),
            None => None,
        }
    }

    /// The one-line cause of a failed model build (the backend's first error, which candle would wrap).
    pub fn explain(&self, e: Error) -> Error {
        match &self.origin {
            Origin::Safetensors(ck) => ck.take_error().map(Error::Weights).unwrap_or(e),
            Origin::Gguf(_) => e,
        }
    }

    /// Whether the weights hold tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        match &self.origin {
            Origin::Safetensors(ck) => ck.info(name).is_some(),
            Origin::Gguf(_) => self.vb.contains_tensor(name),
        }
    }

    /// Tensor `name` dense (dequantized if stored quantized), bypassing the quantization of the `VarBuilder`.
    pub fn read_dense(&self, name: &str, dtype: DType) -> Result<Tensor> {
        match &self.origin {
            Origin::Safetensors(ck) => {
                ck.mark_used(name);
                ck.load(name, dtype, &Device::Cpu)
            }
            Origin::Gguf(store) => Ok(store
                .read(name)?
                .dequantize(&Device::Cpu)?
                .to_dtype(dtype)?),
        }
    }

    /// An output head read from `name` outside the model build (Idefics3's tie check): quantized as the
    /// weights ask (the stored blocks of a `model.gguf`).
    pub fn separate_head(&self, name: &str, dense: Tensor) -> Result<crate::nn::Linear> {
        use crate::quant::{InSituQuantizer, QWeight, QuantSource, Role};
        if let Origin::Gguf(store) = &self.origin {
            if store.stored_quant_type(name).is_some() {
                let q = QWeight::from_qtensor(store.read(name)?)?;
                return Ok(crate::nn::Linear::from_quantized(q, None));
            }
            return Ok(crate::nn::Linear::new(dense, None));
        }
        if let Some(q) = self.quant_config {
            if let Some(w) = InSituQuantizer::new(q.weights).quantize(name, &dense, Role::Head)? {
                return Ok(crate::nn::Linear::from_quantized(w, None));
            }
        }
        Ok(crate::nn::Linear::new(dense, None))
    }

    /// Counts `name` as used (a tied head stored anyway).
    pub fn mark_used(&self, name: &str) {
        if let Origin::Safetensors(ck) = &self.origin {
            ck.mark_used(name)
        }
    }

    /// Fails when a stored tensor was not used by the model (`family` names the expected architecture), or
    /// when a quantized weight was prepared for a layer that never took it.
    pub fn check_all_used(&self, family: &str) -> Result<()> {
        if let Some(name) = self
            .quant
            .as_ref()
            .and_then(|q| q.unclaimed().into_iter().next())
        {
            return Err(Error::Weights(format!(
                "tensor {name} was quantized but no layer of the model took it"
            )));
        }
        let (unused, file) = match &self.origin {
            Origin::Safetensors(ck) => (ck.unused(), "checkpoint"),
            Origin::Gguf(store) => (store.unused(), "model.gguf"),
        };
        match unused.first() {
            Some(first) => Err(Error::Weights(format!(
                "unexpected tensor {first} in the {file} ({} unexpected in all); is this an {family} checkpoint \
                 matching config.json?",
                unused.len()
            ))),
            None => Ok(()),
        }
    }

    /// What was quantized (None for a dense model).
    pub fn quant_report(&self) -> Option<crate::quant::QuantReport> {
        self.quant.as_ref().map(|q| q.report())
    }
}
