//! The evaluation report, as JSON (for machines) and Markdown (for people): one score per task, and what
//! produced it — model, revision, processor settings, prompt template, decoding parameters, our version.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::metric::Metric;
use crate::{EvalError, Result};

/// What produced the predictions. Every field is optional: a rescore of someone else's file may know none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Model directory or hub id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model revision (commit hash or a hash of the weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Processor settings (image splitting, longest edge, ...), as the processor reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processor: Option<serde_json::Value>,
    /// The prompt template, with its placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_template: Option<String>,
    /// Decoding parameters (greedy, max new tokens, stop words, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoding: Option<serde_json::Value>,
    /// In-context examples per prompt (0 for zero-shot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shots: Option<usize>,
    /// Seed of the shot selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Where the data came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl RunInfo {
    /// Read a `run.json`.
    pub fn read(path: &Path) -> Result<RunInfo> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| EvalError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            message: format!("not a run description: {e}"),
        })
    }
}

/// The score of one task under one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    pub task: String,
    pub metric: Metric,
    /// Mean score times 100 (VQA accuracy, ANLS, accuracy in %; CIDEr-D times 100 as papers print it).
    pub score: f64,
    /// Number of scored samples.
    pub count: usize,
}

/// A full report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Version of idefics-eval that computed the scores.
    pub idefics_version: String,
    pub run: RunInfo,
    pub tasks: Vec<TaskReport>,
}

impl Report {
    /// A report stamped with this crate's version.
    pub fn new(run: RunInfo, tasks: Vec<TaskReport>) -> Report {
        Report {
            idefics_version: env!("CARGO_PKG_VERSION").to_string(),
            run,
            tasks,
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A Markdown table of the scores, then the run description.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from(
            "# Evaluation report\n\n| task | metric | score | samples |\n|---|---|---:|---:|\n",
        );
        for t in &self.tasks {
            md.push_str(&format!(
                "| {} | {} | {:.2} | {} |\n",
                t.task, t.metric, t.score, t.count
            ));
        }
        md.push_str("\n## Run\n\n");
        let r = &self.run;
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| format!("`{v}`"));
        let rows: [(&str, Option<String>); 8] = [
            ("model", r.model.clone()),
            ("revision", r.revision.clone()),
            ("processor", json(&r.processor)),
            (
                "prompt template",
                r.prompt_template
                    .as_ref()
                    .map(|t| format!("`{}`", t.replace('\n', "\\n"))),
            ),
            ("decoding", json(&r.decoding)),
            ("shots", r.shots.map(|s| s.to_string())),
            ("seed", r.seed.map(|s| s.to_string())),
            ("data", r.data.clone()),
        ];
        for (name, value) in rows {
            md.push_str(&format!(
                "- {name}: {}\n",
                value.unwrap_or_else(|| "unknown".into())
            ));
        }
        md.push_str(&format!("- idefics-eval: {}\n", self.idefics_version));
        md
    }

    /// Write `report.json` and `report.md` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        let json = dir.join("report.json");
        std::fs::write(&json, self.to_json() + "\n").map_err(|e| EvalError::io(&json, e))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.to_markdown()).map_err(|e| EvalError::io(&md, e))?;
        Ok(())
    }
}
