//! The bundled model (`models/idefics2-tiny`, trained by `recipes/tiny/run.sh`, copied by `bundle.sh`) as a
//! user meets it:
//! - on a held-out set generated with a seed that no training run used, its accuracy stays above the floor
//!   stated in the README;
//! - on the questions only the image can answer (the `basics` family), it does better with each question's
//!   own image than with another question's: it reads its images;
//! - the README's first command, run as written, gets the answer its example image was drawn with.

mod common;

use common::{read_json, root};
use serde_json::Value;
use std::path::Path;

/// Never used by the recipe (training seed 0, its held-out seed derived from 0) nor by the example images
/// (20251128).
const FRESH_SEED: &str = "20261128";
/// Held-out scenes per task family: 50 x 3 questions for the four main families and 50 x 1.5 for the
/// single-object scenes, about 680 questions.
const HELDOUT_PER_FAMILY: &str = "50";
/// Overall exact-match floor (percent), stated in the README next to the measured accuracy.
const OVERALL_FLOOR: f64 = 31.0;
/// Points by which the single-object questions must score higher with their own images than with swapped
/// ones (stated in the README next to the measured gap).
const IMAGE_GAP_FLOOR: f64 = 30.0;

/// `idefics ARGS` from the repository root (the README's commands are written from there).
fn idefics(args: &[&str]) -> std::process::Output {
    common::idefics_ok_in(&root(), args)
}

/// `idefics eval --task synth --no-split` with the default (bundled) model on `data`: its report.
fn eval_bundled(data: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--batch-size", "8"];
    args.extend_from_slice(extra);
    common::eval_synth_in(&root(), data, out, &args);
    read_json(&out.join("report.json"))
}

/// The score of one source (`synth_<family>`) in a report.
fn family_score(report: &Value, source: &str) -> f64 {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["source"] == source)
        .unwrap_or_else(|| panic!("no {source} in the report"))["score"]
        .as_f64()
        .unwrap()
}

#[test]
fn bundled_model_stays_above_its_floors_on_a_fresh_heldout_set() {
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("synth");
    idefics(&[
        "data",
        "synth",
        "--out",
        synth.to_str().unwrap(),
        "--n",
        "1",
        "--heldout",
        HELDOUT_PER_FAMILY,
        "--seed",
        FRESH_SEED,
    ]);
    // No --model: the bundled model is the default.
    let report = eval_bundled(&synth, &dir.path().join("eval"), &[]);
    let overall = &report["tasks"][0];
    let count = overall["count"].as_u64().unwrap();
    let score = overall["score"].as_f64().unwrap();
    assert!(count >= 200, "only {count} held-out questions");
    let per_family: Vec<String> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| format!("{} {:.1}", g["source"], g["score"].as_f64().unwrap()))
        .collect();
    assert!(
        score >= OVERALL_FLOOR,
        "bundled model: {score:.1}% on {count} fresh held-out questions, floor {OVERALL_FLOOR}% \
         (per family: {per_family:?})"
    );

    // The text-only control on the questions no prior can answer: the same questions, other images.
    let basics = synth.join("heldout/chat_basics.parquet");
    let swapped = eval_bundled(&basics, &dir.path().join("swapped"), &["--swap-images"]);
    let right = family_score(&report, "synth_basics");
    let wrong = family_score(&swapped, "synth_basics");
    assert!(
        right - wrong >= IMAGE_GAP_FLOOR,
        "single-object questions: {right:.1}% with their own images, {wrong:.1}% with swapped ones; \
         the gap must be at least {IMAGE_GAP_FLOOR} points"
    );
}

/// Splits a command line as a POSIX shell would for plain words and "double-quoted" or 'single-quoted'
/// arguments (all the README uses).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

#[test]
fn shell_words_splits_like_a_shell() {
    assert_eq!(
        shell_words(r#"ask --image a.png "How many shapes?"  'x y'"#),
        ["ask", "--image", "a.png", "How many shapes?", "x y"]
    );
}

/// The README's first line of code asks the bundled model about an example image; the answer must be the
/// one that image was drawn with (examples/images/questions.jsonl, written by the generator).
#[test]
fn readme_first_command_gets_the_right_answer() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let first = readme
        .split("```bash\n")
        .nth(1)
        .and_then(|block| block.lines().next())
        .expect("README starts with a bash block");
    let words = shell_words(first);
    let prefix = ["cargo", "run", "-p", "idefics-cli", "--"];
    assert_eq!(
        words[..prefix.len()],
        prefix,
        "README first command: {first}"
    );
    let args: Vec<&str> = words[prefix.len()..].iter().map(String::as_str).collect();
    assert_eq!(args[0], "ask");
    assert!(
        !args.contains(&"--model"),
        "the first command uses the bundled model"
    );
    let image = args[args.iter().position(|a| *a == "--image").unwrap() + 1];
    let question = *args.last().unwrap();

    // The expected answer comes from the generator's record of that image, not from the model.
    let file_name = Path::new(image).file_name().unwrap().to_str().unwrap();
    let questions =
        std::fs::read_to_string(root().join("examples/images/questions.jsonl")).unwrap();
    let expected = questions
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|sample| sample["images"][0] == file_name)
        .flat_map(|sample| sample["texts"].as_array().unwrap().clone())
        // The README writes the recorded "question\ninstruction" on one line.
        .find(|turn| turn["user"].as_str().unwrap().replace('\n', " ") == question)
        .unwrap_or_else(|| panic!("{question:?} is not a recorded question of {file_name}"))
        ["assistant"]
        .as_str()
        .unwrap()
        .to_string();

    let answer = idefics(&args);
    let answer = String::from_utf8_lossy(&answer.stdout);
    assert_eq!(answer.trim(), expected, "README: {first}");
}
