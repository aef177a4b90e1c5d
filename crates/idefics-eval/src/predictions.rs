//! The predictions file: one JSON object per line, written (and flushed) as each prediction is produced,
//! so an interrupted run loses at most the line being written and resumes where it stopped.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metric::Metric;
use crate::{EvalError, Result};

/// One scored sample as written to `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Sample id, unique within its task (e.g. the VQAv2 `question_id`).
    pub id: String,
    /// Benchmark name (e.g. `vqav2`).
    pub task: String,
    /// The metric that scores this sample.
    pub metric: Metric,
    /// The question as in the data (without prompt decoration).
    #[serde(default)]
    pub question: String,
    /// The full text prompt given to the model (with `<image>` placeholders).
    #[serde(default)]
    pub prompt: String,
    /// The model's answer as generated (stop words removed, nothing else).
    pub prediction: String,
    /// Ground truth: the human answers, the references, or the gold letter(s) for multiple choice.
    pub answers: Vec<String>,
    /// Option texts for multiple choice, in presentation order (letters A, B, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// Sub-set of the task (The Cauldron's `source`); the report scores each one too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Read a predictions file. A torn last line (a run killed while writing it) is skipped with a warning;
/// any other bad line is an error naming its line number.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    Ok(read_valid_prefix(path)?.0)
}

/// The valid records and the byte length of the valid prefix (where a torn tail starts).
fn read_valid_prefix(path: &Path) -> Result<(Vec<Prediction>, u64)> {
    let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let mut records = Vec::new();
    let mut valid_len = 0u64;
    let mut line_no = 0;
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .map_err(|e| EvalError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.ends_with('\n');
        let text = buf.trim();
        if text.is_empty() {
            valid_len += n as u64;
            continue;
        }
        match serde_json::from_str::<Prediction>(text) {
            Ok(p) => {
                records.push(p);
                valid_len += n as u64;
            }
            Err(_) if !complete => {
                tracing::warn!(
                    "{}:{line_no}: ignoring a truncated last line",
                    path.display()
                );
                break;
            }
            Err(e) => {
                return Err(EvalError::Parse {
                    path: path.to_path_buf(),
                    line: line_no,
                    message: format!("not a prediction record: {e}"),
                })
            }
        }
    }
    Ok((records, valid_len))
}

/// Appends predictions to a file, one flushed line each, remembering which samples are already done.
pub struct PredictionWriter {
    path: PathBuf,
    file: File,
    done: HashSet<(String, String)>,
}

impl PredictionWriter {
    /// Open `path` for a run: create it, or resume it (keep its records, cut a torn last line).
    pub fn open_resume(path: &Path) -> Result<Self> {
        let mut done = HashSet::new();
        if path.exists() {
            let (records, valid_len) = read_valid_prefix(path)?;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| EvalError::io(path, e))?;
            file.set_len(valid_len)
                .map_err(|e| EvalError::io(path, e))?;
            done.extend(records.into_iter().map(|p| (p.task, p.id)));
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EvalError::io(path, e))?;
        // A file that ended without a newline (hand-edited) would glue the next record onto its last line.
        ensure_trailing_newline(path, &mut file)?;
        Ok(PredictionWriter {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    /// Whether a prediction for this sample is already in the file.
    pub fn is_done(&self, task: &str, id: &str) -> bool {
        self.done.contains(&(task.to_string(), id.to_string()))
    }

    /// Number of samples already in the file.
    pub fn completed(&self) -> usize {
        self.done.len()
    }

    /// Append one prediction and flush it to the OS.
    pub fn write(&mut self, prediction: &Prediction) -> Result<()> {
        let mut line = serde_json::to_string(prediction).map_err(|e| {
            EvalError::Invalid(format!(
                "cannot serialise prediction {}: {e}",
                prediction.id
            ))
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| EvalError::io(&self.path, e))?;
        self.done
            .insert((prediction.task.clone(), prediction.id.clone()));
        Ok(())
    }
}

fn ensure_trailing_newline(path: &Path, file: &mut File) -> Result<()> {
    let len = file.metadata().map_err(|e| EvalError::io(path, e))?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    let mut reader = File::open(path).map_err(|e| EvalError::io(path, e))?;
    reader
        .seek(SeekFrom::Start(len - 1))
        .and_then(|_| reader.read_exact(&mut last))
        .map_err(|e| EvalError::io(path, e))?;
    if last[0] != b'\n' {
        file.write_all(b"\n").map_err(|e| EvalError::io(path, e))?;
    }
    Ok(())
}

/// The VQA results file the official scorer and the EvalAI server (VQAv2 test-dev/test) take:
/// `[{"question_id": int, "answer": str}, ...]`, with the prediction as generated (the scorer normalises).
pub fn vqa_results_json(predictions: &[Prediction]) -> Result<String> {
    let mut results = Vec::with_capacity(predictions.len());
    for p in predictions {
        let question_id: u64 = p.id.parse().map_err(|_| {
            EvalError::Invalid(format!(
                "prediction id {:?} is not a VQA question_id (an integer)",
                p.id
            ))
        })?;
        results.push(serde_json::json!({"question_id": question_id, "answer": p.prediction}));
    }
    serde_json::to_string(&results)
        .map_err(|e| EvalError::Invalid(format!("cannot serialise results: {e}")))
}
