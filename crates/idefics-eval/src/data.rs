//! Benchmark data readers that need no model, into the common [`EvalSample`]: the VQAv2 official JSON
//! files (also OKVQA, which uses the same format), a simple JSONL format, and parquet in The Cauldron layout
//! or the layouts of the public evaluation mirrors (read by `idefics_data::eval_rows`). [`read_eval_data`]
//! picks the reader from the path, and finds the synthetic set's chance levels.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::report::Baseline;
use crate::{EvalError, Result};

pub use idefics_data::ImageSource;

/// One benchmark question, whatever file it came from.
#[derive(Debug, Clone, PartialEq, Default)]
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
    /// Sub-set the sample belongs to (The Cauldron's `source`, e.g. `synth_shapes`): the report also scores
    /// each source on its own.
    pub source: Option<String>,
    /// The question is already the whole user turn, instruction included (The Cauldron rows): the instruct
    /// prompt uses it as it is instead of appending the benchmark instruction.
    pub verbatim: bool,
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
pub fn read_vqav2(
    questions: &Path,
    annotations: Option<&Path>,
    image_dir: &Path,
    task: &str,
) -> Result<Vec<EvalSample>> {
    let qfile: VqaQuestionsFile = read_json(questions, "VQA questions")?;
    let subtype = qfile.data_subtype.ok_or_else(|| {
        EvalError::Invalid(format!(
            "{}: no `data_subtype` (e.g. \"val2014\") to name the images",
            questions.display()
        ))
    })?;
    let mut answers_by_id: HashMap<u64, Vec<String>> = HashMap::new();
    if let Some(path) = annotations {
        let afile: VqaAnnotationsFile = read_json(path, "VQA annotations")?;
        for a in afile.annotations {
            answers_by_id.insert(
                a.question_id,
                a.answers.into_iter().map(|x| x.answer).collect(),
            );
        }
    }
    let mut samples = Vec::with_capacity(qfile.questions.len());
    for q in qfile.questions {
        let answers = match annotations {
            Some(path) => answers_by_id.remove(&q.question_id).ok_or_else(|| {
                EvalError::Invalid(format!(
                    "{}: no annotation for question_id {}",
                    path.display(),
                    q.question_id
                ))
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
            ..EvalSample::default()
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
        let raw: JsonlSample =
            serde_json::from_str(&line).map_err(|e| parse_err(format!("bad sample: {e}")))?;
        let id = match raw.id {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(parse_err(format!(
                    "`id` must be a string or a number, got {other}"
                )))
            }
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
            ..EvalSample::default()
        });
    }
    Ok(samples)
}

/// Read a folder laid out as the VQAv2 download unpacks: one `*questions*.json`, at most one
/// `*annotations*.json`, and the images either in a sub-folder named after the questions' `data_subtype`
/// (e.g. `val2014/`) or in the folder itself.
pub fn read_vqav2_dir(dir: &Path, task: &str) -> Result<Vec<EvalSample>> {
    let entries = std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut questions = Vec::new();
    let mut annotations = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| EvalError::io(dir, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.ends_with(".json") {
            continue;
        }
        if name.contains("questions") {
            questions.push(path);
        } else if name.contains("annotations") {
            annotations.push(path);
        }
    }
    let one = |mut found: Vec<PathBuf>, what: &str| -> Result<Option<PathBuf>> {
        match found.len() {
            0 | 1 => Ok(found.pop()),
            _ => Err(EvalError::Invalid(format!(
                "{}: several {what} files ({}); keep one",
                dir.display(),
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    };
    let questions = one(questions, "*questions*.json")?.ok_or_else(|| {
        EvalError::Invalid(format!(
            "{}: no *questions*.json (VQAv2 layout)",
            dir.display()
        ))
    })?;
    let annotations = one(annotations, "*annotations*.json")?;
    // The image folder: `dir/<data_subtype>` when it exists (a second, light parse of the questions).
    let subtype: VqaSubtypeOnly = read_json(&questions, "VQA questions")?;
    let image_dir = subtype
        .data_subtype
        .map(|s| dir.join(s))
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| dir.to_path_buf());
    read_vqav2(&questions, annotations.as_deref(), &image_dir, task)
}

/// Read a parquet file of The Cauldron layout (one sample per turn, its `source` kept, the user turn used
/// verbatim as the prompt) or of an evaluation-mirror layout (see `idefics_data::eval_rows`), at most
/// `limit` samples. The layout is detected from the columns; a missing one is named in the error.
pub fn read_parquet(path: &Path, task: &str, limit: Option<usize>) -> Result<Vec<EvalSample>> {
    let (layout, rows) = idefics_data::eval_rows::read_qa_parquet(path, limit)
        .map_err(|e| EvalError::Invalid(e.to_string()))?;
    let verbatim = layout == idefics_data::eval_rows::QaLayout::Cauldron;
    Ok(rows
        .into_iter()
        .map(|r| EvalSample {
            id: r.id,
            task: task.to_string(),
            images: r
                .images
                .into_iter()
                .map(|i| match i {
                    idefics_data::ImageSource::Bytes(b) => ImageSource::Bytes(b),
                    idefics_data::ImageSource::Path(p) => ImageSource::Path(p),
                })
                .collect(),
            question: r.question,
            answers: r.answers,
            choices: r.choices,
            source: r.source,
            verbatim,
        })
        .collect())
}

/// Samples and what the report prints next to their scores.
#[derive(Debug, Clone, Default)]
pub struct EvalData {
    pub samples: Vec<EvalSample>,
    /// Chance levels per source (the synthetic set's `metadata.json`); empty for other data.
    pub baselines: BTreeMap<String, Baseline>,
}

/// Read benchmark data from `path`, at most `limit` samples:
/// - a `.jsonl` file ([`read_jsonl`]) or a `.parquet` file ([`read_parquet`]);
/// - the output folder of `idefics data synth` (its `heldout/` split is read), or one of its split folders:
///   the `chat_*.parquet` files, with the chance levels of `metadata.json` as baselines;
/// - a folder of `.parquet` files (all read, in name order);
/// - a VQAv2-layout folder ([`read_vqav2_dir`]).
pub fn read_eval_data(path: &Path, task: &str, limit: Option<usize>) -> Result<EvalData> {
    if !path.is_dir() {
        let samples = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => read_jsonl(path, task)?,
            Some("parquet") => read_parquet(path, task, limit)?,
            _ if !path.exists() => {
                return Err(EvalError::Invalid(format!("{}: not found", path.display())))
            }
            _ => {
                return Err(EvalError::Invalid(format!(
                    "{}: expected a .jsonl or .parquet file, or a folder (VQAv2 layout, parquet files, \
                     or `idefics data synth` output)",
                    path.display()
                )))
            }
        };
        return Ok(EvalData {
            samples: truncated(samples, limit),
            baselines: BTreeMap::new(),
        });
    }
    // `idefics data synth` output: `DIR/metadata.json` with `DIR/heldout/`, or a split folder inside it.
    let (dir, metadata) = if path.join("metadata.json").is_file() && path.join("heldout").is_dir() {
        (
            path.join("heldout"),
            Some((path.join("metadata.json"), "heldout".to_string())),
        )
    } else {
        let split = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = path.parent().map(|p| p.join("metadata.json"));
        (
            path.to_path_buf(),
            meta.filter(|m| m.is_file()).map(|m| (m, split)),
        )
    };
    let mut parquet: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| EvalError::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parquet.sort();
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    // A synthetic split also holds pairs.parquet and interleaved.parquet, which are not questions.
    if parquet.iter().any(|p| name(p).starts_with("chat_")) {
        parquet.retain(|p| name(p).starts_with("chat_"));
    }
    if parquet.is_empty() {
        let samples = read_vqav2_dir(&dir, task)?;
        return Ok(EvalData {
            samples: truncated(samples, limit),
            baselines: BTreeMap::new(),
        });
    }
    let mut samples = Vec::new();
    for file in &parquet {
        let left = limit.map(|l| l.saturating_sub(samples.len()));
        if left == Some(0) {
            break;
        }
        samples.extend(read_parquet(file, task, left)?);
    }
    let baselines = match metadata {
        Some((meta, split)) => synth_baselines(&meta, &split)?,
        None => BTreeMap::new(),
    };
    Ok(EvalData { samples, baselines })
}

fn truncated(mut samples: Vec<EvalSample>, limit: Option<usize>) -> Vec<EvalSample> {
    if let Some(limit) = limit {
        samples.truncate(limit);
    }
    samples
}

/// The chance levels of each family of one split of a synthetic set's `metadata.json`, keyed by the
/// `source` its rows carry (`synth_<family>`), in %.
pub fn synth_baselines(metadata: &Path, split: &str) -> Result<BTreeMap<String, Baseline>> {
    let value: serde_json::Value = read_json(metadata, "synthetic-set metadata")?;
    let families = value
        .get("splits")
        .and_then(|s| s.get(split))
        .and_then(|s| s.get("families"))
        .and_then(|f| f.as_object())
        .ok_or_else(|| {
            EvalError::Invalid(format!(
                "{}: no `splits.{split}.families`",
                metadata.display()
            ))
        })?;
    let mut out = BTreeMap::new();
    for (family, stats) in families {
        let get = |key: &str| {
            stats.get(key).and_then(|v| v.as_f64()).ok_or_else(|| {
                EvalError::Invalid(format!(
                    "{}: family {family} has no number `{key}`",
                    metadata.display()
                ))
            })
        };
        out.insert(
            format!("synth_{family}"),
            Baseline {
                chance_uniform: 100.0 * get("chance_uniform")?,
                majority_baseline: 100.0 * get("majority_baseline")?,
            },
        );
    }
    Ok(out)
}

#[derive(Deserialize)]
struct VqaSubtypeOnly {
    #[serde(default)]
    data_subtype: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn vqav2_folder_is_read_with_answers_and_image_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            &d.join("v2_OpenEnded_mscoco_val2014_questions.json"),
            r#"{"data_subtype": "val2014", "questions": [{"image_id": 42, "question": "What?", "question_id": 420}]}"#,
        );
        write(
            &d.join("v2_mscoco_val2014_annotations.json"),
            r#"{"annotations": [{"question_id": 420, "image_id": 42, "answers": [{"answer": "cat", "answer_confidence": "yes", "answer_id": 1}, {"answer": "dog", "answer_confidence": "maybe", "answer_id": 2}]}]}"#,
        );
        std::fs::create_dir(d.join("val2014")).unwrap();
        write(&d.join("val2014/COCO_val2014_000000000042.jpg"), "");
        let samples = read_vqav2_dir(d, "vqav2").unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].id, "420");
        assert_eq!(samples[0].answers, ["cat", "dog"]);
        assert_eq!(
            samples[0].images,
            [ImageSource::Path(
                d.join("val2014/COCO_val2014_000000000042.jpg")
            )]
        );
    }

    #[test]
    fn vqav2_errors_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = read_vqav2_dir(d, "vqav2").unwrap_err().to_string();
        assert!(err.contains("questions"), "{err}");
        write(
            &d.join("q_questions.json"),
            r#"{"data_subtype": "val2014", "questions": [{"image_id": 7, "question": "Q", "question_id": 1}]}"#,
        );
        let err = read_vqav2_dir(d, "vqav2").unwrap_err().to_string();
        assert!(err.contains("COCO_val2014_000000000007.jpg"), "{err}");
        write(&d.join("a_annotations.json"), r#"{"annotations": []}"#);
        write(&d.join("COCO_val2014_000000000007.jpg"), "");
        let err = read_vqav2_dir(d, "vqav2").unwrap_err().to_string();
        assert!(err.contains("no annotation for question_id 1"), "{err}");
    }

    #[test]
    fn jsonl_reads_both_answer_forms_and_relative_images() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        write(
            &path,
            "{\"id\": 1, \"image\": \"a.png\", \"question\": \"Q1\", \"answer\": \"x\"}\n\n{\"id\": \"b\", \"images\": [\"/abs.png\"], \"question\": \"Q2\", \"answers\": [\"A\"], \"choices\": [\"c1\", \"c2\"], \"task\": \"mmmu\"}\n",
        );
        let s = read_jsonl(&path, "custom").unwrap();
        assert_eq!(s[0].id, "1");
        assert_eq!(s[0].task, "custom");
        assert_eq!(s[0].answers, ["x"]);
        assert_eq!(s[0].images, [ImageSource::Path(dir.path().join("a.png"))]);
        assert_eq!(s[1].task, "mmmu");
        assert_eq!(s[1].choices.len(), 2);
        assert_eq!(s[1].images, [ImageSource::Path(PathBuf::from("/abs.png"))]);
        write(
            &path,
            "{\"id\": 1, \"question\": \"Q\", \"answr\": \"typo\"}\n",
        );
        let err = read_jsonl(&path, "t").unwrap_err().to_string();
        assert!(err.contains(":1:") && err.contains("answr"), "{err}");
    }
}
