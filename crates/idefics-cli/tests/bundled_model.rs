//! The bundled model (`models/idefics2-tiny`, trained by `recipes/tiny/run.sh`, copied by `bundle.sh`) as a
//! user meets it:
//! - on a held-out set generated with a seed that no training run used, its accuracy stays above the floor
//!   stated in the README;
//! - the README's first command, run as written, gets the answer its example image was drawn with.

mod common;

use common::{read_json, root};
use std::path::Path;

/// Never used by the recipe (training seed 0, its held-out seed derived from 0) nor by the example images
/// (20251128).
const FRESH_SEED: &str = "20261128";
/// Held-out scenes per task family; each has 3 questions, so 4 x 50 x 3 = 600 questions.
const HELDOUT_PER_FAMILY: &str = "50";
/// Overall exact-match floor (percent), stated in the README next to the measured accuracy.
const OVERALL_FLOOR: f64 = 20.0;

/// `idefics ARGS` from the repository root (the README's commands are written from there).
fn idefics(args: &[&str]) -> std::process::Output {
    common::idefics_ok_in(&root(), args)
}

#[test]
fn bundled_model_stays_above_its_floor_on_a_fresh_heldout_set() {
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("synth");
    let synth = synth.to_str().unwrap();
    idefics(&[
        "data",
        "synth",
        "--out",
        synth,
        "--n",
        "1",
        "--heldout",
        HELDOUT_PER_FAMILY,
        "--seed",
        FRESH_SEED,
    ]);
    let out = dir.path().join("eval");
    // No --model: the bundled model is the default.
    idefics(&[
        "eval",
        "--task",
        "synth",
        "--data",
        synth,
        "--no-split",
        "--batch-size",
        "8",
        "--out",
        out.to_str().unwrap(),
    ]);
    let report = read_json(&out.join("report.json"));
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
