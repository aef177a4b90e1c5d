//! The predictions file: written line by line, resumable after an interruption, rescored into a report.

use std::io::Write;

use idefics_eval::{read_predictions, rescore, Metric, Prediction, PredictionWriter, RunInfo};

fn prediction(id: &str, pred: &str) -> Prediction {
    Prediction {
        id: id.into(),
        task: "textvqa".into(),
        metric: Metric::VqaAccuracy,
        question: "what is written?".into(),
        prompt: "what is written?\nGive a very brief answer.".into(),
        prediction: pred.into(),
        answers: vec!["stop".into(); 10],
        choices: vec![],
        source: None,
    }
}

#[test]
fn resume_skips_done_samples_and_cuts_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.jsonl");
    {
        let mut w = PredictionWriter::open_resume(&path).unwrap();
        w.write(&prediction("1", "stop")).unwrap();
        w.write(&prediction("2", "go")).unwrap();
    }
    // A run killed mid-line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"id\": \"3\", \"ta")
        .unwrap();
    assert_eq!(read_predictions(&path).unwrap().len(), 2);

    let mut w = PredictionWriter::open_resume(&path).unwrap();
    assert_eq!(w.completed(), 2);
    assert!(w.is_done("textvqa", "1") && w.is_done("textvqa", "2") && !w.is_done("textvqa", "3"));
    assert!(!w.is_done("vqav2", "1"));
    w.write(&prediction("3", "stop")).unwrap();
    drop(w);

    let all = read_predictions(&path).unwrap();
    assert_eq!(
        all.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    let report = rescore(&path).unwrap();
    assert_eq!(report.tasks.len(), 1);
    assert_eq!(report.tasks[0].count, 3);
    assert!((report.tasks[0].score - 200.0 / 3.0).abs() < 1e-9);
}

#[test]
fn a_bad_line_in_the_middle_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    let good = serde_json::to_string(&prediction("1", "stop")).unwrap();
    std::fs::write(&path, format!("{good}\nnot json\n{good}\n")).unwrap();
    let err = read_predictions(&path).unwrap_err().to_string();
    assert!(err.contains("p.jsonl:2:"), "{err}");
}

#[test]
fn duplicates_and_missing_ground_truth_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    let line = serde_json::to_string(&prediction("1", "stop")).unwrap();
    std::fs::write(&path, format!("{line}\n{line}\n")).unwrap();
    assert!(rescore(&path)
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
    let mut p = prediction("1", "stop");
    p.answers.clear();
    std::fs::write(&path, serde_json::to_string(&p).unwrap() + "\n").unwrap();
    assert!(rescore(&path)
        .unwrap_err()
        .to_string()
        .contains("no ground-truth"));
}

#[test]
fn report_carries_the_run_description() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("predictions.jsonl");
    let mut w = PredictionWriter::open_resume(&path).unwrap();
    w.write(&prediction("1", "Stop")).unwrap();
    let run = RunInfo {
        model: Some("HuggingFaceM4/idefics2-8b".into()),
        revision: Some("abc123".into()),
        processor: Some(serde_json::json!({"do_image_splitting": true})),
        prompt_template: Some("{question}\nGive a very brief answer.".into()),
        decoding: Some(serde_json::json!({"greedy": true, "max_new_tokens": 16})),
        shots: Some(0),
        seed: None,
        data: Some("textvqa val".into()),
        ..RunInfo::default()
    };
    std::fs::write(
        dir.path().join("run.json"),
        serde_json::to_string(&run).unwrap(),
    )
    .unwrap();
    let report = rescore(&path).unwrap();
    assert_eq!(report.run, run);
    // All ten answers are "stop": the current scorer does not normalise "Stop", so it scores 0.
    assert_eq!(report.tasks[0].score, 0.0);
    let md = report.to_markdown();
    assert!(md.contains("| textvqa | vqa_accuracy | 0.00 | 1 |"), "{md}");
    assert!(
        md.contains("revision: abc123") && md.contains("do_image_splitting"),
        "{md}"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["idefics_version"], env!("CARGO_PKG_VERSION"));
    report.write(dir.path()).unwrap();
    assert!(dir.path().join("report.json").is_file() && dir.path().join("report.md").is_file());
}

#[test]
fn a_file_without_final_newline_gets_one_before_appending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    let line = serde_json::to_string(&prediction("1", "stop")).unwrap();
    std::fs::write(&path, &line).unwrap(); // complete record, no newline
    let mut w = PredictionWriter::open_resume(&path).unwrap();
    assert!(w.is_done("textvqa", "1"));
    w.write(&prediction("2", "stop")).unwrap();
    drop(w);
    assert_eq!(read_predictions(&path).unwrap().len(), 2);
}

#[test]
fn vqa_server_results_use_integer_question_ids() {
    let json = idefics_eval::vqa_results_json(&[prediction("420", "two")]).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        parsed,
        serde_json::json!([{"question_id": 420, "answer": "two"}])
    );
    assert!(idefics_eval::vqa_results_json(&[prediction("q1", "x")])
        .unwrap_err()
        .to_string()
        .contains("q1"));
}
