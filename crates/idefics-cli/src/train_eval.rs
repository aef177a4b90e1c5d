//! Evaluation during training (`[eval]` of a recipe): the model being trained answers a held-out set in memory
//! (no checkpoint written or re-read), scored per task family as `idefics eval` scores it.

use idefics::pipeline::Pipeline;
use idefics_eval::data::{read_eval_data, EvalData, EvalSample};
use idefics_eval::runner::{evaluate, EvalRunConfig};
use idefics_train::recipe::EvalSection;
use idefics_train::trainable::TrainableModel;
use idefics_train::TrainError;
use std::path::{Path, PathBuf};

/// The held-out samples (read once) and how to score them.
pub struct TrainEval {
    data: EvalData,
    config: EvalRunConfig,
    processor_dir: PathBuf,
}

impl TrainEval {
    /// Reads `section.data` (Cauldron parquet, `idefics data synth` output, ...), at most `limit` samples.
    pub fn new(section: &EvalSection, processor_dir: &Path) -> anyhow::Result<Self> {
        let task = "synth";
        let mut data = read_eval_data(&section.data, task, None)?;
        data.samples = balanced_subset(std::mem::take(&mut data.samples), section.limit);
        let mut config = EvalRunConfig::new(task);
        config.max_new_tokens = Some(section.max_new_tokens);
        config.do_image_splitting = section.split;
        config.batch_size = 4;
        Ok(Self {
            data,
            config,
            processor_dir: processor_dir.to_path_buf(),
        })
    }

    /// Scores the current weights: `{"overall": %, "per_source": {...}, "n": samples}`.
    pub fn run(&mut self, model: &TrainableModel) -> Result<serde_json::Value, TrainError> {
        let pipeline = Pipeline::from_parts(model.model().clone(), &self.processor_dir)?;
        let scores = evaluate(&pipeline, &self.data, &self.config)?;
        Ok(serde_json::json!({
            "overall": scores.overall(),
            "per_source": scores.per_source(),
            "n": scores.predictions.len(),
            "failures": scores.failures.len(),
        }))
    }

    /// One line for the progress output.
    pub fn summary(&self, result: &serde_json::Value) -> String {
        let mut s = format!(
            "overall {:.1}%",
            result["overall"].as_f64().unwrap_or(f64::NAN)
        );
        if let Some(per) = result["per_source"].as_object() {
            for (k, v) in per {
                s.push_str(&format!(", {k} {:.1}%", v.as_f64().unwrap_or(f64::NAN)));
            }
        }
        s
    }
}

/// At most `limit` samples taken round-robin over the sources, so every task family is scored even when the
/// files list one family after another.
fn balanced_subset(samples: Vec<EvalSample>, limit: usize) -> Vec<EvalSample> {
    let mut by_source: std::collections::BTreeMap<String, std::collections::VecDeque<EvalSample>> =
        Default::default();
    for s in samples {
        by_source
            .entry(s.source.clone().unwrap_or_default())
            .or_default()
            .push_back(s);
    }
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit {
        let mut took = false;
        for queue in by_source.values_mut() {
            if out.len() < limit {
                if let Some(s) = queue.pop_front() {
                    out.push(s);
                    took = true;
                }
            }
        }
        if !took {
            break;
        }
    }
    out
}
