//! PEFT adapter files: `adapter_config.json` + `adapter_model.safetensors` as peft 0.21 writes them.
//!
//! Tensor keys are `base_model.model.<module path>.lora_A.weight`, `.lora_B.weight` and, for DoRA,
//! `.lora_magnitude_vector` (peft strips the adapter name and, for the magnitude, the `.weight`).
//! Target matching follows peft's `check_target_module_exists`: a string is a regex that must match
//! the whole module path, a list matches a module path equal to an entry or ending in `.<entry>`;
//! `exclude_modules` works the same way and wins. `rank_pattern` / `alpha_pattern` keys match as in
//! peft's `get_pattern_key` (`(.*\.)?(key)$`).

use super::atomic::atomic_write;
use super::TrainError;
use crate::adapters::{AdaptedLinear, LoraSettings};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// File names peft uses.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix peft puts before every module path in the adapter file.
pub const PEFT_KEY_PREFIX: &str = "base_model.model.";

/// `target_modules` / `exclude_modules`: a list of names or one regex.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModuleSelector {
    Names(Vec<String>),
    Regex(String),
}

impl ModuleSelector {
    /// peft's rule: regex full match, or exact name, or `.<name>` suffix. `"all-linear"` means every
    /// linear layer but the output head (peft `_maybe_include_all_linear_layers`); callers only ask
    /// about linear layers.
    fn matches(&self, module_path: &str) -> Result<bool, TrainError> {
        Ok(match self {
            Self::Regex(pattern) if pattern == "all-linear" => {
                module_path != "lm_head" && !module_path.ends_with(".lm_head")
            }
            Self::Regex(pattern) => full_regex(pattern)?.is_match(module_path),
            Self::Names(names) => names
                .iter()
                .any(|n| module_path == n || module_path.ends_with(&format!(".{n}"))),
        })
    }
}

fn full_regex(pattern: &str) -> Result<regex::Regex, TrainError> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| TrainError::Invalid(format!("target_modules regex {pattern:?}: {e}")))
}

/// The fields of peft's `LoraConfig` we act on; every other field is kept in `extra` and written back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeftLoraConfig {
    pub peft_type: String,
    pub r: usize,
    #[serde(serialize_with = "serialize_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f32,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    pub target_modules: Option<ModuleSelector>,
    #[serde(default)]
    pub exclude_modules: Option<ModuleSelector>,
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    #[serde(default = "default_bias")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub lora_bias: bool,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// peft types `lora_alpha` as an int: write `16`, not `16.0`, when it is integral.
fn serialize_alpha<S: serde::Serializer>(alpha: &f64, s: S) -> Result<S::Ok, S::Error> {
    if alpha.fract() == 0.0 && alpha.abs() < 1e15 {
        s.serialize_i64(*alpha as i64)
    } else {
        s.serialize_f64(*alpha)
    }
}

fn default_bias() -> String {
    "none".into()
}

impl PeftLoraConfig {
    /// A config as `LoraConfig(r, lora_alpha, target_modules, use_dora, ...)` would save it, with peft
    /// 0.21.2's other fields at their defaults.
    pub fn new(settings: &LoraSettings, target_modules: ModuleSelector) -> Self {
        let defaults = serde_json::json!({
            "alora_invocation_tokens": null, "arrow_config": null, "auto_mapping": null,
            "corda_config": null, "ensure_weight_tying": false, "eva_config": null,
            "inference_mode": true, "init_lora_weights": true, "kasa_config": null,
            "layer_replication": null, "layers_pattern": null, "layers_to_transform": null,
            "loftq_config": {}, "lora_ga_config": null, "megatron_config": null,
            "megatron_core": "megatron.core", "monteclora_config": null, "peft_version": "0.21.2",
            "qalora_group_size": 16, "revision": null, "target_parameters": null, "task_type": null,
            "trainable_token_indices": null, "use_bdlora": null, "use_qalora": false,
            "velora_config": null
        });
        let extra = match defaults {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Self {
            peft_type: "LORA".into(),
            r: settings.r,
            lora_alpha: settings.alpha,
            lora_dropout: settings.dropout,
            use_rslora: settings.use_rslora,
            use_dora: settings.use_dora,
            target_modules: Some(target_modules),
            exclude_modules: None,
            modules_to_save: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            bias: "none".into(),
            fan_in_fan_out: false,
            lora_bias: false,
            base_model_name_or_path: None,
            extra,
        }
    }

    /// Refuses configs whose math we do not implement, naming the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, why: &str| {
            Err(TrainError::Invalid(format!(
                "adapter_config.json: {field} {why}"
            )))
        };
        if self.peft_type != "LORA" {
            return bad(
                "peft_type",
                &format!(
                    "is {:?}; only LORA (incl. DoRA) is supported",
                    self.peft_type
                ),
            );
        }
        if self.r == 0 {
            return bad("r", "must be positive");
        }
        if self.fan_in_fan_out {
            return bad("fan_in_fan_out", "= true (Conv1D bases) is not supported");
        }
        if self.lora_bias {
            return bad("lora_bias", "= true is not supported");
        }
        if self.bias != "none" {
            return bad(
                "bias",
                &format!("= {:?} is not supported (only \"none\")", self.bias),
            );
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad("lora_dropout", "must be in [0, 1)");
        }
        for key in [
            "layers_to_transform",
            "layer_replication",
            "target_parameters",
        ] {
            if self.extra.get(key).is_some_and(|v| !v.is_null()) {
                return bad(key, "is set; not supported");
            }
        }
        if let Some(ModuleSelector::Regex(p)) = &self.target_modules {
            if p != "all-linear" {
                full_regex(p)?;
            }
        }
        Ok(())
    }

    /// Whether peft would put an adapter on the module at `module_path` (e.g. `model.layers.0.self_attn.q_proj`).
    pub fn targets(&self, module_path: &str) -> Result<bool, TrainError> {
        if let Some(ex) = &self.exclude_modules {
            if ex.matches(module_path)? {
                return Ok(false);
            }
        }
        match &self.target_modules {
            Some(sel) => sel.matches(module_path),
            None => Ok(false),
        }
    }

    /// The rank / alpha for one module, applying `rank_pattern` and `alpha_pattern`.
    pub fn settings_for(&self, module_path: &str) -> Result<LoraSettings, TrainError> {
        let pick = |keys: Vec<&String>| -> Result<Option<String>, TrainError> {
            for key in keys {
                let re = regex::Regex::new(&format!("^(?:.*\\.)?(?:{key})$"))
                    .map_err(|e| TrainError::Invalid(format!("pattern {key:?}: {e}")))?;
                if re.is_match(module_path) {
                    return Ok(Some(key.clone()));
                }
            }
            Ok(None)
        };
        let r = match pick(self.rank_pattern.keys().collect())? {
            Some(k) => self.rank_pattern[&k],
            None => self.r,
        };
        let alpha = match pick(self.alpha_pattern.keys().collect())? {
            Some(k) => self.alpha_pattern[&k],
            None => self.lora_alpha,
        };
        Ok(LoraSettings {
            r,
            alpha,
            use_rslora: self.use_rslora,
            use_dora: self.use_dora,
            dropout: self.lora_dropout,
        })
    }
}

/// The tensors of one adapted module.
#[derive(Clone, Debug)]
pub struct ModuleAdapter {
    pub lora_a: Tensor,
    pub lora_b: Tensor,
    pub magnitude: Option<Tensor>,
}

/// An adapter read from (or to be written to) a peft directory.
#[derive(Clone, Debug)]
pub struct PeftAdapter {
    pub config: PeftLoraConfig,
    /// Module path (without `base_model.model.`) -> its tensors.
    pub modules: BTreeMap<String, ModuleAdapter>,
}

impl PeftAdapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir` onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| TrainError::io(&cfg_path, e))?;
        let config: PeftLoraConfig =
            serde_json::from_str(&text).map_err(|source| TrainError::Json {
                path: cfg_path.clone(),
                source,
            })?;
        config.validate()?;
        let w_path = dir.join(ADAPTER_WEIGHTS_FILE);
        let err = |reason: String| TrainError::Adapter {
            path: w_path.clone(),
            reason,
        };
        if !w_path.is_file() {
            return Err(err(
                "file not found (only safetensors adapters are read, not .bin)".into(),
            ));
        }
        let tensors = candle_core::safetensors::load(&w_path, device)
            .map_err(|e| err(format!("cannot read: {e}")))?;
        // Per module: (lora_A, lora_B, magnitude).
        let mut parts: BTreeMap<String, [Option<Tensor>; 3]> = BTreeMap::new();
        for (key, t) in tensors {
            let Some(rest) = key.strip_prefix(PEFT_KEY_PREFIX) else {
                return Err(err(format!(
                    "key {key:?} does not start with {PEFT_KEY_PREFIX:?}"
                )));
            };
            let (module, slot) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else if let Some(m) = rest.strip_suffix(".lora_magnitude_vector") {
                (m, 2)
            } else {
                return Err(err(format!(
                    "unsupported tensor {key:?} (only lora_A, lora_B, lora_magnitude_vector; \
                     modules_to_save / lora bias are not supported)"
                )));
            };
            let entry = parts.entry(module.to_string()).or_default();
            if let Some(dst) = entry.get_mut(slot) {
                *dst = Some(t);
            }
        }
        let mut modules = BTreeMap::new();
        for (module, [a, b, m]) in parts {
            let (Some(lora_a), Some(lora_b)) = (a, b) else {
                return Err(err(format!(
                    "module {module}: lora_A and lora_B must both be present"
                )));
            };
            if config.use_dora != m.is_some() {
                return Err(err(format!(
                    "module {module}: use_dora = {} but lora_magnitude_vector is {}",
                    config.use_dora,
                    if m.is_some() { "present" } else { "missing" }
                )));
            }
            let settings = config.settings_for(&module)?;
            let (r_a, _) = lora_a
                .dims2()
                .map_err(|_| err(format!("{module}.lora_A is not 2-D")))?;
            let (_, r_b) = lora_b
                .dims2()
                .map_err(|_| err(format!("{module}.lora_B is not 2-D")))?;
            if r_a != settings.r || r_b != settings.r {
                return Err(err(format!(
                    "module {module}: lora_A / lora_B ranks {r_a} / {r_b} differ from r = {} in the config",
                    settings.r
                )));
            }
            modules.insert(
                module,
                ModuleAdapter {
                    lora_a,
                    lora_b,
                    magnitude: m,
                },
            );
        }
        if modules.is_empty() {
            return Err(err("no adapter tensors".into()));
        }
        Ok(Self { config, modules })
    }

    /// Collects the current adapter tensors of `layers` (module path -> layer); frozen layers are skipped.
    pub fn from_layers<'a>(
        config: PeftLoraConfig,
        layers: impl IntoIterator<Item = (&'a str, &'a AdaptedLinear)>,
    ) -> Result<Self, TrainError> {
        let mut modules = BTreeMap::new();
        for (path, layer) in layers {
            let vars = layer.trainable_vars();
            if vars.is_empty() {
                continue;
            }
            let get = |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_tensor().detach())
            };
            let (Some(lora_a), Some(lora_b)) = (get("lora_A.weight"), get("lora_B.weight")) else {
                continue;
            };
            modules.insert(
                path.to_string(),
                ModuleAdapter {
                    lora_a,
                    lora_b,
                    magnitude: get("lora_magnitude_vector"),
                },
            );
        }
        Ok(Self { config, modules })
    }

    /// Adapter modules that are not among `model_paths`: a non-empty answer means the adapter was made
    /// for another model (or its module paths are mapped wrongly) and would be silently ignored.
    pub fn modules_missing_from<'a>(
        &self,
        model_paths: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let known: std::collections::HashSet<&str> = model_paths.into_iter().collect();
        self.modules
            .keys()
            .filter(|m| !known.contains(m.as_str()))
            .cloned()
            .collect()
    }

    /// peft's tensor names and tensors, in a stable order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (module, m) in &self.modules {
            out.push((
                format!("{PEFT_KEY_PREFIX}{module}.lora_A.weight"),
                m.lora_a.clone(),
            ));
            out.push((
                format!("{PEFT_KEY_PREFIX}{module}.lora_B.weight"),
                m.lora_b.clone(),
            ));
            if let Some(mag) = &m.magnitude {
                out.push((
                    format!("{PEFT_KEY_PREFIX}{module}.lora_magnitude_vector"),
                    mag.clone(),
                ));
            }
        }
        out
    }

    /// Writes both files into `dir` (created if needed), each atomically. Tensors are stored as f32.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        self.config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let json =
            serde_json::to_string_pretty(&self.config).map_err(|source| TrainError::Json {
                path: dir.join(ADAPTER_CONFIG_FILE),
                source,
            })?;
        atomic_write(&dir.join(ADAPTER_CONFIG_FILE), json.as_bytes())?;
        let tensors = self
            .named_tensors()
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?.contiguous()?)))
            .collect::<Result<HashMap<_, _>, candle_core::Error>>()?;
        let bytes = safetensors_bytes(&tensors, None, &dir.join(ADAPTER_WEIGHTS_FILE))?;
        atomic_write(&dir.join(ADAPTER_WEIGHTS_FILE), &bytes)
    }

    /// Builds the adapted layer for `module_path` over `base`, or returns the base frozen layer when
    /// this adapter has no tensors for it.
    pub fn adapt(
        &self,
        module_path: &str,
        base: crate::frozen::FrozenLinear,
    ) -> Result<AdaptedLinear, TrainError> {
        let Some(m) = self.modules.get(module_path) else {
            return Ok(AdaptedLinear::Frozen(base));
        };
        let settings = self.config.settings_for(module_path)?;
        let ctx = |e: candle_core::Error| {
            TrainError::Invalid(format!("adapter module {module_path}: {e}"))
        };
        Ok(if settings.use_dora {
            AdaptedLinear::Dora(
                crate::adapters::DoraLinear::from_weights(
                    base,
                    m.lora_a.clone(),
                    m.lora_b.clone(),
                    m.magnitude.clone(),
                    &settings,
                )
                .map_err(ctx)?,
            )
        } else {
            AdaptedLinear::Lora(
                crate::adapters::LoraLinear::from_weights(
                    base,
                    m.lora_a.clone(),
                    m.lora_b.clone(),
                    &settings,
                )
                .map_err(ctx)?,
            )
        })
    }
}

/// Serialises tensors (and optional `__metadata__`) to safetensors bytes.
pub(crate) fn safetensors_bytes(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>, TrainError> {
    safetensors::tensor::serialize(tensors.iter(), metadata).map_err(|e| TrainError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
