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
    'batches: for batch in batches {
        let batch = batch.map_err(|source| DataError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        for i in 0..batch.num_rows() {
            if rows.len() >= limit {
                break 'batches;
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
    // A chat row holds several questions, so the last row read may overshoot the limit.
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
    use std::sync::Arc;

    use arrow_array::{ArrayRef, BinaryArray, Int64Array, ListArray, StringArray};
    use arrow_buffer::OffsetBuffer;
    use arrow_schema::{DataType, Field, Fields};
    use parquet::arrow::ArrowWriter;

    fn strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(v.iter().copied().collect::<StringArray>())
    }

    /// HF `Image` structs holding `bytes` (a stand-in for PNG bytes: the reader does not decode).
    fn images(n: usize) -> ArrayRef {
        let bytes: BinaryArray = (0..n).map(|i| Some(vec![i as u8; 3])).collect();
        let paths: StringArray = (0..n).map(|_| None::<&str>).collect();
        Arc::new(StructArray::new(
            Fields::from(vec![
                Field::new("bytes", DataType::Binary, true),
                Field::new("path", DataType::Utf8, true),
            ]),
            vec![Arc::new(bytes), Arc::new(paths)],
            None,
        ))
    }

    fn list(values: ArrayRef, lengths: Vec<usize>) -> ArrayRef {
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", values.data_type().clone(), true)),
            OffsetBuffer::from_lengths(lengths),
            values,
            None,
        ))
    }

    fn write(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) -> std::path::PathBuf {
        let path = dir.join(name);
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut w =
            ArrowWriter::try_new(File::create(&path).unwrap(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        path
    }

    #[test]
    fn vqav2_mirror_answers_are_structs() {
        let dir = tempfile::tempdir().unwrap();
        let answer_structs = StructArray::new(
            Fields::from(vec![
                Field::new("answer", DataType::Utf8, true),
                Field::new("answer_confidence", DataType::Utf8, true),
                Field::new("answer_id", DataType::Int64, true),
            ]),
            vec![
                strings(&[Some("2"), Some("two"), Some("yes")]),
                strings(&[Some("yes"), Some("maybe"), Some("yes")]),
                Arc::new(Int64Array::from(vec![1, 2, 1])),
            ],
            None,
        );
        let path = write(
            dir.path(),
            "vqav2.parquet",
            vec![
                (
                    "question_id",
                    Arc::new(Int64Array::from(vec![262148000, 7])),
                ),
                ("question", strings(&[Some("How many?"), Some("Is it?")])),
                ("answers", list(Arc::new(answer_structs), vec![2, 1])),
                ("image", images(2)),
            ],
        );
        let (layout, rows) = read_qa_parquet(&path, None).unwrap();
        assert_eq!(layout, QaLayout::Mirror);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, "262148000");
        assert_eq!(rows[0].answers, ["2", "two"]);
        assert_eq!(rows[1].answers, ["yes"]);
        assert_eq!(rows[1].images, [ImageSource::Bytes(vec![1; 3])]);
        assert!(rows[0].choices.is_empty());
        let (_, limited) = read_qa_parquet(&path, Some(1)).unwrap();
        assert_eq!(limited.len(), 1);
    }

    #[test]
    fn docvqa_textvqa_and_chartqa_mirrors() {
        let dir = tempfile::tempdir().unwrap();
        let doc = write(
            dir.path(),
            "docvqa.parquet",
            vec![
                ("questionId", strings(&[Some("q1")])),
                ("question", strings(&[Some("What date?")])),
                (
                    "answers",
                    list(strings(&[Some("1 May"), Some("May 1")]), vec![2]),
                ),
                ("image", images(1)),
            ],
        );
        let (_, rows) = read_qa_parquet(&doc, None).unwrap();
        assert_eq!((rows[0].id.as_str(), rows[0].answers.len()), ("q1", 2));
        let chart = write(
            dir.path(),
            "chartqa.parquet",
            vec![
                ("question", strings(&[Some("Max?"), Some("Min?")])),
                ("answer", strings(&[Some("42"), Some("7")])),
                ("image", images(2)),
            ],
        );
        let (_, rows) = read_qa_parquet(&chart, None).unwrap();
        assert_eq!(rows[1].id, "chartqa:1", "no id column: file stem and row");
        assert_eq!(rows[1].answers, ["7"]);
    }

    #[test]
    fn mmbench_ai2d_and_mmmu_become_multiple_choice() {
        let dir = tempfile::tempdir().unwrap();
        let mmbench = write(
            dir.path(),
            "mmbench.parquet",
            vec![
                ("index", Arc::new(Int64Array::from(vec![10, 11]))),
                ("question", strings(&[Some("Which?"), Some("What?")])),
                ("hint", strings(&[Some("Look left."), Some("nan")])),
                ("A", strings(&[Some("cat"), Some("x")])),
                ("B", strings(&[Some("dog"), Some("y")])),
                ("C", strings(&[Some("cow"), Some("nan")])),
                ("D", strings(&[None, None])),
                ("answer", strings(&[Some("C"), Some("B")])),
                ("image", images(2)),
            ],
        );
        let (_, rows) = read_qa_parquet(&mmbench, None).unwrap();
        assert_eq!(rows[0].question, "Look left.\nWhich?");
        assert_eq!(rows[0].choices, ["cat", "dog", "cow"]);
        assert_eq!(rows[0].answers, ["C"]);
        assert_eq!(rows[1].question, "What?");
        assert_eq!(rows[1].choices, ["x", "y"]);
        assert_eq!(rows[1].id, "11");

        let ai2d = write(
            dir.path(),
            "ai2d.parquet",
            vec![
                ("question", strings(&[Some("Which stage?")])),
                (
                    "options",
                    list(
                        strings(&[Some("egg"), Some("larva"), Some("adult")]),
                        vec![3],
                    ),
                ),
                ("answer", strings(&[Some("1")])),
                ("image", images(1)),
            ],
        );
        let (_, rows) = read_qa_parquet(&ai2d, None).unwrap();
        assert_eq!(rows[0].answers, ["B"], "AI2D's answer is the option index");

        let mmmu = write(
            dir.path(),
            "mmmu.parquet",
            vec![
                (
                    "id",
                    strings(&[Some("validation_Art_1"), Some("validation_Art_2")]),
                ),
                (
                    "question",
                    strings(&[Some("<image 1> Price?"), Some("Year?")]),
                ),
                ("options", strings(&[Some("['$6', '$7']"), Some("[]")])),
                ("answer", strings(&[Some("B"), Some("1890")])),
                ("image_1", images(2)),
                (
                    "image_2",
                    Arc::new(StructArray::new_null(
                        Fields::from(vec![
                            Field::new("bytes", DataType::Binary, true),
                            Field::new("path", DataType::Utf8, true),
                        ]),
                        2,
                    )),
                ),
            ],
        );
        let (_, rows) = read_qa_parquet(&mmmu, None).unwrap();
        assert_eq!(rows[0].choices, ["$6", "$7"]);
        assert_eq!(rows[0].answers, ["B"]);
        assert_eq!(rows[0].images.len(), 1, "null image_2 is skipped");
        assert!(rows[1].choices.is_empty(), "open question");
        assert_eq!(rows[1].answers, ["1890"]);
    }

    #[test]
    fn missing_columns_and_bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let no_answer = write(
            dir.path(),
            "a.parquet",
            vec![("question", strings(&[Some("Q")])), ("image", images(1))],
        );
        let err = read_qa_parquet(&no_answer, None).unwrap_err().to_string();
        assert!(
            err.contains("a.parquet") && err.contains("`answers`"),
            "{err}"
        );
        assert!(err.contains("columns present: question, image"), "{err}");
        let no_image = write(
            dir.path(),
            "b.parquet",
            vec![
                ("question", strings(&[Some("Q")])),
                ("answer", strings(&[Some("x")])),
            ],
        );
        let err = read_qa_parquet(&no_image, None).unwrap_err().to_string();
        assert!(err.contains("`image`"), "{err}");
        let bad_gold = write(
            dir.path(),
            "c.parquet",
            vec![
                ("question", strings(&[Some("Q"), Some("Q2")])),
                ("A", strings(&[Some("a"), Some("a")])),
                ("B", strings(&[Some("b"), Some("b")])),
                ("answer", strings(&[Some("A"), Some("E")])),
                ("image", images(2)),
            ],
        );
        let err = read_qa_parquet(&bad_gold, None).unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains("\"E\""), "{err}");
    }

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
