//! Quantization tensor by tensor, as the checkpoint is read.
//!
//! A `VarBuilder` backend in front of the checkpoint's: when a layer asks for a weight that is to be quantized,
//! the backend reads it, quantizes it at once and keeps the blocks aside, and hands the layer a placeholder of
//! the right shape that takes no memory (a broadcast scalar). Right after the layer is built, the model swaps
//! each placeholder for its blocks ([`PendingQuant`], through [`super::QuantizeLinears`]). So at most one tensor
//! is ever held in f32, and peak memory is the quantized model plus the largest tensor.
//!
//! A saved `model.gguf` goes the same way without quantizing: its stored blocks are kept aside as they are.

use super::{InSituQuantizer, QWeight, QuantReport, QuantSource, Role};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which checkpoint tensors are quantized, by name and shape.
#[derive(Debug, Clone, Copy)]
pub struct Selection {
    /// The vision tower's and connector's linear layers too.
    pub vision: bool,
}

impl Selection {
    /// The role of tensor `name` of shape `dims` when it is to be quantized, else `None`. Only the weights of
    /// linear layers (2-D `*.weight`), the token embeddings and the head are; the vision position embedding is
    /// a lookup table read row by row with index_select, so it stays dense.
    pub fn role(&self, name: &str, dims: &[usize]) -> Option<Role> {
        if dims.len() != 2 {
            return None;
        }
        match name {
            "model.text_model.embed_tokens.weight" => return Some(Role::Embedding),
            "lm_head.weight" => return Some(Role::Head),
            _ => {}
        }
        let linear = name.ends_with(".weight");
        if linear && name.starts_with("model.text_model.layers.") {
            return Some(Role::Layer);
        }
        let vision_side =
            name.starts_with("model.vision_model.") || name.starts_with("model.connector.");
        if self.vision && linear && vision_side && !name.contains("position_embedding") {
            return Some(Role::Layer);
        }
        None
    }
}

/// Quantized weights waiting for their layer, by checkpoint name.
pub type Pending = Arc<Mutex<HashMap<String, QWeight>>>;

/// A placeholder of `shape` that owns no memory.
fn placeholder(shape: &Shape, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

/// Quantizes the selected tensors of the dense backend `inner` as they are read.
pub struct QuantizingBackend {
    inner: Box<dyn SimpleBackend>,
    /// Reads the rows of the tensors to quantize a few MB at a time.
    checkpoint: Arc<crate::weights::Checkpoint>,
    selection: Selection,
    quantizer: Arc<Mutex<InSituQuantizer>>,
    pending: Pending,
}

impl QuantizingBackend {
    pub fn new(
        inner: Box<dyn SimpleBackend>,
        checkpoint: Arc<crate::weights::Checkpoint>,
        selection: Selection,
        quantizer: Arc<Mutex<InSituQuantizer>>,
        pending: Pending,
    ) -> Self {
        Self {
            inner,
            checkpoint,
            selection,
            quantizer,
            pending,
        }
    }
}

impl SimpleBackend for QuantizingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(role) = self.selection.role(name, s.dims()) else {
            return self.inner.get(s, name, h, dtype, dev);
        };
        let stored = self.checkpoint.info(name).map(|(_, shape)| shape.to_vec());
        if stored.as_deref() != Some(s.dims()) {
            // Missing or mis-shaped: the dense backend reports it in its words.
            return self.inner.get(s, name, h, dtype, dev);
        }
        let (out_dim, in_dim) = s.dims2()?;
        let mut quantizer = self.quantizer.lock().expect("poisoned");
        let Some(ty) = quantizer.choose(name, role, in_dim) else {
            return self.inner.get(s, name, h, dtype, dev);
        };
        self.checkpoint.mark_used(name);
        let q = QWeight::quantize_rows(out_dim, in_dim, ty, |start, n| {
            self.checkpoint
                .load_rows_f32(name, start, n)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        })?;
        quantizer.record(&q);
        self.pending
            .lock()
            .expect("poisoned")
            .insert(name.to_string(), q);
        placeholder(&s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Hands each layer the blocks its backend set aside (see the module docs).
pub struct PendingQuant {
    pending: Pending,
    /// The backend's quantizer (for its report), or `None` for stored blocks.
    quantizer: Option<Arc<Mutex<InSituQuantizer>>>,
    /// What was handed out (the report of stored blocks).
    taken: QuantReport,
}

impl PendingQuant {
    pub fn new(pending: Pending, quantizer: Option<Arc<Mutex<InSituQuantizer>>>) -> Self {
        Self {
            pending,
            quantizer,
            taken: QuantReport::default(),
        }
    }
}

impl QuantSource for PendingQuant {
    fn quantize(
        &mut self,
        name: &str,
        _dense: &Tensor,
        _role: Role,
    ) -> candle_core::Result<Option<QWeight>> {
        let q = self.pending.lock().expect("poisoned").remove(name);
        if let Some(q) = &q {
            self.taken.record(q.quant_type(), q);
        }
        Ok(q)
    }

    fn report(&self) -> QuantReport {
        match &self.quantizer {
            Some(q) => q.lock().expect("poisoned").report.clone(),
            None => self.taken.clone(),
        }
    }

    /// Names set aside but never taken by a layer (a selection bug: their placeholders would be zeros).
    fn unclaimed(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pending
            .lock()
            .expect("poisoned")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}
