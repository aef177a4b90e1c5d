//! The synthetic held-out set as evaluation data: read from the `idefics data synth` folder, one sample per
//! question with its family as `source`, chance levels from `metadata.json`, and a per-family report.

use std::path::Path;

use idefics_data::synth::{self, Family, SynthConfig};
use idefics_eval::data::read_eval_data;
use idefics_eval::{build_report, Metric, Prediction, RunInfo};

fn generate(out: &Path) -> synth::Metadata {
    synth::generate(&SynthConfig {
        out: out.to_path_buf(),
        n: 1,
        heldout: 2,
        seed: 7,
        families: Family::ALL.to_vec(),
        rows_per_group: 64,
        questions_per_image: synth::DEFAULT_QUESTIONS_PER_IMAGE,
    })
    .unwrap()
}

#[test]
fn synth_heldout_reads_with_sources_and_chance_levels() {
    let dir = tempfile::tempdir().unwrap();
    let meta = generate(dir.path());
    let heldout = &meta.splits["heldout"];
    let questions: usize = heldout.families.values().map(|f| f.questions).sum();

    let data = read_eval_data(dir.path(), "synth", None).unwrap();
    assert_eq!(
        data.samples.len(),
        questions,
        "every held-out question, no pairs or documents"
    );
    for s in &data.samples {
        assert!(s.verbatim);
        assert_eq!(s.task, "synth");
        assert_eq!(s.images.len(), 1);
        assert_eq!(s.answers.len(), 1);
        let source = s.source.as_deref().unwrap();
        assert!(data.baselines.contains_key(source), "{source}");
        assert!(s.question.contains("\nAnswer"), "{}", s.question);
    }
    let shapes = &data.baselines["synth_shapes"];
    assert!(
        (shapes.chance_uniform - 100.0 * heldout.families["shapes"].chance_uniform).abs() < 1e-9
    );
    assert!(shapes.chance_uniform > 0.0 && shapes.chance_uniform < 100.0);

    // The split folder itself reads the same samples (metadata found in its parent), and --limit cuts.
    let split = read_eval_data(&dir.path().join("heldout"), "synth", Some(3)).unwrap();
    assert_eq!(split.samples, data.samples[..3]);
    // Exactly `limit` samples, also when a file's last row holds more questions than are left.
    for limit in 1..=data.samples.len() {
        let cut = read_eval_data(dir.path(), "synth", Some(limit)).unwrap();
        assert_eq!(cut.samples, data.samples[..limit], "limit {limit}");
    }
    assert_eq!(split.baselines, data.baselines);
    // The training split is a different set of images.
    let train = read_eval_data(&dir.path().join("train"), "synth", None).unwrap();
    assert_ne!(train.samples[0].images, data.samples[0].images);
}

#[test]
fn report_scores_each_family_next_to_its_chance_level() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let data = read_eval_data(dir.path(), "synth", None).unwrap();
    // Answer right on shapes, wrong elsewhere.
    let predictions: Vec<Prediction> = data
        .samples
        .iter()
        .map(|s| Prediction {
            id: s.id.clone(),
            task: s.task.clone(),
            metric: Metric::default_for_task("synth").unwrap(),
            question: s.question.clone(),
            prompt: s.question.clone(),
            prediction: if s.source.as_deref() == Some("synth_shapes") {
                format!(" {}.", s.answers[0].to_uppercase())
            } else {
                "no idea".into()
            },
            answers: s.answers.clone(),
            choices: s.choices.clone(),
            source: s.source.clone(),
        })
        .collect();
    let run = RunInfo {
        baselines: data.baselines.clone(),
        ..RunInfo::default()
    };
    let report = build_report(run, &predictions).unwrap();
    assert_eq!(report.tasks.len(), 1);
    assert_eq!(report.tasks[0].metric, Metric::ExactMatchLoose);
    let shapes_n = predictions
        .iter()
        .filter(|p| p.source.as_deref() == Some("synth_shapes"))
        .count();
    let overall = 100.0 * shapes_n as f64 / predictions.len() as f64;
    assert!((report.tasks[0].score - overall).abs() < 1e-9);
    let sources: Vec<&str> = report.groups.iter().map(|g| g.source.as_str()).collect();
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
    for g in &report.groups {
        let expected = if g.source == "synth_shapes" {
            100.0
        } else {
            0.0
        };
        assert_eq!(g.score, expected, "{}", g.source);
        assert_eq!(g.baseline, data.baselines.get(&g.source).copied());
    }
    let md = report.to_markdown();
    assert!(
        md.contains("| synth | synth_shapes | exact_match_loose | 100.00 |"),
        "{md}"
    );
    assert!(md.contains("chance (uniform)"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert!(
        json["groups"][3]["baseline"]["chance_uniform"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(json["run"]["baselines"]["synth_ocr"].is_object());
}
