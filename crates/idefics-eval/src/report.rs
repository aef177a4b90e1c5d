//! The evaluation report, as JSON (for machines) and Markdown (for people): one score per task, and what
//! produced it — model, revision, processor settings, prompt template, decoding parameters, our version.

use std::collections::BTreeMap;
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
    /// Chance levels per source (e.g. `synth_shapes`), from the synthetic set's `metadata.json`; the report
    /// prints them next to each source's score.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baselines: BTreeMap<String, Baseline>,
}

/// What guessing scores on a source, in % like the scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Uniform guessing among each question's possible answers.
    pub chance_uniform: f64,
    /// Always answering each question type's most frequent answer.
    pub majority_baseline: f64,
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

/// The score of one source (sub-set) of a task, e.g. one synthetic task family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub task: String,
    pub source: String,
    pub metric: Metric,
    /// Mean score times 100.
    pub score: f64,
    pub count: usize,
    /// The source's chance levels (from [`RunInfo::baselines`]), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
}

/// A full report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Version of idefics-eval that computed the scores.
    pub idefics_version: String,
    pub run: RunInfo,
    /// One score per task (over all its sources: the overall score).
    pub tasks: Vec<TaskReport>,
    /// One score per (task, source), for data whose samples name a source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupReport>,
}

impl Report {
    /// A report stamped with this crate's version.
    pub fn new(run: RunInfo, tasks: Vec<TaskReport>) -> Report {
        Report {
            idefics_version: env!("CARGO_PKG_VERSION").to_string(),
            run,
            tasks,
            groups: Vec::new(),
        }
    }

    /// Adds per-source scores, each with its baseline from the run description when it has one.
    pub fn with_groups(mut self, mut groups: Vec<GroupReport>) -> Report {
        for g in &mut groups {
            g.baseline = self.run.baselines.get(&g.source).copied();
        }
        self.groups = groups;
        self
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
        if !self.groups.is_empty() {
            md.push_str(
                "\n## Per source\n\n| task | source | metric | score | samples | chance (uniform) | majority baseline |\n|---|---|---|---:|---:|---:|---:|\n",
            );
            for g in &self.groups {
                let (chance, majority) = match g.baseline {
                    Some(b) => (
                        format!("{:.2}", b.chance_uniform),
                        format!("{:.2}", b.majority_baseline),
                    ),
                    None => ("-".into(), "-".into()),
                };
                md.push_str(&format!(
                    "| {} | {} | {} | {:.2} | {} | {chance} | {majority} |\n",
                    g.task, g.source, g.metric, g.score, g.count
                ));
            }
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
