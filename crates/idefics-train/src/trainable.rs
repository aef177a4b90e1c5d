//! What trains: per component of the model (vision tower, modality projection, perceiver, text decoder, token
//! embeddings, lm head) frozen, full, LoRA or DoRA, applied to the model's own layers (no fork of the model).
//!
//! - full: every tensor of the component becomes an f32 `Var`; linear layers stay plain matmuls.
//! - frozen: tensors are detached; linear layers go through [`FrozenLinear`], whose backward gives only the
//!   input gradient, so no full-size gradient of a frozen weight is ever computed or stored (candle's matmul
//!   backward would do both: it computes `grad_rhs` for every matmul whatever the rhs).
//! - lora / dora: the component's linear layers (those the target selector picks; by default all of them but
//!   the conv patch embedding) get a peft-compatible adapter over a frozen base; its other tensors are frozen.
//!
//! - on a quantized model (QLoRA: `LoadOptions::quant`), a quantized linear layer stays in its blocks as the
//!   frozen base (frozen, or under a LoRA / DoRA adapter in f32); a quantized layer or embedding table cannot
//!   train fully, and a plan that asks for it is refused.
//!
//! Trainable names: checkpoint names for full tensors (`model.text_model.norm.weight`), peft keys for adapter
//! tensors (`base_model.model.<path>.lora_A.weight`), so optimizer state and checkpoints read like the files
//! others write.

use super::adapters::{AdaptedLinear, AdapterHook, LoraSettings, TrainMode};
use super::frozen::FrozenLinear;
use super::peft::{ModuleSelector, PeftAdapter, PeftLoraConfig, PEFT_KEY_PREFIX};
use super::TrainError;
use candle_core::{DType, Tensor, Var};
use idefics::model::{Component, VlmModel};
use idefics::nn::{Linear, ParamVisitor, VisitParams};
use idefics::quant::QWeight;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How one component trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tuning {
    #[default]
    Frozen,
    Full,
    Lora,
    Dora,
}

impl Tuning {
    fn is_adapter(self) -> bool {
        matches!(self, Tuning::Lora | Tuning::Dora)
    }
}

/// `[trainable]` of a recipe: one [`Tuning`] per component (all frozen by default).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainablePlan {
    #[serde(default)]
    pub vision: Tuning,
    #[serde(default)]
    pub projection: Tuning,
    #[serde(default)]
    pub perceiver: Tuning,
    #[serde(default)]
    pub text: Tuning,
    #[serde(default)]
    pub embeddings: Tuning,
    #[serde(default)]
    pub lm_head: Tuning,
}

impl TrainablePlan {
    pub fn tuning(&self, c: Component) -> Tuning {
        match c {
            Component::Vision => self.vision,
            Component::Projection => self.projection,
            Component::Perceiver => self.perceiver,
            Component::Text => self.text,
            Component::Embeddings => self.embeddings,
            Component::LmHead => self.lm_head,
        }
    }

    /// The adapter kind of the plan (peft has one `use_dora` per adapter, so LoRA and DoRA cannot be mixed).
    fn adapter_kind(&self) -> Result<Option<Tuning>, TrainError> {
        let all = [
            self.vision,
            self.projection,
            self.perceiver,
            self.text,
            self.embeddings,
            self.lm_head,
        ];
        let has = |t: Tuning| all.contains(&t);
        match (has(Tuning::Lora), has(Tuning::Dora)) {
            (true, true) => Err(TrainError::Invalid(
                "[trainable] mixes lora and dora: one adapter has one kind (peft's use_dora); pick one".into(),
            )),
            (true, false) => Ok(Some(Tuning::Lora)),
            (false, true) => Ok(Some(Tuning::Dora)),
            (false, false) => Ok(None),
        }
    }
}

/// `[lora]` of a recipe: peft `LoraConfig` fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterSpec {
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub dropout: f32,
    #[serde(default)]
    pub use_rslora: bool,
    /// Which linear layers of the lora/dora components get an adapter (peft's rule: names match a module path
    /// equal to them or ending in `.name`; a string is a full-match regex). Default: all of them.
    #[serde(default)]
    pub target_modules: Option<ModuleSelector>,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}

impl Default for AdapterSpec {
    fn default() -> Self {
        Self {
            r: default_r(),
            alpha: default_alpha(),
            dropout: 0.0,
            use_rslora: false,
            target_modules: None,
        }
    }
}

/// A model prepared for training, with its trainable variables.
pub struct TrainableModel {
    model: VlmModel,
    plan: TrainablePlan,
    /// (name, var) of everything the optimizer updates, in a stable order.
    params: Vec<(String, Var)>,
    /// Checkpoint names of the fully trained tensors.
    full_names: Vec<String>,
    peft_config: Option<PeftLoraConfig>,
    mode: TrainMode,
}

/// How [`TrainableModel`] builds adapters: fresh (seeded) or from saved tensors.
enum AdapterSource<'a, R: Rng + ?Sized> {
    Fresh(&'a mut R),
    Saved(&'a PeftAdapter),
}

impl TrainableModel {
    /// Applies `plan` to `model` (loaded in f32), with fresh adapters initialised from `rng` as peft does.
    pub fn new<R: Rng + ?Sized>(
        model: impl Into<VlmModel>,
        plan: &TrainablePlan,
        spec: &AdapterSpec,
        rng: &mut R,
    ) -> Result<Self, TrainError> {
        let peft_config = peft_config_for(plan, spec)?;
        Self::build(model.into(), plan, peft_config, AdapterSource::Fresh(rng))
    }

    /// Applies `plan`, taking the adapter tensors from a saved peft adapter (resume, or continuing training).
    pub fn with_adapter(
        model: impl Into<VlmModel>,
        plan: &TrainablePlan,
        adapter: &PeftAdapter,
    ) -> Result<Self, TrainError> {
        let want = plan.adapter_kind()?;
        let have = if adapter.config.use_dora {
            Tuning::Dora
        } else {
            Tuning::Lora
        };
        if want != Some(have) {
            return Err(TrainError::Invalid(format!(
                "the saved adapter is {have:?} but [trainable] asks for {want:?}"
            )));
        }
        Self::build::<rand::rngs::StdRng>(
            model.into(),
            plan,
            Some(adapter.config.clone()),
            AdapterSource::Saved(adapter),
        )
    }

    fn build<R: Rng + ?Sized>(
        mut model: VlmModel,
        plan: &TrainablePlan,
        peft_config: Option<PeftLoraConfig>,
        adapters: AdapterSource<'_, R>,
    ) -> Result<Self, TrainError> {
        if model.dtype() != DType::F32 {
            return Err(TrainError::Invalid(format!(
                "training needs the model loaded in f32 (got {:?}); f32 master weights, no mixed precision yet",
                model.dtype()
            )));
        }
        if matches!(model, VlmModel::Idefics3(_)) && plan.perceiver != Tuning::Frozen {
            return Err(TrainError::Invalid(format!(
                "[trainable] perceiver = {:?}, but this {} checkpoint has no perceiver resampler (its connector is \
                 pixel shuffle + `projection`); set perceiver = \"frozen\"",
                plan.perceiver,
                model.family().model_type()
            )));
        }
        let tied = model.is_tied();
        if tied && plan.lm_head != Tuning::Frozen && plan.lm_head != plan.embeddings {
            return Err(TrainError::Invalid(format!(
                "the lm head is tied to the embeddings (tie_word_embeddings); set lm_head = embeddings \
                 (got lm_head = {:?}, embeddings = {:?})",
                plan.lm_head, plan.embeddings
            )));
        }
        let mode = TrainMode::default();
        let selector = peft_config.clone();
        let mut visitor = Converter {
            plan: plan.clone(),
            tied,
            peft_config: selector.as_ref(),
            adapters,
            mode: mode.clone(),
            params: Vec::new(),
            full_names: Vec::new(),
            error: None,
        };
        let result = model.visit_params("", &mut visitor);
        if let Some(e) = visitor.error.take() {
            return Err(e);
        }
        result?;
        if let AdapterSource::Saved(adapter) = &visitor.adapters {
            let adapted: Vec<&str> = visitor
                .params
                .iter()
                .filter_map(|(n, _)| n.strip_prefix(PEFT_KEY_PREFIX))
                .filter_map(|n| n.strip_suffix(".lora_A.weight"))
                .collect();
            let missing = adapter.modules_missing_from(adapted);
            if let Some(first) = missing.first() {
                return Err(TrainError::Invalid(format!(
                    "the saved adapter has module {first} ({} in all) that this plan does not adapt",
                    missing.len()
                )));
            }
        }
        let adapted_paths: Vec<String> = visitor
            .params
            .iter()
            .filter_map(|(n, _)| n.strip_prefix(PEFT_KEY_PREFIX))
            .filter_map(|n| n.strip_suffix(".lora_A.weight"))
            .map(str::to_string)
            .collect();
        let mut peft_config = peft_config;
        if let Some(cfg) = &mut peft_config {
            if adapted_paths.is_empty() {
                return Err(TrainError::Invalid(
                    "[lora] target_modules matches no linear layer of the lora/dora components"
                        .into(),
                ));
            }
            cfg.target_modules = Some(ModuleSelector::Names(adapted_paths));
        }
        if visitor.params.is_empty() {
            return Err(TrainError::Invalid(
                "nothing trains: every component in [trainable] is frozen".into(),
            ));
        }
        Ok(Self {
            model,
            plan: plan.clone(),
            params: visitor.params,
            full_names: visitor.full_names,
            peft_config,
            mode,
        })
    }

    pub fn model(&self) -> &VlmModel {
        &self.model
    }

    pub fn plan(&self) -> &TrainablePlan {
        &self.plan
    }

    /// Everything the optimizer updates: `(name, var)`.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Number of trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Switches adapter dropout on (training) or off (evaluation).
    pub fn set_training(&self, training: bool) {
        self.mode.set(training)
    }

    /// The fully trained tensors under their checkpoint names (detached).
    pub fn full_tensors(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .filter(|(n, _)| self.full_names.contains(n))
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Loads fully trained tensors saved by [`Self::full_tensors`] (resume). Every one must be present.
    pub fn load_full_tensors(&self, saved: &HashMap<String, Tensor>) -> Result<(), TrainError> {
        for (name, var) in &self.params {
            if !self.full_names.contains(name) {
                continue;
            }
            let t = saved.get(name).ok_or_else(|| {
                TrainError::Invalid(format!("the checkpoint has no tensor {name}"))
            })?;
            if t.dims() != var.dims() {
                return Err(TrainError::Invalid(format!(
                    "checkpoint tensor {name} has shape {:?}, the model has {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// The current adapter in peft's form (`None` when nothing is LoRA / DoRA).
    pub fn peft_adapter(&self) -> Result<Option<PeftAdapter>, TrainError> {
        let Some(config) = &self.peft_config else {
            return Ok(None);
        };
        let mut collector = LayerCollector::default();
        self.model.clone().visit_params("", &mut collector)?;
        let layers = collector
            .layers
            .iter()
            .map(|(p, l)| (p.as_str(), l))
            .collect::<Vec<_>>();
        Ok(Some(PeftAdapter::from_layers(config.clone(), layers)?))
    }

    /// Every weight under its checkpoint name, adapters merged, in f32 (as peft's `merge_and_unload` then
    /// `save_pretrained`): a full Hugging Face state dict. A tied head is not written (transformers re-ties it).
    pub fn merged_state_dict(&self) -> Result<BTreeMap<String, Tensor>, TrainError> {
        merged_state_dict(&self.model, self.model.is_tied())
    }
}

/// The state dict of any model (plain or converted), adapters merged, f32.
pub fn merged_state_dict(
    model: &VlmModel,
    skip_tied_head: bool,
) -> Result<BTreeMap<String, Tensor>, TrainError> {
    let mut collector = StateDictCollector {
        out: BTreeMap::new(),
        skip_tied_head,
    };
    model.clone().visit_params("", &mut collector)?;
    Ok(collector.out)
}

/// The peft config of a plan, or `None` when no component is LoRA / DoRA.
fn peft_config_for(
    plan: &TrainablePlan,
    spec: &AdapterSpec,
) -> Result<Option<PeftLoraConfig>, TrainError> {
    let Some(kind) = plan.adapter_kind()? else {
        return Ok(None);
    };
    if spec.r == 0 {
        return Err(TrainError::Invalid("[lora] r must be at least 1".into()));
    }
    let settings = LoraSettings {
        r: spec.r,
        alpha: spec.alpha,
        use_rslora: spec.use_rslora,
        use_dora: kind == Tuning::Dora,
        dropout: spec.dropout,
    };
    if plan.embeddings.is_adapter() {
        return Err(TrainError::Invalid(
            "embeddings = lora/dora is not supported (peft's embedding LoRA has another layout); use full or frozen"
                .into(),
        ));
    }
    // Within the lora/dora components, the user's selector (default: every linear layer) picks the layers. Once
    // the model is converted, `target_modules` is rewritten as the exact list of adapted module paths, so that
    // peft adapts exactly the same layers when it loads the file.
    let target = spec
        .target_modules
        .clone()
        .unwrap_or_else(|| ModuleSelector::Regex(".*".into()));
    let config = PeftLoraConfig::new(&settings, target);
    config.validate()?;
    Ok(Some(config))
}

/// Converts every parameter per the plan.
struct Converter<'a, R: Rng + ?Sized> {
    plan: TrainablePlan,
    tied: bool,
    peft_config: Option<&'a PeftLoraConfig>,
    adapters: AdapterSource<'a, R>,
    mode: TrainMode,
    params: Vec<(String, Var)>,
    full_names: Vec<String>,
    error: Option<TrainError>,
}

impl<R: Rng + ?Sized> Converter<'_, R> {
    fn tuning(&self, path: &str) -> Tuning {
        Component::of(path)
            .map(|c| self.plan.tuning(c))
            .unwrap_or_default()
    }

    fn make_var(&mut self, name: String, t: &Tensor) -> candle_core::Result<Tensor> {
        let var = Var::from_tensor(&t.detach().to_dtype(DType::F32)?)?;
        let tensor = var.as_tensor().clone();
        self.full_names.push(name.clone());
        self.params.push((name, var));
        Ok(tensor)
    }

    fn wants_adapter(&self, path: &str, layer: &Linear) -> Result<bool, TrainError> {
        if layer.stored_shape().is_some() || !self.tuning(path).is_adapter() {
            return Ok(false); // the conv patch embedding stays frozen, as in peft's all-linear
        }
        match self.peft_config {
            Some(cfg) => cfg.targets(path),
            None => Ok(false),
        }
    }

    fn convert_linear(&mut self, path: &str, layer: &mut Linear) -> Result<(), TrainError> {
        let tuning = self.tuning(path);
        if path == "lm_head" && self.tied {
            // The tied head's weight is the embedding tensor the visit just converted.
            if self.plan.embeddings == Tuning::Full {
                return Ok(());
            }
        } else if tuning == Tuning::Full {
            if let Some(q) = layer.quantized() {
                return Err(refuse_full_on_quantized(&format!("{path}.weight"), q));
            }
            let w = self.make_var(format!("{path}.weight"), layer.weight()?)?;
            let b = match layer.bias().cloned() {
                Some(b) => Some(self.make_var(format!("{path}.bias"), &b)?),
                None => None,
            };
            layer.set_dense(w, b);
            return Ok(());
        }
        let bias = layer.bias().map(|b| b.detach());
        let base = match layer.quantized() {
            Some(q) => FrozenLinear::quantized(q.clone(), bias)?,
            None => FrozenLinear::new(layer.weight()?.detach(), bias)?,
        };
        let adapted = if self.wants_adapter(path, layer)? {
            let a = match &mut self.adapters {
                AdapterSource::Fresh(rng) => {
                    let settings = self
                        .peft_config
                        .ok_or_else(|| TrainError::Invalid("no adapter config".into()))?
                        .settings_for(path)?;
                    AdaptedLinear::init(base, &settings, *rng)?
                }
                AdapterSource::Saved(adapter) => adapter.adapt(path, base)?,
            };
            for (suffix, var) in a.trainable_vars() {
                self.params
                    .push((format!("{PEFT_KEY_PREFIX}{path}.{suffix}"), var.clone()));
            }
            a
        } else {
            AdaptedLinear::Frozen(base)
        };
        layer.set_hook(Arc::new(AdapterHook {
            layer: adapted,
            mode: self.mode.clone(),
        }));
        Ok(())
    }
}

impl<R: Rng + ?Sized> ParamVisitor for Converter<'_, R> {
    fn linear(&mut self, path: &str, layer: &mut Linear) -> candle_core::Result<()> {
        if let Err(e) = self.convert_linear(path, layer) {
            let msg = e.to_string();
            self.error = Some(e);
            candle_core::bail!("{msg}");
        }
        Ok(())
    }

    fn quantized(&mut self, name: &str, weight: &QWeight) -> candle_core::Result<()> {
        // A quantized embedding table stays frozen in its blocks (its looked-up rows carry no gradient).
        if self.tuning(name) == Tuning::Full {
            let e = refuse_full_on_quantized(name, weight);
            let msg = e.to_string();
            self.error = Some(e);
            candle_core::bail!("{msg}");
        }
        Ok(())
    }

    fn tensor(&mut self, name: &str, tensor: &mut Tensor) -> candle_core::Result<()> {
        *tensor = if self.tuning(name) == Tuning::Full {
            self.make_var(name.to_string(), tensor)?
        } else {
            tensor.detach()
        };
        Ok(())
    }
}

/// The error for a plan that trains a quantized tensor fully.
fn refuse_full_on_quantized(name: &str, weight: &QWeight) -> TrainError {
    TrainError::Invalid(format!(
        "{name} is quantized ({}): full fine-tuning needs dense weights; on a quantized base train adapters \
         (lora / dora) or keep the component frozen, or load the model without quantization",
        weight.quant_type()
    ))
}

/// Collects the adapted layers by module path.
#[derive(Default)]
struct LayerCollector {
    layers: Vec<(String, AdaptedLinear)>,
}

impl ParamVisitor for LayerCollector {
    fn linear(&mut self, path: &str, layer: &mut Linear) -> candle_core::Result<()> {
        if let Some(a) = AdapterHook::of(layer) {
            self.layers.push((path.to_string(), a.clone()));
        }
        Ok(())
    }
    fn tensor(&mut self, _: &str, _: &mut Tensor) -> candle_core::Result<()> {
        Ok(())
    }
}

/// Collects merged f32 weights under checkpoint names.
struct StateDictCollector {
    out: BTreeMap<String, Tensor>,
    skip_tied_head: bool,
}

impl ParamVisitor for StateDictCollector {
    fn linear(&mut self, path: &str, layer: &mut Linear) -> candle_core::Result<()> {
        if path == "lm_head" && self.skip_tied_head {
            return Ok(());
        }
        let mut w = layer.merged_weight_f32()?;
        if let Some(shape) = layer.stored_shape() {
            w = w.reshape(shape)?;
        }
        self.out.insert(format!("{path}.weight"), w);
        if let Some(b) = layer.bias() {
            self.out
                .insert(format!("{path}.bias"), b.detach().to_dtype(DType::F32)?);
        }
        Ok(())
    }
    fn tensor(&mut self, name: &str, tensor: &mut Tensor) -> candle_core::Result<()> {
        self.out
            .insert(name.to_string(), tensor.detach().to_dtype(DType::F32)?);
        Ok(())
    }
    fn quantized(&mut self, name: &str, weight: &QWeight) -> candle_core::Result<()> {
        self.out.insert(name.to_string(), weight.dequantize()?);
        Ok(())
    }
}
