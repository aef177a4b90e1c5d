//! `generation_config.json`: the checkpoint's decoding defaults (end-of-sequence ids, banned tokens).

use serde::Deserialize;
use std::path::Path;

/// The parts of transformers' GenerationConfig that change what we generate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    /// Token sequences never to generate; a one-token sequence bans that token outright.
    pub bad_words_ids: Vec<Vec<u32>>,
    pub pad_token_id: Option<u32>,
    pub max_new_tokens: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct GenerationConfigFile {
    eos_token_id: Option<OneOrMany>,
    bad_words_ids: Option<Vec<Vec<u32>>>,
    pad_token_id: Option<u32>,
    max_new_tokens: Option<usize>,
}

/// Errors reading generation_config.json.
#[derive(Debug, thiserror::Error)]
pub enum GenerationConfigError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl GenerationConfig {
    /// Reads `generation_config.json` from a checkpoint directory; a missing file gives the empty config.
    pub fn from_dir(dir: &Path) -> Result<Self, GenerationConfigError> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| GenerationConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| GenerationConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let file: GenerationConfigFile = serde_json::from_str(text)?;
        let eos_token_ids = match file.eos_token_id {
            None => Vec::new(),
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
        };
        Ok(Self {
            eos_token_ids,
            bad_words_ids: file
                .bad_words_ids
                .unwrap_or_default()
                .into_iter()
                .filter(|w| !w.is_empty())
                .collect(),
            pad_token_id: file.pad_token_id,
            max_new_tokens: file.max_new_tokens,
        })
    }

    /// Tokens banned after `history`: the last token of every bad sequence whose other tokens end the history
    /// (transformers' NoBadWordsLogitsProcessor).
    pub fn banned_after(&self, history: &[u32]) -> Vec<u32> {
        self.bad_words_ids
            .iter()
            .filter_map(|words| {
                let (last, prefix) = words.split_last()?;
                history.ends_with(prefix).then_some(*last)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_idefics2_8b_generation_config() {
        let cfg = GenerationConfig::from_json(
            r#"{"bad_words_ids": [[32000], [32001]], "bos_token_id": 1, "eos_token_id": [2, 32002], "pad_token_id": 0}"#,
        )
        .unwrap();
        assert_eq!(cfg.eos_token_ids, vec![2, 32002]);
        assert_eq!(cfg.banned_after(&[5, 6]), vec![32000, 32001]);
        let base = GenerationConfig::from_json(r#"{"eos_token_id": 2}"#).unwrap();
        assert_eq!(base.eos_token_ids, vec![2]);
    }

    #[test]
    fn multi_token_bad_words_ban_only_after_their_prefix() {
        let cfg = GenerationConfig {
            bad_words_ids: vec![vec![7, 8, 9]],
            ..Default::default()
        };
        assert!(cfg.banned_after(&[1, 7]).is_empty());
        assert_eq!(cfg.banned_after(&[1, 7, 8]), vec![9]);
    }
}
