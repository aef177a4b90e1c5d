//! Hugging Face `config.json` of an Idefics2 checkpoint, as it is on disk.
//!
//! Both shapes written by transformers are accepted: 4.x (`rope_theta` at the top of `text_config`, `torch_dtype`)
//! and 5.x (`rope_parameters = {rope_theta, rope_type}`, `dtype`). Missing fields take the class defaults of
//! transformers (`Idefics2VisionConfig`, `Idefics2PerceiverConfig`, `MistralConfig`), as in transformers 5.24.

use crate::error::{Error, Result};
use crate::nn::Activation;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// SigLIP vision tower (`Idefics2VisionConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::GeluPytorchTanh,
            layer_norm_eps: 1e-6,
        }
    }
}

impl VisionConfig {
    /// Side of the position-embedding grid (`image_size // patch_size`, 70 for idefics2-8b).
    pub fn num_patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Perceiver resampler of the connector (`Idefics2PerceiverConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerceiverConfig {
    pub hidden_act: Activation,
    pub hidden_size: usize,
    pub rms_norm_eps: f64,
    pub resampler_n_latents: usize,
    pub resampler_depth: usize,
    pub resampler_n_heads: usize,
    pub resampler_head_dim: usize,
    pub num_key_value_heads: usize,
}

impl Default for PerceiverConfig {
    fn default() -> Self {
        Self {
            hidden_act: Activation::Silu,
            hidden_size: 4096,
            rms_norm_eps: 1e-6,
            resampler_n_latents: 64,
            resampler_depth: 3,
            resampler_n_heads: 16,
            resampler_head_dim: 96,
            num_key_value_heads: 4,
        }
    }
}

/// Mistral text decoder (`MistralConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// `None` in the file means `hidden_size / num_attention_heads`; always resolved here.
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `None` disables the sliding window.
    pub sliding_window: Option<usize>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<Value>,
}

impl Default for TextConfig {
    /// `MistralConfig()` as `Idefics2Config` builds it when `text_config` is absent.
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 128,
            hidden_act: Activation::Silu,
            max_position_embeddings: 32768,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            sliding_window: Some(4096),
            pad_token_id: Some(0),
            bos_token_id: Some(1),
            eos_token_id: Some(Value::from(2)),
        }
    }
}

/// The whole checkpoint configuration (`Idefics2Config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Idefics2Config {
    pub vision_config: VisionConfig,
    pub perceiver_config: PerceiverConfig,
    pub text_config: TextConfig,
    pub image_token_id: u32,
    pub tie_word_embeddings: bool,
    /// Stored dtype as named by the file (`dtype` in 5.x, `torch_dtype` in 4.x), informational only.
    pub dtype: Option<String>,
}

impl Default for Idefics2Config {
    /// `Idefics2Config()` with no arguments.
    fn default() -> Self {
        Idefics2Config {
            vision_config: VisionConfig::default(),
            perceiver_config: PerceiverConfig::default(),
            text_config: TextConfig::default(),
            image_token_id: 32001,
            tie_word_embeddings: false,
            dtype: None,
        }
    }
}

impl Idefics2Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", path.display())))?;
        Self::from_json_value(&value).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses a config from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not valid JSON: {e}")))?;
        Self::from_json_value(&value)
    }

    /// Parses a config from a JSON value, applying transformers' defaults and validating it.
    pub fn from_json_value(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Config("config.json must be a JSON object".into()))?;
        match obj.get("model_type").and_then(Value::as_str) {
            Some("idefics2") => {}
            Some(other) => {
                return Err(Error::Config(format!(
                    "model_type is \"{other}\", expected \"idefics2\" (this is not an Idefics2 checkpoint)"
                )))
            }
            None => return Err(Error::Config("model_type is missing, expected \"idefics2\"".into())),
        }
        let empty = Value::Object(Default::default());
        let sub = |key: &str| -> Result<&Value> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(&empty),
                Some(v @ Value::Object(_)) => Ok(v),
                Some(_) => Err(Error::Config(format!("{key} must be an object"))),
            }
        };
        let vision_config = parse_vision(sub("vision_config")?)?;
        let mut perceiver_config = parse_perceiver(sub("perceiver_config")?)?;
        let text_config = match obj.get("text_config") {
            None | Some(Value::Null) => TextConfig::default(),
            Some(_) => parse_text(sub("text_config")?)?,
        };
        // Idefics2Config.__post_init__: the perceiver inherits hidden_size AND rms_norm_eps from the text config
        // only when the hidden sizes differ (idefics2-8b: equal, so the perceiver keeps eps 1e-6).
        if perceiver_config.hidden_size != text_config.hidden_size {
            perceiver_config.hidden_size = text_config.hidden_size;
            perceiver_config.rms_norm_eps = text_config.rms_norm_eps;
        }
        let image_token_id = get_u64(obj, "image_token_id", "")?.unwrap_or(32001);
        let cfg = Idefics2Config {
            vision_config,
            perceiver_config,
            text_config,
            image_token_id: u32::try_from(image_token_id).map_err(|_| {
                Error::Config(format!("image_token_id {image_token_id} is too large"))
            })?,
            tie_word_embeddings: get_bool(obj, "tie_word_embeddings", "")?.unwrap_or(false),
            dtype: obj
                .get("dtype")
                .or_else(|| obj.get("torch_dtype"))
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values this implementation supports; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let p = &self.perceiver_config;
        let t = &self.text_config;
        let positive = [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.patch_size", v.patch_size),
            (
                "perceiver_config.resampler_n_latents",
                p.resampler_n_latents,
            ),
            ("perceiver_config.resampler_n_heads", p.resampler_n_heads),
            ("perceiver_config.resampler_head_dim", p.resampler_head_dim),
            (
                "perceiver_config.num_key_value_heads",
                p.num_key_value_heads,
            ),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_key_value_heads", t.num_key_value_heads),
            ("text_config.head_dim", t.head_dim),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be > 0")));
            }
        }
        if v.image_size < v.patch_size {
            return Err(Error::Config(format!(
                "vision_config.image_size ({}) is smaller than patch_size ({})",
                v.image_size, v.patch_size
            )));
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(Error::Config(format!(
                "vision_config.hidden_size ({}) is not divisible by num_attention_heads ({})",
                v.hidden_size, v.num_attention_heads
            )));
        }
        if !p.resampler_n_heads.is_multiple_of(p.num_key_value_heads) {
            return Err(Error::Config(format!(
                "perceiver_config.resampler_n_heads ({}) is not divisible by num_key_value_heads ({})",
                p.resampler_n_heads, p.num_key_value_heads
            )));
        }
        if !t.num_attention_heads.is_multiple_of(t.num_key_value_heads) {
            return Err(Error::Config(format!(
                "text_config.num_attention_heads ({}) is not divisible by num_key_value_heads ({})",
                t.num_attention_heads, t.num_key_value_heads
            )));
        }
        if !t.head_dim.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "text_config.head_dim ({}) must be even for RoPE",
                t.head_dim
            )));
        }
        if self.image_token_id as usize >= t.vocab_size {
            return Err(Error::Config(format!(
                "image_token_id ({}) is not below text_config.vocab_size ({})",
                self.image_token_id, t.vocab_size
            )));
        }
        if t.sliding_window == Some(0) {
            return Err(Error::Config(
                "text_config.sliding_window must be > 0 or null".into(),
            ));
        }
        let n_latents = p.resampler_n_latents;
        check_tensor_sizes(&[
            (
                "perceiver_config attention",
                &[p.resampler_n_heads, p.resampler_head_dim, p.hidden_size],
            ),
            ("perceiver_config latents", &[n_latents, p.hidden_size]),
            ("connector MLP", &[t.intermediate_size, v.hidden_size]),
        ])?;
        check_text_and_vision_sizes(v, t)
    }

    /// Number of `<image>` tokens each image occupies in the prompt (`resampler_n_latents`).
    pub fn image_seq_len(&self) -> usize {
        self.perceiver_config.resampler_n_latents
    }
}

/// Most elements one weight tensor may have (2^40, terabytes: beyond any checkpoint). Weight shapes are products
/// of config sizes, so a corrupt config.json could otherwise overflow them while the model is built (found by
/// crates/idefics/tests/fuzz_checkpoint.rs).
const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;

/// Refuses configs whose implied tensor shapes (`(what, dims)`) have more than [`MAX_TENSOR_ELEMENTS`] elements.
pub(crate) fn check_tensor_sizes(shapes: &[(&str, &[usize])]) -> Result<()> {
    for (what, dims) in shapes {
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&n| n <= MAX_TENSOR_ELEMENTS);
        if elements.is_none() {
            return Err(Error::Config(format!(
                "{what}: sizes {dims:?} give a tensor of more than 2^40 elements; is config.json corrupt?"
            )));
        }
    }
    Ok(())
}

/// The tensor sizes the vision tower and the text model of both families imply.
pub(crate) fn check_text_and_vision_sizes(v: &VisionConfig, t: &TextConfig) -> Result<()> {
    let side = v.image_size / v.patch_size.max(1);
    check_tensor_sizes(&[
        (
            "vision_config position embedding",
            &[side, side, v.hidden_size],
        ),
        (
            "vision_config patch embedding",
            &[v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
        ),
        ("vision_config MLP", &[v.intermediate_size, v.hidden_size]),
        ("text_config embedding", &[t.vocab_size, t.hidden_size]),
        (
            "text_config attention",
            &[t.num_attention_heads, t.head_dim, t.hidden_size],
        ),
        (
            "text_config key / value",
            &[t.num_key_value_heads, t.head_dim, t.hidden_size],
        ),
        ("text_config MLP", &[t.intermediate_size, t.hidden_size]),
    ])
}

pub(crate) type Obj = serde_json::Map<String, Value>;

pub(crate) fn get_u64(obj: &Obj, key: &str, section: &str) -> Result<Option<u64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            Error::Config(format!(
                "{section}{key} must be a non-negative integer, got {v}"
            ))
        }),
    }
}

pub(crate) fn get_usize(obj: &Obj, key: &str, section: &str) -> Result<Option<usize>> {
    get_u64(obj, key, section)?
        .map(|x| {
            usize::try_from(x).map_err(|_| Error::Config(format!("{section}{key} is too large")))
        })
        .transpose()
}

pub(crate) fn get_f64(obj: &Obj, key: &str, section: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("{section}{key} must be a number, got {v}"))),
    }
}

pub(crate) fn get_bool(obj: &Obj, key: &str, section: &str) -> Result<Option<bool>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| Error::Config(format!("{section}{key} must be true or false, got {v}"))),
    }
}

pub(crate) fn get_act(obj: &Obj, key: &str, section: &str) -> Result<Option<Activation>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Activation::from_hf_name(s).map(Some).ok_or_else(|| {
            Error::Config(format!(
                "{section}{key} \"{s}\" is not supported (expected silu, gelu_pytorch_tanh or gelu)"
            ))
        }),
        Some(v) => Err(Error::Config(format!(
            "{section}{key} must be a string, got {v}"
        ))),
    }
}

/// `image_size` / `patch_size` may be an int or a square `[a, a]` pair in transformers.
pub(crate) fn get_side(obj: &Obj, key: &str, section: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        Some(Value::Array(items)) => {
            let sides: Vec<Option<u64>> = items.iter().map(Value::as_u64).collect();
            match sides.as_slice() {
                [Some(a), Some(b)] if a == b => Ok(Some(*a as usize)),
                _ => Err(Error::Config(format!(
                    "{section}{key} must be an integer or a square [n, n] pair, got {items:?}"
                ))),
            }
        }
        _ => get_usize(obj, key, section),
    }
}

pub(crate) fn as_obj(v: &Value) -> &Obj {
    static EMPTY: std::sync::OnceLock<Obj> = std::sync::OnceLock::new();
    v.as_object().unwrap_or_else(|| EMPTY.get_or_init(Obj::new))
}

pub(crate) fn parse_vision(v: &Value) -> Result<VisionConfig> {
    let o = as_obj(v);
    let s = "vision_config.";
    let d = VisionConfig::default();
    Ok(VisionConfig {
        hidden_size: get_usize(o, "hidden_size", s)?.unwrap_or(d.hidden_size),
        intermediate_size: get_usize(o, "intermediate_size", s)?.unwrap_or(d.intermediate_size),
        num_hidden_layers: get_usize(o, "num_hidden_layers", s)?.unwrap_or(d.num_hidden_layers),
        num_attention_heads: get_usize(o, "num_attention_heads", s)?
            .unwrap_or(d.num_attention_heads),
        num_channels: get_usize(o, "num_channels", s)?.unwrap_or(d.num_channels),
        image_size: get_side(o, "image_size", s)?.unwrap_or(d.image_size),
        patch_size: get_side(o, "patch_size", s)?.unwrap_or(d.patch_size),
        hidden_act: get_act(o, "hidden_act", s)?.unwrap_or(d.hidden_act),
        layer_norm_eps: get_f64(o, "layer_norm_eps", s)?.unwrap_or(d.layer_norm_eps),
    })
}

fn parse_perceiver(v: &Value) -> Result<PerceiverConfig> {
    let o = as_obj(v);
    let s = "perceiver_config.";
    let d = PerceiverConfig::default();
    Ok(PerceiverConfig {
        hidden_act: get_act(o, "hidden_act", s)?.unwrap_or(d.hidden_act),
        hidden_size: get_usize(o, "hidden_size", s)?.unwrap_or(d.hidden_size),
        rms_norm_eps: get_f64(o, "rms_norm_eps", s)?.unwrap_or(d.rms_norm_eps),
        resampler_n_latents: get_usize(o, "resampler_n_latents", s)?
            .unwrap_or(d.resampler_n_latents),
        resampler_depth: get_usize(o, "resampler_depth", s)?.unwrap_or(d.resampler_depth),
        resampler_n_heads: get_usize(o, "resampler_n_heads", s)?.unwrap_or(d.resampler_n_heads),
        resampler_head_dim: get_usize(o, "resampler_head_dim", s)?.unwrap_or(d.resampler_head_dim),
        num_key_value_heads: get_usize(o, "num_key_value_heads", s)?
            .unwrap_or(d.num_key_value_heads),
    })
}

/// A `text_config` dict: missing keys take `MistralConfig` class defaults (note rms_norm_eps 1e-6 and
/// max_position_embeddings 131072 there, unlike the no-text-config default of `Idefics2Config`).
fn parse_text(v: &Value) -> Result<TextConfig> {
    let o = as_obj(v);
    let s = "text_config.";
    if let Some(mt) = o.get("model_type").and_then(Value::as_str) {
        if mt != "mistral" {
            return Err(Error::Config(format!(
                "text_config.model_type \"{mt}\" is not supported (only \"mistral\")"
            )));
        }
    }
    let hidden_size = get_usize(o, "hidden_size", s)?.unwrap_or(4096);
    let num_attention_heads = get_usize(o, "num_attention_heads", s)?.unwrap_or(32);
    if num_attention_heads == 0 {
        return Err(Error::Config(
            "text_config.num_attention_heads must be > 0".into(),
        ));
    }
    // 5.x: rope_parameters {rope_theta, rope_type}; 4.x: rope_theta at top level and maybe rope_scaling.
    let mut rope_theta = get_f64(o, "rope_theta", s)?;
    let mut rope_type: Option<String> = None;
    for key in ["rope_parameters", "rope_scaling"] {
        match o.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(rp)) => {
                let sec = format!("text_config.{key}.");
                if let Some(theta) = get_f64(rp, "rope_theta", &sec)? {
                    rope_theta = Some(theta);
                }
                if let Some(t) = rp
                    .get("rope_type")
                    .or_else(|| rp.get("type"))
                    .and_then(Value::as_str)
                {
                    rope_type = Some(t.to_string());
                }
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "text_config.{key} must be an object, got {other}"
                )))
            }
        }
    }
    if let Some(t) = rope_type {
        if t != "default" {
            return Err(Error::Config(format!(
                "text_config rope_type \"{t}\" is not supported (only \"default\")"
            )));
        }
    }
    let sliding_window = match o.get("sliding_window") {
        None => Some(4096),
        Some(Value::Null) => None,
        Some(_) => get_usize(o, "sliding_window", s)?,
    };
    let opt_u32 = |key: &str, default: Option<u32>| -> Result<Option<u32>> {
        match o.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(_) => Ok(get_u64(o, key, s)?.map(|x| x as u32)),
        }
    };
    Ok(TextConfig {
        vocab_size: get_usize(o, "vocab_size", s)?.unwrap_or(32000),
        hidden_size,
        intermediate_size: get_usize(o, "intermediate_size", s)?.unwrap_or(14336),
        num_hidden_layers: get_usize(o, "num_hidden_layers", s)?.unwrap_or(32),
        num_attention_heads,
        num_key_value_heads: get_usize(o, "num_key_value_heads", s)?.unwrap_or(8),
        head_dim: get_usize(o, "head_dim", s)?.unwrap_or(hidden_size / num_attention_heads),
        hidden_act: get_act(o, "hidden_act", s)?.unwrap_or(Activation::Silu),
        max_position_embeddings: get_usize(o, "max_position_embeddings", s)?.unwrap_or(131072),
        rms_norm_eps: get_f64(o, "rms_norm_eps", s)?.unwrap_or(1e-6),
        rope_theta: rope_theta.unwrap_or(10000.0),
        sliding_window,
        pad_token_id: opt_u32("pad_token_id", None)?,
        bos_token_id: opt_u32("bos_token_id", Some(1))?,
        eos_token_id: match o.get("eos_token_id") {
            None => Some(Value::from(2)),
            Some(Value::Null) => None,
            Some(v) => Some(v.clone()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hub config.json of HuggingFaceM4/idefics2-8b (4.x shape).
    const IDEFICS2_8B: &str = r#"{
      "architectures": ["Idefics2ForConditionalGeneration"], "image_token_id": 32001, "model_type": "idefics2",
      "perceiver_config": {"model_type": "idefics2"},
      "text_config": {"max_position_embeddings": 32768, "model_type": "mistral", "pad_token_id": 0,
                      "rms_norm_eps": 1e-05, "vocab_size": 32003},
      "tie_word_embeddings": false, "torch_dtype": "float32",
      "vision_config": {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "model_type": "idefics2",
                        "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14}
    }"#;

    #[test]
    fn idefics2_8b_hub_config_gets_class_defaults() {
        let c = Idefics2Config::from_json_str(IDEFICS2_8B).unwrap();
        assert_eq!(c.vision_config.num_patches_per_side(), 70);
        assert_eq!(c.vision_config.head_dim(), 72);
        assert_eq!(c.vision_config.hidden_act, Activation::GeluPytorchTanh);
        assert_eq!(c.perceiver_config.hidden_size, 4096);
        // Hidden sizes are equal, so the perceiver keeps its own eps.
        assert_eq!(c.perceiver_config.rms_norm_eps, 1e-6);
        assert_eq!(c.text_config.rms_norm_eps, 1e-5);
        assert_eq!(c.text_config.head_dim, 128);
        assert_eq!(c.text_config.num_key_value_heads, 8);
        assert_eq!(c.text_config.rope_theta, 10000.0);
        assert_eq!(c.text_config.sliding_window, Some(4096));
        assert_eq!(c.dtype.as_deref(), Some("float32"));
        assert_eq!(c.image_seq_len(), 64);
    }

    #[test]
    fn perceiver_copies_size_and_eps_only_when_sizes_differ() {
        let json = r#"{"model_type":"idefics2","text_config":{"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
            "rms_norm_eps":1e-5,"vocab_size":400},"perceiver_config":{"rms_norm_eps":1e-3}, "image_token_id": 5}"#;
        let c = Idefics2Config::from_json_str(json).unwrap();
        assert_eq!(c.perceiver_config.hidden_size, 64);
        assert_eq!(c.perceiver_config.rms_norm_eps, 1e-5);
        let json = r#"{"model_type":"idefics2","text_config":{"hidden_size":64,"num_attention_heads":4,"num_key_value_heads":2,
            "rms_norm_eps":1e-5,"vocab_size":400},"perceiver_config":{"hidden_size":64,"rms_norm_eps":1e-3},
            "image_token_id": 5}"#;
        let c = Idefics2Config::from_json_str(json).unwrap();
        assert_eq!(c.perceiver_config.rms_norm_eps, 1e-3);
    }

    #[test]
    fn accepts_5x_rope_parameters_and_dtype() {
        let json = r#"{"model_type":"idefics2","dtype":"bfloat16","text_config":{"model_type":"mistral",
            "rope_parameters":{"rope_theta":500000.0,"rope_type":"default"},"vocab_size":32003}}"#;
        let c = Idefics2Config::from_json_str(json).unwrap();
        assert_eq!(c.text_config.rope_theta, 500000.0);
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
    }

    fn err(json: &str) -> String {
        Idefics2Config::from_json_str(json).unwrap_err().to_string()
    }

    #[test]
    fn rejects_unsupported_values_naming_the_field() {
        assert!(err(r#"{"model_type":"llava"}"#).contains("llava"));
        let e = err(r#"{"model_type":"idefics2","text_config":{"hidden_act":"relu"}}"#);
        assert!(
            e.contains("text_config.hidden_act") && e.contains("relu"),
            "{e}"
        );
        let e = err(
            r#"{"model_type":"idefics2","text_config":{"rope_parameters":{"rope_type":"yarn"}}}"#,
        );
        assert!(e.contains("rope_type") && e.contains("yarn"), "{e}");
        let e = err(r#"{"model_type":"idefics2","text_config":{"num_key_value_heads":5}}"#);
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = err(r#"{"model_type":"idefics2","perceiver_config":{"num_key_value_heads":5}}"#);
        assert!(
            e.contains("perceiver_config") && e.contains("num_key_value_heads"),
            "{e}"
        );
        let e = err(
            r#"{"model_type":"idefics2","image_token_id":40000,"text_config":{"vocab_size":32003}}"#,
        );
        assert!(e.contains("image_token_id"), "{e}");
        let e = err(r#"{"model_type":"idefics2","vision_config":{"hidden_size":"big"}}"#);
        assert!(e.contains("vision_config.hidden_size"), "{e}");
    }

    #[test]
    fn serialized_config_round_trips() {
        let c = Idefics2Config::from_json_str(IDEFICS2_8B).unwrap();
        let mut v = serde_json::to_value(&c).unwrap();
        v["model_type"] = "idefics2".into();
        assert_eq!(Idefics2Config::from_json_value(&v).unwrap(), c);
    }
}
