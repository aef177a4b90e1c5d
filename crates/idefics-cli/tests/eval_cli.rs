//! `idefics eval` as a user runs it: the tiny random checkpoint on the VQAv2-layout sample, interrupted
//! (`--limit 2`) then resumed, then rescored.

mod common;

use common::{eval_synth_in, idefics_ok, json_lines as lines, read_json, root};
use std::path::{Path, PathBuf};

/// `idefics data synth --n 1` into `dir/synth` (extra arguments appended); returns the folder.
fn synth_data(dir: &Path, extra: &[&str]) -> PathBuf {
    let synth = dir.join("synth");
    let mut args = vec![
        "data",
        "synth",
        "--out",
        synth.to_str().unwrap(),
        "--n",
        "1",
    ];
    args.extend_from_slice(extra);
    idefics_ok(&args);
    synth
}

/// `idefics eval --task synth --no-split` of the tiny chat fixture on `synth` into `out` (extra arguments
/// appended); asserts success and returns the output.
fn eval_synth(synth: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let model = root().join("tests/fixtures/e2e/tiny-chat");
    let mut args = vec!["--model", model.to_str().unwrap(), "--batch-size", "4"];
    args.extend_from_slice(extra);
    eval_synth_in(Path::new("."), synth, out, &args)
}

#[test]
fn eval_runs_resumes_and_rescores() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = root().join("tests/fixtures/e2e/tiny-chat");
    let data = root().join("tests/fixtures/eval_vqav2_sample");
    let base = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--task",
        "vqav2",
        "--data",
        data.to_str().unwrap(),
        "--batch-size",
        "4",
        "--out",
        out.to_str().unwrap(),
    ];
    let mut limited = base.to_vec();
    limited.extend(["--limit", "2"]);
    idefics_ok(&limited);
    let predictions = out.join("predictions.jsonl");
    assert_eq!(lines(&predictions).len(), 2);

    let second = idefics_ok(&base);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("4 generated, 2 resumed"), "{stderr}");
    let preds = lines(&predictions);
    let ids: Vec<&str> = preds.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1010", "1011", "1020", "1021", "1030", "1031"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("| vqav2 | vqa_accuracy |"), "{stdout}");
    assert!(stdout.contains("| 6 |"), "{stdout}");

    let report = read_json(&out.join("report.json"));
    assert_eq!(report["tasks"][0]["count"], 6);
    assert!(report["run"]["revision"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(report["run"]["processor"]["image_seq_len"], 6);

    // Rescoring the file gives the same report.
    let rescored_dir = dir.path().join("rescored");
    idefics_ok(&[
        "eval",
        "--rescore",
        predictions.to_str().unwrap(),
        "--out",
        rescored_dir.to_str().unwrap(),
    ]);
    assert_eq!(read_json(&rescored_dir.join("report.json")), report);
}

/// `idefics data synth` then `idefics eval --task synth` on its output: the report scores each task family
/// next to the chance levels of the synth's metadata.json (the random model's answers are meaningless).
#[test]
fn eval_on_the_synthetic_heldout_set_reports_each_family_with_its_chance_level() {
    let dir = tempfile::tempdir().unwrap();
    let synth = synth_data(dir.path(), &["--heldout", "1", "--seed", "3"]);
    let out = dir.path().join("out");
    let run = eval_synth(&synth, &out, &[]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("## Per source"), "{stdout}");

    let meta = read_json(&synth.join("metadata.json"));
    let report = read_json(&out.join("report.json"));
    let n = lines(&out.join("predictions.jsonl")).len();
    assert_eq!(report["tasks"][0]["task"], "synth");
    assert_eq!(report["tasks"][0]["metric"], "exact_match_loose");
    assert_eq!(report["tasks"][0]["count"], n);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 5);
    for g in groups {
        let family = g["source"]
            .as_str()
            .unwrap()
            .strip_prefix("synth_")
            .unwrap();
        let stats = &meta["splits"]["heldout"]["families"][family];
        let chance = 100.0 * stats["chance_uniform"].as_f64().unwrap();
        assert!((g["baseline"]["chance_uniform"].as_f64().unwrap() - chance).abs() < 1e-9);
        let md_row = format!(
            "| synth | synth_{family} | exact_match_loose | {:.2} | {} | {chance:.2} |",
            g["score"].as_f64().unwrap(),
            g["count"]
        );
        assert!(stdout.contains(&md_row), "{md_row}\n{stdout}");
    }
    assert_eq!(
        read_json(&out.join("run.json"))["processor"]["do_image_splitting"],
        false
    );

    // A rescore (no model) finds the chance levels again through run.json.
    let rescored = dir.path().join("rescored");
    idefics_ok(&[
        "eval",
        "--rescore",
        out.join("predictions.jsonl").to_str().unwrap(),
        "--out",
        rescored.to_str().unwrap(),
    ]);
    assert_eq!(
        read_json(&rescored.join("report.json"))["groups"],
        report["groups"]
    );
}

/// `--swap-images` (the text-only control) answers every question and says in the report that the images
/// were swapped; the swap itself is tested in idefics_eval::control.
#[test]
fn swapped_images_control_is_marked_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let synth = synth_data(
        dir.path(),
        &["--heldout", "2", "--seed", "5", "--tasks", "shapes"],
    );
    let out = dir.path().join("out");
    eval_synth(&synth, &out, &["--swap-images"]);
    let run_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let data = run_json["data"].as_str().unwrap();
    assert!(data.contains("another question's images"), "{data}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("another question's images"), "{report}");
    assert!(lines(&out.join("predictions.jsonl")).len() >= 4);
}
