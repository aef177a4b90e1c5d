//! The sections of a transformers `config.json` as written on disk, shared by the Idefics2 and Idefics3 /
//! SmolVLM configs (crate::config, crate::model::idefics3_config).
//!
//! Every key is optional here: transformers fills what a file leaves out with class defaults, and those differ
//! between the families, so each family resolves these shapes with its own defaults. A JSON `null` counts as
//! absent, except where transformers gives `None` a meaning (`sliding_window`, the token ids): there a field is
//! `Option<Option<T>>`, `None` when absent and `Some(None)` when null. Unknown keys are ignored, as transformers
//! keeps them as plain attributes. Type errors name the key through its path (`text_config.hidden_act: ...`).

use crate::config::{TextConfig, VisionConfig};
use crate::error::{Error, Result};
use crate::nn::Activation;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::path::Path;

/// Parses JSON text; the error says it is not JSON.
pub(crate) fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Config(format!("not valid JSON: {e}")))
}

/// Reads `path` and parses it with `parse`; configuration errors are prefixed with the file's path.
pub(crate) fn read_config_file<T>(
    path: &Path,
    parse: impl FnOnce(&Value) -> Result<T>,
) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let in_file = |e| match e {
        Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
        other => other,
    };
    parse(&parse_json(&text).map_err(in_file)?).map_err(in_file)
}

/// The top-level `model_type` string (`None` when absent or not a string); errors when the file is not an object.
pub(crate) fn model_type_of(v: &Value) -> Result<Option<&str>> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Config("config.json must be a JSON object".into()))?;
    Ok(obj.get("model_type").and_then(Value::as_str))
}

/// Deserializes a file shape; the error names the key path (`vision_config.hidden_size: invalid type: ...`).
pub(crate) fn deserialize_value<T: DeserializeOwned>(v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| Error::Config(e.to_string()))
}

/// The stored dtype as the file names it: `dtype` (5.x) or `torch_dtype` (4.x); informational only.
pub(crate) fn stored_dtype(dtype: Option<Value>, torch_dtype: Option<Value>) -> Option<String> {
    dtype
        .or(torch_dtype)
        .and_then(|v| v.as_str().map(str::to_string))
}

/// A transformers `ACT2FN` name this crate implements.
pub(crate) fn hf_activation<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Activation>, D::Error> {
    let Some(name) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    Activation::from_hf_name(&name).map(Some).ok_or_else(|| {
        D::Error::custom(format!(
            "\"{name}\" is not supported (expected silu, gelu_pytorch_tanh or gelu)"
        ))
    })
}

/// `image_size` / `patch_size`: an int, or a square `[n, n]` pair, as transformers allows.
fn square_side<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    let side = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(v) => match (&v, side(&v)) {
            (_, Some(n)) => Ok(Some(n)),
            (Value::Array(items), _)
                if items.len() == 2 && side(&items[0]).is_some() && items[0] == items[1] =>
            {
                Ok(side(&items[0]))
            }
            _ => Err(D::Error::custom(format!(
                "must be a non-negative integer or a square [n, n] pair, got {v}"
            ))),
        },
    }
}

/// A key whose `null` means `None` (not the default): `None` when absent, `Some(None)` when null.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `vision_config` (`Idefics2VisionConfig`, `Idefics3VisionConfig`, `SmolVLMVisionConfig`).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct VisionFile {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    #[serde(deserialize_with = "square_side")]
    image_size: Option<usize>,
    #[serde(deserialize_with = "square_side")]
    patch_size: Option<usize>,
    #[serde(deserialize_with = "hf_activation")]
    hidden_act: Option<Activation>,
    layer_norm_eps: Option<f64>,
}

impl VisionFile {
    /// The file's values, `d` (the family's class defaults) for what it leaves out.
    pub(crate) fn resolve(self, d: VisionConfig) -> VisionConfig {
        VisionConfig {
            hidden_size: self.hidden_size.unwrap_or(d.hidden_size),
            intermediate_size: self.intermediate_size.unwrap_or(d.intermediate_size),
            num_hidden_layers: self.num_hidden_layers.unwrap_or(d.num_hidden_layers),
            num_attention_heads: self.num_attention_heads.unwrap_or(d.num_attention_heads),
            num_channels: self.num_channels.unwrap_or(d.num_channels),
            image_size: self.image_size.unwrap_or(d.image_size),
            patch_size: self.patch_size.unwrap_or(d.patch_size),
            hidden_act: self.hidden_act.unwrap_or(d.hidden_act),
            layer_norm_eps: self.layer_norm_eps.unwrap_or(d.layer_norm_eps),
        }
    }
}

/// `text_config` of a Mistral (Idefics2) or Llama (Idefics3) decoder.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct TextFile {
    model_type: Option<Value>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    pub(crate) num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(deserialize_with = "hf_activation")]
    hidden_act: Option<Activation>,
    pub(crate) max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    /// 4.x: at the top of `text_config`; 5.x: inside `rope_parameters`.
    rope_theta: Option<f64>,
    /// 5.x spelling of the rope settings.
    rope_parameters: Option<RopeFile>,
    /// 4.x spelling of the rope settings.
    rope_scaling: Option<RopeFile>,
    #[serde(deserialize_with = "nullable")]
    pub(crate) sliding_window: Option<Option<usize>>,
    #[serde(deserialize_with = "nullable")]
    pad_token_id: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    bos_token_id: Option<Option<u32>>,
    #[serde(deserialize_with = "nullable")]
    eos_token_id: Option<Option<Value>>,
    pub(crate) attention_bias: Option<bool>,
    pub(crate) mlp_bias: Option<bool>,
}

impl TextFile {
    /// Refuses a decoder of another architecture (a non-string `model_type` is ignored, as transformers does).
    pub(crate) fn check_model_type(&self, expected: &str) -> Result<()> {
        match self.model_type.as_ref().and_then(Value::as_str) {
            Some(mt) if mt != expected => Err(Error::Config(format!(
                "text_config.model_type \"{mt}\" is not supported (only \"{expected}\")"
            ))),
            _ => Ok(()),
        }
    }

    /// `rope_theta` and the rope settings with the key they came from, as transformers 5.x standardises them
    /// (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict`): a 4.x `rope_scaling` dict replaces
    /// `rope_parameters`; `rope_theta` inside the dict wins over the top-level one.
    pub(crate) fn rope(&self) -> (f64, Option<(&'static str, &RopeFile)>) {
        let params = match (&self.rope_scaling, &self.rope_parameters) {
            (Some(p), _) => Some(("rope_scaling", p)),
            (None, Some(p)) => Some(("rope_parameters", p)),
            (None, None) => None,
        };
        let theta = params
            .and_then(|(_, p)| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        (theta, params)
    }

    /// The decoder sizes and token ids; `d` gives the family's class defaults, except `head_dim`
    /// (`hidden_size / num_attention_heads`). `sliding_window` is `d`'s: each family decides it.
    pub(crate) fn resolve(&self, d: &TextConfig, rope_theta: f64) -> Result<TextConfig> {
        let hidden_size = self.hidden_size.unwrap_or(d.hidden_size);
        let num_attention_heads = self.num_attention_heads.unwrap_or(d.num_attention_heads);
        if num_attention_heads == 0 {
            return Err(Error::Config(
                "text_config.num_attention_heads must be > 0".into(),
            ));
        }
        Ok(TextConfig {
            vocab_size: self.vocab_size.unwrap_or(d.vocab_size),
            hidden_size,
            intermediate_size: self.intermediate_size.unwrap_or(d.intermediate_size),
            num_hidden_layers: self.num_hidden_layers.unwrap_or(d.num_hidden_layers),
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(d.num_key_value_heads),
            head_dim: self.head_dim.unwrap_or(hidden_size / num_attention_heads),
            hidden_act: self.hidden_act.unwrap_or(d.hidden_act),
            max_position_embeddings: self
                .max_position_embeddings
                .unwrap_or(d.max_position_embeddings),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(d.rms_norm_eps),
            rope_theta,
            sliding_window: d.sliding_window,
            pad_token_id: self.pad_token_id.unwrap_or(d.pad_token_id),
            bos_token_id: self.bos_token_id.unwrap_or(d.bos_token_id),
            eos_token_id: self
                .eos_token_id
                .clone()
                .unwrap_or_else(|| d.eos_token_id.clone()),
        })
    }
}

/// `rope_parameters` (5.x) or `rope_scaling` (4.x).
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct RopeFile {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
    /// 4.x name of `rope_type`.
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    pub(crate) factor: Option<f64>,
    pub(crate) low_freq_factor: Option<f64>,
    pub(crate) high_freq_factor: Option<f64>,
    pub(crate) original_max_position_embeddings: Option<usize>,
}

impl RopeFile {
    /// `rope_type`, falling back to the 4.x `type`, then `default`.
    pub(crate) fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.legacy_type.as_deref())
            .unwrap_or("default")
    }
}
