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
        read_config_file(path, Self::from_json_value)
    }

    /// Parses a config from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::from_json_value(&parse_json(text)?)
    }

    /// Parses a config from a JSON value, applying transformers' defaults and validating it.
    pub fn from_json_value(v: &Value) -> Result<Self> {
        match model_type_of(v)? {
            Some("idefics2") => {}
            Some(other) => {
                return Err(Error::Config(format!(
                    "model_type is \"{other}\", expected \"idefics2\" (this is not an Idefics2 checkpoint)"
                )))
            }
            None => return Err(Error::Config("model_type is missing, expected \"idefics2\"".into())),
        }
        let file: Idefics2File = deserialize_value(v)?;
        let vision_config = file
            .vision_config
            .unwrap_or_default()
            .resolve(VisionConfig::default());
        let mut perceiver_config = file.perceiver_config.unwrap_or_default().resolve();
        let text_config = match file.text_config {
            None => TextConfig::default(),
            Some(text) => text.mistral()?,
        };
        // Idefics2Config.__post_init__: the perceiver inherits hidden_size AND rms_norm_eps from the text config
        // only when the hidden sizes differ (idefics2-8b: equal, so the perceiver keeps eps 1e-6).
        if perceiver_config.hidden_size != text_config.hidden_size {
            perceiver_config.hidden_size = text_config.hidden_size;
            perceiver_config.rms_norm_eps = text_config.rms_norm_eps;
        }
        let cfg = Idefics2Config {
            vision_config,
            perceiver_config,
            text_config,
            image_token_id: file.image_token_id.unwrap_or(32001),
            tie_word_embeddings: file.tie_word_embeddings.unwrap_or(false),
            dtype: stored_dtype(file.dtype, file.torch_dtype),
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

/// Idefics2's `config.json` as written on disk; `model_type` is checked before (its error says which model it is).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Idefics2File {
    vision_config: Option<VisionFile>,
    perceiver_config: Option<PerceiverFile>,
    text_config: Option<TextFile>,
    image_token_id: Option<u32>,
    tie_word_embeddings: Option<bool>,
    dtype: Option<Value>,
    torch_dtype: Option<Value>,
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

/// `Idefics2PerceiverConfig` as written on disk.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PerceiverFile {
    #[serde(deserialize_with = "hf_activation")]
    hidden_act: Option<Activation>,
    hidden_size: Option<usize>,
    rms_norm_eps: Option<f64>,
    resampler_n_latents: Option<usize>,
    resampler_depth: Option<usize>,
    resampler_n_heads: Option<usize>,
    resampler_head_dim: Option<usize>,
    num_key_value_heads: Option<usize>,
}

impl PerceiverFile {
    fn resolve(self) -> PerceiverConfig {
        let d = PerceiverConfig::default();
        PerceiverConfig {
            hidden_act: self.hidden_act.unwrap_or(d.hidden_act),
            hidden_size: self.hidden_size.unwrap_or(d.hidden_size),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(d.rms_norm_eps),
            resampler_n_latents: self.resampler_n_latents.unwrap_or(d.resampler_n_latents),
            resampler_depth: self.resampler_depth.unwrap_or(d.resampler_depth),
            resampler_n_heads: self.resampler_n_heads.unwrap_or(d.resampler_n_heads),
            resampler_head_dim: self.resampler_head_dim.unwrap_or(d.resampler_head_dim),
            num_key_value_heads: self.num_key_value_heads.unwrap_or(d.num_key_value_heads),
        }
    }
}

impl TextFile {
    /// A Mistral `text_config`: missing keys take `MistralConfig` class defaults (note rms_norm_eps 1e-6 and
    /// max_position_embeddings 131072 there, unlike the no-text-config default of `Idefics2Config`).
    fn mistral(self) -> Result<TextConfig> {
        self.check_model_type("mistral")?;
        let (rope_theta, rope) = self.rope();
        if let Some((_, params)) = rope {
            let kind = params.kind();
            if kind != "default" {
                return Err(Error::Config(format!(
                    "text_config rope_type \"{kind}\" is not supported (only \"default\")"
                )));
            }
        }
        let defaults = TextConfig {
            max_position_embeddings: 131072,
            rms_norm_eps: 1e-6,
            pad_token_id: None,
            ..TextConfig::default()
        };
        let mut text = self.resolve(&defaults, rope_theta)?;
        text.sliding_window = self.sliding_window.unwrap_or(defaults.sliding_window);
        Ok(text)
    }
}

use crate::config_file::{
    deserialize_value, hf_activation, model_type_of, parse_json, read_config_file, stored_dtype,
    TextFile, VisionFile,
};

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
    fn accepts_4x_rope_theta_and_torch_dtype() {
        let json = r#"{"model_type":"idefics2","torch_dtype":"float16","text_config":{"model_type":"mistral",
            "rope_theta":1000000.0,"rope_scaling":null,"vocab_size":32003}}"#;
        let c = Idefics2Config::from_json_str(json).unwrap();
        assert_eq!(c.text_config.rope_theta, 1000000.0);
        assert_eq!(c.dtype.as_deref(), Some("float16"));
        // A 4.x rope_scaling dict of type "default" carrying its own theta: the dict's value wins.
        let json = r#"{"model_type":"idefics2","text_config":{"rope_theta":1000.0,
            "rope_scaling":{"type":"default","rope_theta":2000.0},"vocab_size":32003}}"#;
        assert_eq!(
            Idefics2Config::from_json_str(json)
                .unwrap()
                .text_config
                .rope_theta,
            2000.0
        );
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let json = r#"{"model_type":"idefics2","transformers_version":"5.24.0","use_cache":true,
            "vision_config":{"attention_dropout":0.0,"initializer_range":0.02},
            "perceiver_config":{"attention_dropout":0.0},
            "text_config":{"model_type":"mistral","attention_dropout":0.0,"layer_types":["full_attention"],"vocab_size":32003}}"#;
        let c = Idefics2Config::from_json_str(json).unwrap();
        assert_eq!(c.vision_config, VisionConfig::default());
        assert_eq!(c.text_config.max_position_embeddings, 131072);
    }

    #[test]
    fn null_means_none_only_where_transformers_says_so() {
        // sliding_window / pad / bos / eos: null disables, absent takes the default.
        let json = r#"{"model_type":"idefics2","text_config":{"sliding_window":null,"bos_token_id":null,
            "eos_token_id":null,"pad_token_id":7,"vocab_size":32003}}"#;
        let t = Idefics2Config::from_json_str(json).unwrap().text_config;
        assert_eq!(
            (
                t.sliding_window,
                t.bos_token_id,
                t.eos_token_id,
                t.pad_token_id
            ),
            (None, None, None, Some(7))
        );
        let t = Idefics2Config::from_json_str(
            r#"{"model_type":"idefics2","text_config":{"vocab_size":32003}}"#,
        )
        .unwrap()
        .text_config;
        assert_eq!(t.sliding_window, Some(4096));
        assert_eq!(t.bos_token_id, Some(1));
        assert_eq!(t.eos_token_id, Some(Value::from(2)));
        assert_eq!(t.pad_token_id, None);
        // Elsewhere null is the class default.
        let json = r#"{"model_type":"idefics2","vision_config":{"hidden_size":null},"image_token_id":null,
            "text_config":{"vocab_size":32003}}"#;
        let c = Idefics2Config::from_json_str(json).unwrap();
        assert_eq!(c.vision_config.hidden_size, 768);
        assert_eq!(c.image_token_id, 32001);
    }

    #[test]
    fn square_pairs_are_sides() {
        let json = r#"{"model_type":"idefics2","vision_config":{"image_size":[980,980],"patch_size":[14,14]},
            "text_config":{"vocab_size":32003}}"#;
        let c = Idefics2Config::from_json_str(json).unwrap();
        assert_eq!(c.vision_config.num_patches_per_side(), 70);
        let e = err(r#"{"model_type":"idefics2","vision_config":{"image_size":[980,490]}}"#);
        assert!(
            e.contains("vision_config.image_size") && e.contains("[n, n]"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_name_the_key_and_the_file() {
        for (json, key) in [
            (
                r#"{"model_type":"idefics2","text_config":{"rope_parameters":{"rope_theta":"big"}}}"#,
                "text_config.rope_parameters.rope_theta",
            ),
            (
                r#"{"model_type":"idefics2","text_config":{"sliding_window":-1}}"#,
                "text_config.sliding_window",
            ),
            (
                r#"{"model_type":"idefics2","text_config":{"pad_token_id":5000000000}}"#,
                "text_config.pad_token_id",
            ),
            (
                r#"{"model_type":"idefics2","perceiver_config":{"resampler_depth":2.5}}"#,
                "perceiver_config.resampler_depth",
            ),
            (
                r#"{"model_type":"idefics2","tie_word_embeddings":"yes"}"#,
                "tie_word_embeddings",
            ),
            (
                r#"{"model_type":"idefics2","text_config":7}"#,
                "text_config",
            ),
        ] {
            let e = err(json);
            assert!(
                e.contains(&format!("{key}: ")) && !e.contains('\n'),
                "{key}: {e}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"model_type":"idefics2","vision_config":{"num_hidden_layers":"many"}}"#,
        )
        .unwrap();
        let e = Idefics2Config::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string())
                && e.contains("vision_config.num_hidden_layers")
                && e.contains("many"),
            "{e}"
        );
        std::fs::write(&path, "{").unwrap();
        let e = Idefics2Config::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("not valid JSON"),
            "{e}"
        );
    }

    #[test]
    fn serialized_config_round_trips() {
        let c = Idefics2Config::from_json_str(IDEFICS2_8B).unwrap();
        let mut v = serde_json::to_value(&c).unwrap();
        v["model_type"] = "idefics2".into();
        assert_eq!(Idefics2Config::from_json_value(&v).unwrap(), c);
    }
}
