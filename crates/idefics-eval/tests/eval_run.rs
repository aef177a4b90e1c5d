//! `run_eval` end to end on the tiny random checkpoint (tests/fixtures/e2e/tiny-chat) and the VQAv2-layout
//! sample (tests/fixtures/eval_vqav2_sample). The answers of a random model are meaningless: these tests
//! check structure, resumption, determinism, per-sample failures and that the report equals a rescore.

use idefics::pipeline::Pipeline;
use idefics::LoadOptions;
use idefics_eval::data::{read_jsonl, read_vqav2_dir};
use idefics_eval::runner::{run_eval, EvalProgress, EvalRunConfig, PromptStyle};
use idefics_eval::{read_predictions, rescore, EvalSample, ImageSource, Metric, RunInfo};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pipeline() -> Pipeline {
    Pipeline::load(
        &root().join("tests/fixtures/e2e/tiny-chat"),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn samples() -> Vec<EvalSample> {
    read_vqav2_dir(&root().join("tests/fixtures/eval_vqav2_sample"), "vqav2").unwrap()
}

fn config(batch_size: usize) -> EvalRunConfig {
    EvalRunConfig {
        batch_size,
        ..EvalRunConfig::new("vqav2")
    }
}

fn run(
    p: &Pipeline,
    samples: &[EvalSample],
    config: &EvalRunConfig,
    out: &Path,
) -> (idefics_eval::runner::EvalOutcome, Vec<EvalProgress>) {
    let mut seen = Vec::new();
    let info = RunInfo {
        model: Some("tiny-chat".into()),
        ..RunInfo::default()
    };
    let outcome = run_eval(p, samples, &[], config, info, out, |s| seen.push(*s)).unwrap();
    (outcome, seen)
}

#[test]
fn instruct_run_resumes_is_deterministic_and_reports_what_rescoring_gives() {
    let p = pipeline();
    let all = samples();
    assert_eq!(all.len(), 6);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");

    // An "interrupted" run: the first 2 samples only.
    let (first, _) = run(&p, &all[..2], &config(2), &out);
    assert_eq!((first.generated, first.resumed), (2, 0));
    assert_eq!(read_predictions(&first.predictions_path).unwrap().len(), 2);

    // The full run skips the 2 answered samples and adds the 4 others.
    let (second, progress) = run(&p, &all, &config(2), &out);
    assert_eq!((second.generated, second.resumed), (4, 2));
    assert!(second.failures.is_empty());
    let last = progress.last().unwrap();
    assert_eq!((last.done, last.total, last.resumed), (4, 4, 2));
    assert_eq!(progress.len(), 3, "one update at start, one per batch of 2");

    let preds = read_predictions(&second.predictions_path).unwrap();
    let ids: Vec<&str> = preds.iter().map(|p| p.id.as_str()).collect();
    let expected: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, expected, "each sample once, in order");
    for (pred, sample) in preds.iter().zip(&all) {
        assert_eq!(pred.metric, Metric::VqaAccuracy);
        assert_eq!(pred.answers.len(), 10);
        assert_eq!(pred.answers, sample.answers);
        assert_eq!(pred.question, sample.question);
        // The chat template's rendering of the instruct prompt, image first.
        assert_eq!(
            pred.prompt,
            format!(
                "User:<image>{}\nGive a very brief answer.<end_of_utterance>\nAssistant:",
                sample.question
            )
        );
        assert_eq!(pred.prediction, pred.prediction.trim());
    }

    // The report covers all 6 and equals a rescore of the file (run.json carries the run description).
    let report = &second.report;
    assert_eq!(report.tasks.len(), 1);
    assert_eq!(report.tasks[0].count, 6);
    assert_eq!(report.tasks[0].metric, Metric::VqaAccuracy);
    let rescored = rescore(&second.predictions_path).unwrap();
    assert_eq!(&rescored, report);
    let info = &report.run;
    assert_eq!(info.model.as_deref(), Some("tiny-chat"));
    assert_eq!(info.shots, Some(0));
    let processor = info.processor.as_ref().unwrap();
    assert_eq!(processor["image_seq_len"], 6);
    assert!(processor["do_image_splitting"].is_boolean());
    assert_eq!(info.decoding.as_ref().unwrap()["greedy"], true);
    assert!(info
        .prompt_template
        .as_ref()
        .unwrap()
        .contains("Give a very brief answer."));
    let on_disk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(on_disk["tasks"][0]["count"], 6);
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("| vqav2 | vqa_accuracy |"));

    // A third run has nothing left to do and does not duplicate anything.
    let (third, _) = run(&p, &all, &config(2), &out);
    assert_eq!((third.generated, third.resumed), (0, 6));
    assert_eq!(read_predictions(&third.predictions_path).unwrap(), preds);

    // Determinism: a fresh run in one go gives the same predictions.
    let out2 = dir.path().join("again");
    let (fresh, _) = run(&p, &all, &config(2), &out2);
    assert_eq!(read_predictions(&fresh.predictions_path).unwrap(), preds);
}

#[test]
fn undecodable_image_fails_its_sample_only_and_is_retried_later() {
    let p = pipeline();
    let mut all = samples();
    all.truncate(3);
    all[1].images = vec![ImageSource::Bytes(b"not an image".to_vec())];
    let dir = tempfile::tempdir().unwrap();
    let (outcome, progress) = run(&p, &all, &config(3), dir.path());
    assert_eq!(outcome.generated, 2);
    assert_eq!(outcome.failures.len(), 1);
    assert_eq!(outcome.failures[0].id, all[1].id);
    assert!(
        outcome.failures[0].error.contains("image 0"),
        "{}",
        outcome.failures[0].error
    );
    assert_eq!(progress.last().unwrap().failed, 1);
    assert_eq!(outcome.report.tasks[0].count, 2);
    let errors = std::fs::read_to_string(dir.path().join("errors.jsonl")).unwrap();
    assert!(errors.contains(&all[1].id), "{errors}");
    // The failed sample has no prediction, so the next run retries it (and only it).
    let (again, _) = run(&p, &all, &config(3), dir.path());
    assert_eq!((again.generated, again.resumed), (0, 2));
    assert_eq!(again.failures.len(), 1);
}

#[test]
fn base_format_uses_shots_from_the_support_split_and_stop_words() {
    let p = pipeline();
    let all = samples();
    let support_path = root().join("tests/fixtures/eval_vqav2_sample/support/support.jsonl");
    let support = read_jsonl(&support_path, "vqav2").unwrap();
    let config = EvalRunConfig {
        shots: 2,
        seed: 3,
        batch_size: 3,
        ..EvalRunConfig::new("vqav2")
    };
    let dir = tempfile::tempdir().unwrap();
    let outcome = run_eval(
        &p,
        &all[..3],
        &support,
        &config,
        RunInfo::default(),
        dir.path(),
        |_| {},
    )
    .unwrap();
    assert_eq!(outcome.generated, 3);
    let preds = read_predictions(&outcome.predictions_path).unwrap();
    for pred in &preds {
        // Two shots with their answers, then the query without.
        assert_eq!(pred.prompt.matches("Image:<image>Question:").count(), 3);
        assert!(
            pred.prompt
                .ends_with(&format!("Question: {} Answer:", pred.question)),
            "{}",
            pred.prompt
        );
        for stop in idefics_eval::prompt::STOP_WORDS {
            assert!(!pred.prediction.contains(stop), "{}", pred.prediction);
        }
    }
    let info = &outcome.report.run;
    assert_eq!((info.shots, info.seed), (Some(2), Some(3)));
    assert_eq!(
        info.decoding.as_ref().unwrap()["stop_strings"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Shots need a disjoint support split: other questions on a scored image leak too.
    let err = run_eval(
        &p,
        &all[..3],
        &all[3..],
        &EvalRunConfig {
            style: Some(PromptStyle::Base),
            ..config.clone()
        },
        RunInfo::default(),
        &dir.path().join("x"),
        |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("which the scored split also uses"), "{err}");
    let err = run_eval(
        &p,
        &all[..3],
        &all[..1],
        &config,
        RunInfo::default(),
        &dir.path().join("y"),
        |_| {},
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("also in the scored split"), "{err}");
}

#[test]
fn batching_does_not_change_the_prompts_or_count() {
    let p = pipeline();
    let all = samples();
    let dir = tempfile::tempdir().unwrap();
    let (one, _) = run(&p, &all[..3], &config(1), &dir.path().join("b1"));
    let (three, _) = run(&p, &all[..3], &config(3), &dir.path().join("b3"));
    let a = read_predictions(&one.predictions_path).unwrap();
    let b = read_predictions(&three.predictions_path).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.id, &x.prompt), (&y.id, &y.prompt));
    }
}

/// The synthetic held-out set (`idefics data synth`), evaluated in memory as a trainer does it: a model
/// already loaded, wrapped with `from_parts`, nothing written. Checks the per-family scores against an
/// independent recomputation, the chance levels, the splitting switch, and that it agrees with `run_eval`.
#[test]
fn synth_heldout_evaluates_in_memory_with_per_family_scores() {
    use idefics::Idefics2ForConditionalGeneration;
    use idefics_data::synth::{self, Family, SynthConfig};
    use idefics_eval::data::read_eval_data;
    use idefics_eval::exact::{exact_match, ExactNormalization};
    use idefics_eval::runner::evaluate;

    let dir = tempfile::tempdir().unwrap();
    let synth_dir = dir.path().join("synth");
    synth::generate(&SynthConfig {
        out: synth_dir.clone(),
        n: 1,
        heldout: 1,
        seed: 3,
        families: Family::ALL.to_vec(),
        rows_per_group: 64,
        questions_per_image: synth::DEFAULT_QUESTIONS_PER_IMAGE,
    })
    .unwrap();
    let data = read_eval_data(&synth_dir, "synth", None).unwrap();
    assert!(data.samples.len() >= 8, "{}", data.samples.len());

    let ckpt = root().join("tests/fixtures/e2e/tiny-chat");
    let model = Idefics2ForConditionalGeneration::load(&ckpt, &LoadOptions::default()).unwrap();
    let p = Pipeline::from_parts(model.clone(), &ckpt).unwrap();
    let config = EvalRunConfig {
        batch_size: 4,
        do_image_splitting: Some(false),
        ..EvalRunConfig::new("synth")
    };
    let scores = evaluate(&p, &data, &config).unwrap();
    assert!(scores.failures.is_empty(), "{:?}", scores.failures);
    assert_eq!(scores.predictions.len(), data.samples.len());
    for (pred, s) in scores.predictions.iter().zip(&data.samples) {
        assert_eq!((&pred.id, &pred.source), (&s.id, &s.source));
        assert_eq!(pred.metric, Metric::ExactMatchLoose);
        // The Cauldron user turn is the prompt as it is (no "Give a very brief answer.").
        assert!(pred.prompt.contains(&s.question), "{}", pred.prompt);
        assert!(!pred.prompt.contains("Give a very brief answer"));
    }
    let hit = |p: &idefics_eval::Prediction| {
        exact_match(&p.prediction, &p.answers, ExactNormalization::Loose)
    };
    let n = scores.predictions.len() as f64;
    let overall = 100.0 * scores.predictions.iter().map(hit).sum::<f64>() / n;
    assert!((scores.overall().unwrap() - overall).abs() < 1e-9);
    let groups = &scores.report.groups;
    let sources: Vec<&str> = groups.iter().map(|g| g.source.as_str()).collect();
    assert_eq!(
        sources,
        [
            "synth_basics",
            "synth_charts",
            "synth_docs",
            "synth_ocr",
            "synth_shapes"
        ]
    );
    assert_eq!(
        groups.iter().map(|g| g.count).sum::<usize>(),
        scores.predictions.len()
    );
    for g in groups {
        let of_source: Vec<_> = scores
            .predictions
            .iter()
            .filter(|p| p.source.as_deref() == Some(g.source.as_str()))
            .collect();
        let expected =
            100.0 * of_source.iter().map(|p| hit(p)).sum::<f64>() / of_source.len() as f64;
        assert!((g.score - expected).abs() < 1e-9, "{}", g.source);
        assert_eq!(g.baseline, data.baselines.get(&g.source).copied());
        assert!(g.baseline.is_some());
    }
    assert_eq!(scores.per_source().len(), 5);
    let processor = scores.report.run.processor.as_ref().unwrap();
    assert_eq!(processor["do_image_splitting"], false);

    // With splitting: still one answer per sample; the run description says so.
    let split = evaluate(
        &p,
        &data,
        &EvalRunConfig {
            do_image_splitting: Some(true),
            ..config.clone()
        },
    )
    .unwrap();
    assert_eq!(split.predictions.len(), data.samples.len());
    assert_eq!(
        split.report.run.processor.as_ref().unwrap()["do_image_splitting"],
        true
    );

    // The file-based run on a loaded checkpoint gives the same answers and scores.
    let out = dir.path().join("run");
    let info = RunInfo {
        baselines: data.baselines.clone(),
        ..RunInfo::default()
    };
    let outcome = run_eval(&pipeline(), &data.samples, &[], &config, info, &out, |_| {}).unwrap();
    let answers = |preds: &[idefics_eval::Prediction]| -> Vec<String> {
        preds.iter().map(|p| p.prediction.clone()).collect()
    };
    assert_eq!(
        answers(&read_predictions(&outcome.predictions_path).unwrap()),
        answers(&scores.predictions)
    );
    assert_eq!(outcome.report.tasks, scores.report.tasks);
    assert_eq!(outcome.report.groups, scores.report.groups);
}
