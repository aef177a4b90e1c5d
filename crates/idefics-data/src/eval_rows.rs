//! Question-answer rows for evaluation, read from parquet: The Cauldron layout and the layouts of the public
//! evaluation mirrors (lmms-lab on the Hub), told apart by the file's columns.
//!
//! | layout | columns read |
//! |---|---|
//! | The Cauldron | `images: list<image>`, `texts: list<{user, assistant, source}>`: one row per turn |
//! | evaluation mirror | `question`; `answers` (`list<string>`, or VQAv2's `list<{answer, ...}>`) or `answer`; `image` (or `images: list<image>`, or MMMU's `image_1`..`image_7`); optional id (`question_id`, `questionId`, `index`, `id`), options (`options` as a list or as MMMU's Python-list string, or MMBench's `A`..`E` columns), MMBench's `hint` |
//!
//! This covers VQAv2 (`question_id, question, answers: list<{answer, answer_confidence, answer_id}>, image`),
//! TextVQA (`answers: list<string>`), DocVQA (`questionId`), ChartQA (`answer`), MMBench (`index, hint, A..D,
//! answer`), AI2D (`options`, `answer` = option index) and MMMU (`options` string, `image_1..`, letter answer).

use std::fs::File;
use std::path::Path;

use arrow_array::{
    Array, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StructArray,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{DataError, Result};
use crate::readers::columns::{image_at, list_at, string_at, struct_field};
use crate::readers::SampleKind;
use crate::sample::{ChatSample, ImageSource};

/// One question with its images and ground truth, whatever layout it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct QaRow {
    /// The id column's value, else `<file stem>:<row>` (The Cauldron: `<file stem>:<row>:<turn>`).
    pub id: String,
    pub images: Vec<ImageSource>,
    pub question: String,
    /// Reference answers; for multiple choice, the gold letter.
    pub answers: Vec<String>,
    /// Option texts for multiple choice (letters A, B, ... in this order); empty otherwise.
    pub choices: Vec<String>,
    /// The Cauldron turn's `source` (e.g. `synth_shapes`); `None` for the mirrors.
    pub source: Option<String>,
}

/// Which layout a file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QaLayout {
    /// `images` + `texts` conversations; each turn's user text is the whole prompt (with its instruction).
    Cauldron,
    /// One question per row (VQAv2, TextVQA, DocVQA, ChartQA, MMBench, AI2D, MMMU mirrors).
    Mirror,
}

const ID_COLUMNS: [&str; 5] = ["question_id", "questionId", "index", "id", "qid"];
const LETTERS: [&str; 9] = ["A", "B", "C", "D", "E", "F", "G", "H", "I"];

/// The columns a mirror file uses (found once from the schema).
struct MirrorColumns {
    id: Option<String>,
    answers: String,
    images: Vec<String>,
    options: Option<String>,
    letters: Vec<String>,
    hint: bool,
}

fn detect(path: &Path, names: &[String]) -> Result<(QaLayout, Option<MirrorColumns>)> {
    let has = |n: &str| names.iter().any(|x| x == n);
    let missing = |column: &str, what: &str| {
        DataError::Schema {
        path: path.to_path_buf(),
        column: column.to_string(),
        message: format!(
            "missing; {what} (columns present: {}). Expected The Cauldron (`images`, `texts`) or an \
             evaluation-mirror layout (`question`, `answers` or `answer`, `image`)",
            names.join(", ")
        ),
    }
    };
    if has("texts") {
        if !has("images") {
            return Err(missing(
                "images",
                "The Cauldron layout needs it next to `texts`",
            ));
        }
        return Ok((QaLayout::Cauldron, None));
    }
    if !has("question") {
        return Err(missing("question", "every evaluation layout has one"));
    }
    let answers = ["answers", "answer"]
        .into_iter()
        .find(|c| has(c))
        .ok_or_else(|| missing("answers", "nor is there an `answer` column"))?;
    let images: Vec<String> = if has("image") {
        vec!["image".into()]
    } else if has("images") {
        vec!["images".into()]
    } else {
        (1..=7)
            .map(|k| format!("image_{k}"))
            .filter(|c| has(c))
            .collect()
    };
    if images.is_empty() {
        return Err(missing("image", "nor `images` or `image_1`"));
    }
    let letters: Vec<String> = LETTERS
        .iter()
        .take_while(|l| has(l))
        .map(|l| l.to_string())
        .collect();
    Ok((
        QaLayout::Mirror,
        Some(MirrorColumns {
            id: ID_COLUMNS.iter().find(|c| has(c)).map(|c| c.to_string()),
            answers: answers.to_string(),
            images,
            options: has("options").then(|| "options".to_string()),
            letters: if letters.len() >= 2 {
                letters
            } else {
                Vec::new()
            },
            hint: has("hint"),
        }),
    ))
}

impl MirrorColumns {
    fn all(&self) -> Vec<&str> {
        let mut v = vec!["question", self.answers.as_str()];
        v.extend(self.id.as_deref());
        v.extend(self.images.iter().map(String::as_str));
        v.extend(self.options.as_deref());
        v.extend(self.letters.iter().map(String::as_str));
        if self.hint {
            v.push("hint");
        }
        v
    }
}

/// Reads the question-answer rows of a parquet file (at most `limit`), detecting its layout from the schema.
/// A malformed row is an error naming the file, row and column: a benchmark must not silently lose questions.
pub fn read_qa_parquet(path: &Path, limit: Option<usize>) -> Result<(QaLayout, Vec<QaRow>)> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let parquet_err = |source| DataError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let (layout, mirror) = detect(path, &names)?;
    let wanted: Vec<&str> = match &mirror {
        Some(m) => m.all(),
        None => ChatSample::COLUMNS.to_vec(),
    };
    let indices: Vec<usize> = wanted
        .iter()
        .filter_map(|w| names.iter().position(|n| n == w))
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let batches = builder
        .with_projection(mask)
        .with_batch_size(64)
        .build()
        .map_err(parquet_err)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = path.parent().unwrap_or(Path::new(""));
    let limit = limit.unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    let mut row = 0;
    for batch in batches {
        let batch = batch.map_err(|source| DataError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        for i in 0..batch.num_rows() {
            if rows.len() >= limit {
                return Ok((layout, rows));
            }
            let result = match &mirror {
                Some(m) => {
                    mirror_row(&batch, i, m, root, &format!("{stem}:{row}")).map(|r| rows.push(r))
                }
                None => ChatSample::from_row(&batch, i, root).map(|chat| {
                    for (t, turn) in chat.turns.into_iter().enumerate() {
                        rows.push(QaRow {
                            id: format!("{stem}:{row}:{t}"),
                            images: chat.images.clone(),
                            question: turn.user,
                            answers: vec![turn.assistant],
                            choices: Vec::new(),
                            source: (!turn.source.is_empty()).then_some(turn.source),
                        });
                    }
                }),
            };
            result.map_err(|m| DataError::row(path, row, m))?;
            row += 1;
        }
    }
    rows.truncate(limit);
    Ok((layout, rows))
}

fn col<'a>(batch: &'a RecordBatch, name: &str) -> std::result::Result<&'a dyn Array, String> {
    batch
        .column_by_name(name)
        .map(|c| c.as_ref())
        .ok_or_else(|| format!("`{name}`: missing"))
}

/// A string, or a number written as a string (ids and answers are numbers in some mirrors).
fn scalar_at(arr: &dyn Array, i: usize) -> std::result::Result<Option<String>, String> {
    if arr.is_null(i) {
        return Ok(None);
    }
    let any = arr.as_any();
    if let Some(a) = any.downcast_ref::<Int64Array>() {
        return Ok(Some(a.value(i).to_string()));
    }
    if let Some(a) = any.downcast_ref::<Int32Array>() {
        return Ok(Some(a.value(i).to_string()));
    }
    if let Some(a) = any.downcast_ref::<Float64Array>() {
        return Ok(Some(a.value(i).to_string()));
    }
    if let Some(a) = any.downcast_ref::<Float32Array>() {
        return Ok(Some(a.value(i).to_string()));
    }
    string_at(arr, i)
}

/// A list of strings, or of VQAv2 answer structs (`{answer, answer_confidence, answer_id}`).
fn answer_list(list: &dyn Array) -> std::result::Result<Vec<String>, String> {
    let values: &dyn Array = if list.as_any().is::<StructArray>() {
        struct_field(list, "answer")?.as_ref()
    } else {
        list
    };
    let mut out = Vec::with_capacity(values.len());
    for j in 0..values.len() {
        out.extend(scalar_at(values, j).map_err(|e| format!("[{j}]: {e}"))?);
    }
    Ok(out)
}

/// MMBench stores missing hints and options as null or as the string `nan` (pandas' NaN written out).
fn present(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty() && s.trim() != "nan")
}

fn mirror_row(
    batch: &RecordBatch,
    i: usize,
    m: &MirrorColumns,
    root: &Path,
    default_id: &str,
) -> std::result::Result<QaRow, String> {
    let id = match &m.id {
        Some(c) => scalar_at(col(batch, c)?, i)
            .map_err(|e| format!("`{c}`: {e}"))?
            .unwrap_or_else(|| default_id.to_string()),
        None => default_id.to_string(),
    };
    let mut question = string_at(col(batch, "question")?, i)
        .map_err(|e| format!("`question`: {e}"))?
        .ok_or("`question` is null")?;
    if m.hint {
        if let Some(hint) =
            present(string_at(col(batch, "hint")?, i).map_err(|e| format!("`hint`: {e}"))?)
        {
            // lmms-eval's MMBench prompt: the hint on its own line before the question.
            question = format!("{hint}\n{question}");
        }
    }
    let answers_col = col(batch, &m.answers)?;
    let mut answers = match list_at(answers_col, i) {
        Ok(Some(list)) => answer_list(list.as_ref()).map_err(|e| format!("`{}`{e}", m.answers))?,
        Ok(None) => Vec::new(),
        Err(_) => scalar_at(answers_col, i)
            .map_err(|e| format!("`{}`: {e}", m.answers))?
            .into_iter()
            .collect(),
    };
    let mut images = Vec::new();
    for c in &m.images {
        let arr = col(batch, c)?;
        match list_at(arr, i) {
            Ok(Some(list)) => {
                for j in 0..list.len() {
                    images.extend(
                        image_at(list.as_ref(), j, root).map_err(|e| format!("`{c}[{j}]`: {e}"))?,
                    );
                }
            }
            Ok(None) => {}
            Err(_) => images.extend(image_at(arr, i, root).map_err(|e| format!("`{c}`: {e}"))?),
        }
    }
    let mut choices = Vec::new();
    if let Some(c) = &m.options {
        let arr = col(batch, c)?;
        choices = match list_at(arr, i) {
            Ok(Some(list)) => answer_list(list.as_ref()).map_err(|e| format!("`{c}`{e}"))?,
            Ok(None) => Vec::new(),
            Err(_) => match string_at(arr, i).map_err(|e| format!("`{c}`: {e}"))? {
                Some(text) => parse_py_list(&text).map_err(|e| format!("`{c}`: {e}"))?,
                None => Vec::new(),
            },
        };
    } else {
        for c in &m.letters {
            match present(scalar_at(col(batch, c)?, i).map_err(|e| format!("`{c}`: {e}"))?) {
                Some(text) => choices.push(text),
                None => break,
            }
        }
    }
    if !choices.is_empty() {
        answers = answers
            .iter()
            .map(|a| gold_letter(a, &choices))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format!("`{}`: {e}", m.answers))?;
    }
    Ok(QaRow {
        id,
        images,
        question,
        answers,
        choices,
        source: None,
    })
}

/// The gold answer of a multiple-choice row as a letter: a letter already (MMBench, MMMU), an option index
/// (AI2D stores `"0"`..`"3"`), or the option text itself.
fn gold_letter(answer: &str, choices: &[String]) -> std::result::Result<String, String> {
    let a = answer.trim();
    let letter = |k: usize| LETTERS.get(k).map(|l| l.to_string());
    if let Some(k) = LETTERS.iter().position(|l| l.eq_ignore_ascii_case(a)) {
        if k < choices.len() {
            return Ok(LETTERS[k].to_string());
        }
    }
    if let Ok(k) = a.parse::<usize>() {
        if k < choices.len() {
            if let Some(l) = letter(k) {
                return Ok(l);
            }
        }
    }
    if let Some(k) = choices.iter().position(|c| c.trim() == a) {
        if let Some(l) = letter(k) {
            return Ok(l);
        }
    }
    Err(format!(
        "answer {answer:?} is not a letter, an index or the text of one of the {} options",
        choices.len()
    ))
}

/// A Python list of string literals as MMMU stores its options (`"['a', \"b's\"]"`); JSON lists pass too.
fn parse_py_list(text: &str) -> std::result::Result<Vec<String>, String> {
    let body = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| format!("expected a list like ['a', 'b'], found {text:?}"))?;
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else { break };
        if quote != '\'' && quote != '"' {
            return Err(format!("expected a quoted string in {text:?}"));
        }
        let mut item = String::new();
        loop {
            match chars.next() {
                None => return Err(format!("unterminated string in {text:?}")),
                Some(c) if c == quote => break,
                Some('\\') => match chars.next() {
                    Some('n') => item.push('\n'),
                    Some('t') => item.push('\t'),
                    Some(c) => item.push(c),
                    None => return Err(format!("unterminated string in {text:?}")),
                },
                Some(c) => item.push(c),
            }
        }
        out.push(item);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_lists_and_gold_letters() {
        assert_eq!(
            parse_py_list(r#"['$6', "it's", 'a\'b']"#).unwrap(),
            ["$6", "it's", "a'b"]
        );
        assert_eq!(parse_py_list("[]").unwrap(), Vec::<String>::new());
        assert!(parse_py_list("['open").is_err());
        let choices: Vec<String> = ["cat", "dog", "cow"].map(String::from).to_vec();
        assert_eq!(gold_letter("b", &choices).unwrap(), "B");
        assert_eq!(gold_letter("2", &choices).unwrap(), "C");
        assert_eq!(gold_letter("dog", &choices).unwrap(), "B");
        assert!(gold_letter("D", &choices).is_err());
    }
}
