//! Benchmark data readers that need no model: the VQAv2 official JSON files (also OKVQA, which uses the
//! same format) and a simple JSONL format, into the common [`EvalSample`].
//! (Parquet readers for The Cauldron and the public evaluation mirrors come later.)

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{EvalError, Result};

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSource {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// One benchmark question, whatever file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSample {
    /// Unique within the task (VQAv2: the `question_id`).
    pub id: String,
    pub task: String,
    /// Images in the order the prompt refers to them.
    pub images: Vec<ImageSource>,
    pub question: String,
    /// Ground truth: human answers, references, or gold letter(s) for multiple choice. Empty for
    /// server-scored test splits.
    pub answers: Vec<String>,
    /// Option texts for multiple choice (letters A, B, ... in this order); empty otherwise.
    pub choices: Vec<String>,
}

#[derive(Deserialize)]
struct VqaQuestionsFile {
    #[serde(default)]
    data_subtype: Option<String>,
    questions: Vec<VqaQuestion>,
}

#[derive(Deserialize)]
struct VqaQuestion {
    question_id: u64,
    image_id: u64,
    question: String,
}

#[derive(Deserialize)]
struct VqaAnnotationsFile {
    annotations: Vec<VqaAnnotation>,
}

#[derive(Deserialize)]
struct VqaAnnotation {
    question_id: u64,
    answers: Vec<VqaAnswer>,
}

#[derive(Deserialize)]
struct VqaAnswer {
    answer: String,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        message: format!("not a {what} file: {e}"),
    })
}

/// Read the official VQAv2 files: `questions` (e.g. `v2_OpenEnded_mscoco_val2014_questions.json`), the
/// optional `annotations` (`v2_mscoco_val2014_annotations.json`; absent for test-dev) and the COCO image
/// folder, where image `N` of subtype `S` is `COCO_{S}_{N:012}.jpg`.
///
/// Samples follow the questions file's order. Errors name the missing image or question.
pub fn read_vqav2(questions: &Path, annotations: Option<&Path>, image_dir: &Path, task: &str) -> Result<Vec<EvalSample>> {
    let qfile: VqaQuestionsFile = read_json(questions, "VQA questions")?;
    let subtype = qfile.data_subtype.ok_or_else(|| {
        EvalError::Invalid(format!("{}: no `data_subtype` (e.g. \"val2014\") to name the images", questions.display()))
    })?;
    let mut answers_by_id: HashMap<u64, Vec<String>> = HashMap::new();
    if let Some(path) = annotations {
        let afile: VqaAnnotationsFile = read_json(path, "VQA annotations")?;
        for a in afile.annotations {
            answers_by_id.insert(a.question_id, a.answers.into_iter().map(|x| x.answer).collect());
        }
    }
    let mut samples = Vec::with_capacity(qfile.questions.len());
    for q in qfile.questions {
        let answers = match annotations {
            Some(path) => answers_by_id.remove(&q.question_id).ok_or_else(|| {
                EvalError::Invalid(format!("{}: no annotation for question_id {}", path.display(), q.question_id))
            })?,
            None => Vec::new(),
        };
        let image = image_dir.join(format!("COCO_{subtype}_{:012}.jpg", q.image_id));
        if !image.is_file() {
            return Err(EvalError::Invalid(format!(
                "image for question_id {} not found: {}",
                q.question_id,
                image.display()
            )));
        }
        samples.push(EvalSample {
            id: q.question_id.to_string(),
            task: task.to_string(),
            images: vec![ImageSource::Path(image)],
            question: q.question,
            answers,
            choices: Vec::new(),
        });
    }
    Ok(samples)
}

/// One line of the JSONL format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlSample {
    id: serde_json::Value,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    images: Vec<String>,
    question: String,
    #[serde(default)]
    answers: Vec<String>,
    #[serde(default)]
    answer: Option<String>,
    #[serde(default)]
    choices: Vec<String>,
}

/// Read the JSONL format: one object per line with `id` (string or number), `question`, `image` (one
/// path) or `images` (paths), `answers` (list) or `answer` (one string), optional `choices` and `task`.
/// Relative image paths are relative to the JSONL file's folder. `task` defaults to `default_task`.
pub fn read_jsonl(path: &Path, default_task: &str) -> Result<Vec<EvalSample>> {
    let file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut samples = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| EvalError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let parse_err = |message: String| EvalError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let raw: JsonlSample = serde_json::from_str(&line).map_err(|e| parse_err(format!("bad sample: {e}")))?;
        let id = match raw.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(parse_err(format!("`id` must be a string or a number, got {other}"))),
        };
        let mut answers = raw.answers;
        answers.extend(raw.answer);
        let images = raw
            .image
            .into_iter()
            .chain(raw.images)
            .map(|p| ImageSource::Path(base.join(p)))
            .collect();
        samples.push(EvalSample {
            id,
            task: raw.task.unwrap_or_else(|| default_task.to_string()),
            images,
            question: raw.question,
            answers,
            choices: raw.choices,
        });
    }
    Ok(samples)
}
