//! Scores from predictions: per task, the mean of the per-sample scores (or CIDEr-D over the task's
//! corpus), times 100 as the papers report them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::cider::cider_d;
use crate::metric::Metric;
use crate::predictions::{read_predictions, Prediction};
use crate::ptb::tokenize_caption;
use crate::report::{GroupReport, Report, RunInfo, TaskReport};
use crate::{EvalError, Result};

/// Score predictions grouped by `(task, metric)`. Returns the task reports (sorted by task, then metric)
/// and each prediction's own score, in input order: in [0, 1] for per-sample metrics, the per-image
/// CIDEr-D value as the official scorer returns it (0..10 scale) for CIDEr.
///
/// Errors on a duplicate `(task, id)` or an empty ground truth, which would silently skew a score.
pub fn score_predictions(predictions: &[Prediction]) -> Result<(Vec<TaskReport>, Vec<f64>)> {
    let mut seen = HashSet::new();
    for p in predictions {
        if !seen.insert((&p.task, &p.id)) {
            return Err(EvalError::Invalid(format!(
                "duplicate prediction for task {} id {}",
                p.task, p.id
            )));
        }
        if p.answers.is_empty() {
            return Err(EvalError::Invalid(format!(
                "prediction {} of task {} has no ground-truth answers (test splits are scored by their servers)",
                p.id, p.task
            )));
        }
        if p.metric == Metric::MultipleChoice && p.choices.is_empty() {
            return Err(EvalError::Invalid(format!(
                "multiple-choice prediction {} of task {} has no `choices`",
                p.id, p.task
            )));
        }
    }

    let mut groups: BTreeMap<(String, Metric), Vec<usize>> = BTreeMap::new();
    for (i, p) in predictions.iter().enumerate() {
        groups
            .entry((p.task.clone(), p.metric))
            .or_default()
            .push(i);
    }
    let mut per_sample = vec![0.0; predictions.len()];
    let mut reports = Vec::new();
    for ((task, metric), indices) in groups {
        let score = if metric.is_corpus_level() {
            let tokenize = |s: &str| match metric {
                Metric::Cider => tokenize_caption(s),
                _ => s.to_string(),
            };
            let candidates: Vec<String> = indices
                .iter()
                .map(|&i| tokenize(&predictions[i].prediction))
                .collect();
            let references: Vec<Vec<String>> = indices
                .iter()
                .map(|&i| predictions[i].answers.iter().map(|a| tokenize(a)).collect())
                .collect();
            let (mean, scores) = cider_d(&candidates, &references).ok_or_else(|| {
                EvalError::Invalid(format!("task {task}: cannot compute CIDEr-D"))
            })?;
            for (&i, s) in indices.iter().zip(scores) {
                per_sample[i] = s;
            }
            mean
        } else {
            let mut sum = 0.0;
            for &i in &indices {
                let p = &predictions[i];
                let s = metric
                    .score_sample(&p.prediction, &p.answers, &p.choices)
                    .unwrap_or(0.0);
                per_sample[i] = s;
                sum += s;
            }
            sum / indices.len() as f64
        };
        reports.push(TaskReport {
            task,
            metric,
            score: 100.0 * score,
            count: indices.len(),
        });
    }
    Ok((reports, per_sample))
}

/// Per-source scores: for each `(task, source, metric)` of the predictions that name a source, the mean of
/// `per_sample` (as [`score_predictions`] returns it) times 100. Corpus-level metrics (CIDEr) are not split.
pub fn score_groups(predictions: &[Prediction], per_sample: &[f64]) -> Vec<GroupReport> {
    let mut groups: BTreeMap<(&str, &str, Metric), (f64, usize)> = BTreeMap::new();
    for (p, s) in predictions.iter().zip(per_sample) {
        let Some(source) = p.source.as_deref() else {
            continue;
        };
        if p.metric.is_corpus_level() {
            continue;
        }
        let entry = groups.entry((&p.task, source, p.metric)).or_default();
        entry.0 += s;
        entry.1 += 1;
    }
    groups
        .into_iter()
        .map(|((task, source, metric), (sum, count))| GroupReport {
            task: task.to_string(),
            source: source.to_string(),
            metric,
            score: 100.0 * sum / count.max(1) as f64,
            count,
            baseline: None,
        })
        .collect()
}

/// The report of a set of predictions: per task, per source, with the run description (and its baselines).
/// An empty set gives a report with no scores.
pub fn build_report(run: RunInfo, predictions: &[Prediction]) -> Result<Report> {
    if predictions.is_empty() {
        return Ok(Report::new(run, Vec::new()));
    }
    let (tasks, per_sample) = score_predictions(predictions)?;
    let groups = score_groups(predictions, &per_sample);
    Ok(Report::new(run, tasks).with_groups(groups))
}

/// Recompute the report of a predictions file without the model. Run information is taken from a
/// `run.json` next to the file when there is one.
pub fn rescore(path: &Path) -> Result<Report> {
    let predictions = read_predictions(path)?;
    if predictions.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: no predictions",
            path.display()
        )));
    }
    let run_path = path.with_file_name("run.json");
    let run = if run_path.exists() {
        RunInfo::read(&run_path)?
    } else {
        RunInfo::default()
    };
    build_report(run, &predictions)
}
