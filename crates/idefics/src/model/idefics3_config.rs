//! `config.json` of an Idefics3 (`model_type` `idefics3`) or SmolVLM / SmolVLM2 (`smolvlm`) checkpoint.
//!
//! Both layouts transformers writes are accepted: 4.x (`text_config.rope_theta` and `rope_scaling`, `torch_dtype`)
//! and 5.x (`text_config.rope_parameters = {rope_theta, rope_type, ...}`, `dtype`). Missing fields take the class
//! defaults of transformers 5.24 (`Idefics3Config` / `SmolVLMConfig`, `Idefics3VisionConfig` /
//! `SmolVLMVisionConfig`, `LlamaConfig`; src/transformers/models/{idefics3,smolvlm,llama}/configuration_*.py).

use super::text::DecoderOptions;
use crate::config::{TextConfig, VisionConfig};
use crate::config_file::{
    deserialize_value, model_type_of, parse_json, read_config_file, stored_dtype, RopeFile,
    TextFile, VisionFile,
};
use crate::error::{Error, Result};
use crate::nn::RopeScaling;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// Which of the two transformers classes the checkpoint names. The networks are the same; SmolVLM keeps the
/// first image of a batch whose images are all padding (`SmolVLMModel.get_image_features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Idefics3Family {
    Idefics3,
    Smolvlm,
}

impl Idefics3Family {
    /// The `model_type` string of config.json.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Idefics3 => "idefics3",
            Self::Smolvlm => "smolvlm",
        }
    }
}

/// The whole checkpoint configuration (`Idefics3Config` / `SmolVLMConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Idefics3Config {
    pub model_type: Idefics3Family,
    /// SigLIP tower (`Idefics3VisionConfig`; same fields as Idefics2's).
    pub vision_config: VisionConfig,
    /// Llama decoder sizes (`sliding_window` is always `None`).
    pub text_config: TextConfig,
    /// Llama's biases and rope scaling.
    pub decoder: DecoderOptions,
    /// Pixel-shuffle factor r: `r * r` patches become one token.
    pub scale_factor: usize,
    pub image_token_id: u32,
    pub tie_word_embeddings: bool,
    /// Stored dtype as named by the file (`dtype` in 5.x, `torch_dtype` in 4.x), informational only.
    pub dtype: Option<String>,
}

impl Idefics3Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config_file(path, Self::from_json_value)
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::from_json_value(&parse_json(text)?)
    }

    /// Parses a config from a JSON value, applying transformers' defaults and validating it.
    pub fn from_json_value(v: &Value) -> Result<Self> {
        let model_type = match model_type_of(v)? {
            Some("idefics3") => Idefics3Family::Idefics3,
            Some("smolvlm") => Idefics3Family::Smolvlm,
            Some(other) => {
                return Err(Error::Config(format!(
                    "model_type is \"{other}\", expected \"idefics3\" or \"smolvlm\""
                )))
            }
            None => {
                return Err(Error::Config(
                    "model_type is missing, expected \"idefics3\" or \"smolvlm\"".into(),
                ))
            }
        };
        let file: Idefics3File = deserialize_value(v)?;
        let vision_config = file
            .vision_config
            .unwrap_or_default()
            .resolve(VisionConfig {
                hidden_size: 1152,
                num_attention_heads: 16,
                ..VisionConfig::default()
            });
        let (text_config, decoder) = llama(file.text_config)?;
        let cfg = Self {
            model_type,
            vision_config,
            text_config,
            decoder,
            scale_factor: file.scale_factor.unwrap_or(2),
            image_token_id: file.image_token_id.unwrap_or(128257),
            tie_word_embeddings: file.tie_word_embeddings.unwrap_or(false),
            dtype: stored_dtype(file.dtype, file.torch_dtype),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values this implementation supports; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let v = &self.vision_config;
        let t = &self.text_config;
        let positive = [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.patch_size", v.patch_size),
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            ("text_config.num_key_value_heads", t.num_key_value_heads),
            ("text_config.head_dim", t.head_dim),
            ("scale_factor", self.scale_factor),
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
        let sf = self.scale_factor;
        crate::config::check_tensor_sizes(&[(
            "connector projection",
            &[v.hidden_size, sf, sf, t.hidden_size],
        )])?;
        crate::config::check_text_and_vision_sizes(v, t)
    }

    /// `<image>` tokens per image (tile): `(image_size / patch_size)^2 / scale_factor^2`
    /// (`Idefics3Model.image_seq_len`).
    pub fn image_seq_len(&self) -> usize {
        let side = self.vision_config.num_patches_per_side();
        side * side / (self.scale_factor * self.scale_factor)
    }
}

/// Idefics3's / SmolVLM's `config.json` as written on disk; `model_type` is checked before.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Idefics3File {
    vision_config: Option<VisionFile>,
    text_config: Option<TextFile>,
    scale_factor: Option<usize>,
    image_token_id: Option<u32>,
    tie_word_embeddings: Option<bool>,
    dtype: Option<Value>,
    torch_dtype: Option<Value>,
}

/// A Llama `text_config`: missing keys take `LlamaConfig` class defaults; a missing `text_config` is
/// `LlamaConfig(rms_norm_eps=1e-5)` (the composite config's `sub_configs_defaults`).
fn llama(file: Option<TextFile>) -> Result<(TextConfig, DecoderOptions)> {
    let absent = file.is_none();
    let file = file.unwrap_or_default();
    file.check_model_type("llama")?;
    let num_attention_heads = file.num_attention_heads.unwrap_or(32);
    let defaults = TextConfig {
        intermediate_size: 11008,
        num_key_value_heads: num_attention_heads,
        max_position_embeddings: 2048,
        rms_norm_eps: if absent { 1e-5 } else { 1e-6 },
        sliding_window: None,
        pad_token_id: None,
        ..TextConfig::default()
    };
    let (rope_theta, rope) = file.rope();
    let text = file.resolve(&defaults, rope_theta)?;
    let decoder = DecoderOptions {
        attention_bias: file.attention_bias.unwrap_or(false),
        mlp_bias: file.mlp_bias.unwrap_or(false),
        rope_scaling: match rope {
            None => RopeScaling::Default,
            Some((key, params)) => rope_scaling(key, params, text.max_position_embeddings)?,
        },
    };
    Ok((text, decoder))
}

/// The frequency scaling of `rope_parameters` / `rope_scaling` (`key`); llama3's
/// `original_max_position_embeddings` defaults to `max_position_embeddings`.
fn rope_scaling(key: &str, p: &RopeFile, max_position_embeddings: usize) -> Result<RopeScaling> {
    let rope_type = p.kind();
    let need = |name: &str, value: Option<f64>| -> Result<f64> {
        value.ok_or_else(|| {
            Error::Config(format!(
                "text_config.{key}.{name} is required for rope_type \"{rope_type}\""
            ))
        })
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: need("factor", p.factor)?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor", p.factor)?,
            low_freq_factor: need("low_freq_factor", p.low_freq_factor)?,
            high_freq_factor: need("high_freq_factor", p.high_freq_factor)?,
            original_max_position_embeddings: p
                .original_max_position_embeddings
                .unwrap_or(max_position_embeddings),
        },
        other => {
            return Err(Error::Config(format!(
            "text_config rope_type \"{other}\" is not supported (default, linear and llama3 are)"
        )))
        }
    };
    if let RopeScaling::Llama3 {
        low_freq_factor,
        high_freq_factor,
        ..
    } = scaling
    {
        if high_freq_factor <= low_freq_factor {
            return Err(Error::Config(format!(
                "text_config.{key}.high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
            )));
        }
    }
    Ok(scaling)
}

/// `model_type` of a checkpoint directory's config.json (to pick the family before loading).
pub fn read_model_type(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    read_config_file(&path, |v| {
        model_type_of(v)?
            .map(str::to_string)
            .ok_or_else(|| Error::Config("model_type is missing".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SmolVLM-256M-Instruct text and vision sizes (the Hub's config.json), 4.x layout.
    const SMOLVLM_256M: &str = r#"{
      "model_type": "idefics3", "image_token_id": 49190, "scale_factor": 4, "tie_word_embeddings": false,
      "torch_dtype": "bfloat16",
      "text_config": {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 100000, "vocab_size": 49280,
        "perceiver_config": {"model_type": "idefics3"}, "pixel_shuffle_factor": 4, "use_resampler": false},
      "vision_config": {"hidden_size": 768, "image_size": 512, "patch_size": 16, "num_attention_heads": 12,
        "intermediate_size": 3072, "num_hidden_layers": 12}
    }"#;

    #[test]
    fn smolvlm_256m_shapes() {
        let c = Idefics3Config::from_json_str(SMOLVLM_256M).unwrap();
        assert_eq!(c.model_type, Idefics3Family::Idefics3);
        assert_eq!(c.image_seq_len(), 64);
        assert_eq!(c.text_config.head_dim, 64);
        assert_eq!(c.text_config.rope_theta, 100000.0);
        assert_eq!(c.text_config.sliding_window, None);
        assert_eq!(c.decoder, DecoderOptions::default());
        assert_eq!(c.dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn class_defaults_when_sections_are_missing() {
        // transformers' defaults alone are inconsistent (image_token_id 128257 with LlamaConfig's 32000-token
        // vocabulary); such a config is refused, naming the field.
        let e = err(r#"{"model_type": "smolvlm"}"#);
        assert!(e.contains("image_token_id (128257)"), "{e}");
        let c = Idefics3Config::from_json_str(r#"{"model_type": "smolvlm", "image_token_id": 7}"#)
            .unwrap();
        assert_eq!(c.model_type, Idefics3Family::Smolvlm);
        assert_eq!(c.scale_factor, 2);
        assert_eq!(c.vision_config.hidden_size, 1152);
        assert_eq!(c.vision_config.patch_size, 32);
        // No text_config: LlamaConfig(rms_norm_eps=1e-5); a given text_config keeps the class default 1e-6.
        assert_eq!(c.text_config.rms_norm_eps, 1e-5);
        assert_eq!(c.text_config.num_key_value_heads, 32);
        let c = Idefics3Config::from_json_str(
            r#"{"model_type": "smolvlm", "text_config": {"vocab_size": 200000}}"#,
        )
        .unwrap();
        assert_eq!(c.text_config.rms_norm_eps, 1e-6);
        // 224 / 32 = 7 patches per side: int(7 * 7 / 2^2) = 12, as transformers computes it (such a config runs
        // text only; its pixel shuffle fails on images, in transformers and here).
        assert_eq!(c.image_seq_len(), 12);
    }

    #[test]
    fn rope_scaling_in_both_layouts() {
        let v5 = r#"{"model_type": "idefics3", "image_token_id": 7, "text_config": {"max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0}}}"#;
        let c = Idefics3Config::from_json_str(v5).unwrap();
        assert_eq!(c.text_config.rope_theta, 500000.0);
        assert_eq!(
            c.decoder.rope_scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 4096
            }
        );
        let v4 = r#"{"model_type": "idefics3", "image_token_id": 7, "text_config": {"rope_theta": 1000.0,
            "rope_scaling": {"type": "linear", "factor": 2.0}, "attention_bias": true, "mlp_bias": true}}"#;
        let c = Idefics3Config::from_json_str(v4).unwrap();
        assert_eq!(c.text_config.rope_theta, 1000.0);
        assert_eq!(c.decoder.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert!(c.decoder.attention_bias && c.decoder.mlp_bias);
    }

    fn err(json: &str) -> String {
        Idefics3Config::from_json_str(json).unwrap_err().to_string()
    }

    #[test]
    fn rejects_unsupported_values_naming_the_field() {
        assert!(err(r#"{"model_type": "idefics2"}"#).contains("idefics2"));
        let e = err(r#"{"model_type": "smolvlm", "text_config": {"model_type": "mistral"}}"#);
        assert!(e.contains("text_config.model_type"), "{e}");
        let e = err(
            r#"{"model_type": "smolvlm", "text_config": {"rope_parameters": {"rope_type": "yarn", "factor": 2}}}"#,
        );
        assert!(e.contains("yarn"), "{e}");
        let e = err(
            r#"{"model_type": "smolvlm", "text_config": {"rope_parameters": {"rope_type": "llama3", "factor": 2}}}"#,
        );
        assert!(e.contains("low_freq_factor"), "{e}");
        let e = err(r#"{"model_type": "smolvlm", "scale_factor": 0}"#);
        assert!(e.contains("scale_factor"), "{e}");
        let e = err(
            r#"{"model_type": "smolvlm", "image_token_id": 40000, "text_config": {"vocab_size": 300}}"#,
        );
        assert!(e.contains("image_token_id"), "{e}");
    }

    #[test]
    fn unknown_keys_are_ignored_and_wrong_types_named() {
        let c = Idefics3Config::from_json_str(
            r#"{"model_type": "smolvlm", "image_token_id": 7, "vision_config": {"max_image_size": {"longest_edge": 512}},
            "text_config": {"model_type": "llama", "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.0}},
            "transformers_version": "5.24.0"}"#,
        )
        .unwrap();
        assert_eq!(c.decoder.rope_scaling, RopeScaling::Default);
        let e = err(
            r#"{"model_type": "smolvlm", "text_config": {"rope_scaling": {"type": "linear", "factor": "2"}}}"#,
        );
        assert!(e.contains("text_config.rope_scaling.factor: "), "{e}");
        let e = err(r#"{"model_type": "smolvlm", "text_config": {"attention_bias": 1}}"#);
        assert!(e.contains("text_config.attention_bias: "), "{e}");
        let e = err(r#"{"model_type": "smolvlm", "scale_factor": -2}"#);
        assert!(e.contains("scale_factor: "), "{e}");
        // Both spellings present: the 4.x rope_scaling dict replaces rope_parameters, as in transformers.
        let c = Idefics3Config::from_json_str(
            r#"{"model_type": "idefics3", "image_token_id": 7, "text_config": {"rope_theta": 50.0,
            "rope_parameters": {"rope_type": "default", "rope_theta": 60.0},
            "rope_scaling": {"type": "linear", "factor": 4.0}}}"#,
        )
        .unwrap();
        assert_eq!(c.text_config.rope_theta, 50.0);
        assert_eq!(c.decoder.rope_scaling, RopeScaling::Linear { factor: 4.0 });
    }

    #[test]
    fn llama3_frequencies_follow_the_three_bands() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let base = RopeScaling::Default.inv_freq(500000.0, 128);
        let scaled = scaling.inv_freq(500000.0, 128);
        // Highest frequency (wavelength 2 pi < 2048) is kept; the lowest (wavelength > 8192) divided by 8.
        assert_eq!(scaled[0], base[0]);
        assert_eq!(scaled[63], base[63] / 8.0);
        // In between, strictly between the two.
        let mid = (0..64)
            .find(|&i| {
                let w = 2.0 * std::f32::consts::PI / base[i];
                w > 2048.0 && w < 8192.0
            })
            .unwrap();
        assert!(scaled[mid] < base[mid] && scaled[mid] > base[mid] / 8.0);
    }
}
