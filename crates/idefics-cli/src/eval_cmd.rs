//! `idefics eval`: score a model on a benchmark, or rescore a predictions file without the model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use idefics_eval::data::{read_jsonl, read_vqav2_dir};
use idefics_eval::{EvalSample, Metric};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory (Hugging Face layout).
    #[arg(long, required_unless_present = "rescore")]
    pub model: Option<PathBuf>,
    /// Benchmark name (vqav2, textvqa, okvqa, docvqa, chartqa, mmmu, coco, ...): picks the official metric.
    #[arg(long, required_unless_present = "rescore")]
    pub task: Option<String>,
    /// Benchmark data: a VQAv2-layout folder (questions + annotations JSON + images) or a JSONL file.
    #[arg(long, required_unless_present = "rescore")]
    pub data: Option<PathBuf>,
    /// Metric name, for a task without a known official metric (see `idefics_eval::Metric`).
    #[arg(long)]
    pub metric: Option<String>,
    /// Score only the first N samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// In-context examples per prompt (base models; 0 = zero-shot instruct prompt).
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Support split the shots are drawn from (same formats as --data; must be disjoint from it).
    #[arg(long)]
    pub support: Option<PathBuf>,
    /// Seed of the shot selection.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Output folder: predictions.jsonl, run.json, report.json, report.md (default with --rescore: the
    /// predictions file's folder).
    #[arg(long, required_unless_present = "rescore")]
    pub out: Option<PathBuf>,
    /// Recompute the report of an existing predictions.jsonl (no model needed).
    #[arg(long, value_name = "PREDICTIONS_JSONL", conflicts_with_all = ["model", "task", "data", "shots", "support"])]
    pub rescore: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(predictions) = &args.rescore {
        return rescore(predictions, args.out.as_deref());
    }
    // clap enforces these when --rescore is absent.
    let (Some(model), Some(task), Some(data), Some(out)) =
        (&args.model, &args.task, &args.data, &args.out)
    else {
        bail!("--model, --task, --data and --out are required unless --rescore is given");
    };
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let metric = match &args.metric {
        Some(name) => Metric::from_name(name).with_context(|| {
            let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
            format!("unknown --metric {name:?}; known: {}", known.join(", "))
        })?,
        None => Metric::default_for_task(task).with_context(|| {
            format!("no official metric known for task {task:?}; name one with --metric")
        })?,
    };
    if !model.is_dir() {
        bail!("--model {}: not a folder", model.display());
    }
    let samples = read_samples(data, task)?;
    if args.shots > 0 && args.support.is_none() {
        bail!(
            "--shots {} needs --support: shots are drawn from a split disjoint from the scored one",
            args.shots
        );
    }
    if let Some(support) = &args.support {
        let support = read_samples(support, task)?;
        idefics_eval::prompt::check_disjoint(&support, &samples)?;
    }
    let n = args.limit.map_or(samples.len(), |l| l.min(samples.len()));
    tracing::info!(
        "{n} samples of {task} read from {}, metric {metric}",
        data.display()
    );
    // Not done yet: the generation engine lives in `idefics` and is being built; running the model is the
    // one missing step between these prompts and `PredictionWriter`.
    bail!(
        "model-running evaluation needs the generation engine, which is not integrated yet \
         ({n} samples of {task} read and checked; results would go to {}). \
         Score existing predictions with `idefics eval --rescore predictions.jsonl`",
        out.display()
    )
}

/// A `.jsonl` file, or a VQAv2-layout folder.
fn read_samples(path: &Path, task: &str) -> Result<Vec<EvalSample>> {
    let samples = if path.is_dir() {
        read_vqav2_dir(path, task)?
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        read_jsonl(path, task)?
    } else {
        bail!(
            "--data {}: expected a VQAv2-layout folder or a .jsonl file (parquet is not supported yet)",
            path.display()
        );
    };
    if samples.is_empty() {
        bail!("{}: no samples", path.display());
    }
    Ok(samples)
}

fn rescore(predictions: &Path, out: Option<&Path>) -> Result<()> {
    let report = idefics_eval::rescore(predictions)?;
    let dir = match out {
        Some(dir) => dir.to_path_buf(),
        None => predictions
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    report.write(&dir)?;
    print!("{}", report.to_markdown());
    eprintln!(
        "wrote {} and {}",
        dir.join("report.json").display(),
        dir.join("report.md").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        eval: EvalArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<EvalArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("eval").chain(args.iter().copied())).map(|c| c.eval)
    }

    #[test]
    fn rescore_alone_parses_and_model_form_needs_its_arguments() {
        assert!(parse(&["--rescore", "p.jsonl"]).is_ok());
        assert!(parse(&["--rescore", "p.jsonl", "--model", "m"]).is_err());
        assert!(parse(&["--model", "m", "--task", "vqav2", "--data", "d"]).is_err());
        let a = parse(&[
            "--model",
            "m",
            "--task",
            "vqav2",
            "--data",
            "d",
            "--out",
            "o",
            "--limit",
            "5",
            "--shots",
            "8",
            "--batch-size",
            "4",
        ])
        .unwrap();
        assert_eq!((a.limit, a.shots, a.batch_size), (Some(5), 8, 4));
    }

    #[test]
    fn rescore_writes_the_report() {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/eval/predictions.jsonl");
        let dir = tempfile::tempdir().unwrap();
        run(parse(&[
            "--rescore",
            fixture.to_str().unwrap(),
            "--out",
            dir.path().to_str().unwrap(),
        ])
        .unwrap())
        .unwrap();
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
                .unwrap();
        assert_eq!(report["tasks"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn model_form_reports_not_integrated_after_checking_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        std::fs::write(
            &data,
            "{\"id\": 1, \"question\": \"Q\", \"answer\": \"a\"}\n",
        )
        .unwrap();
        let d = dir.path().to_str().unwrap();
        let args = |task: &str| {
            parse(&[
                "--model",
                d,
                "--task",
                task,
                "--data",
                data.to_str().unwrap(),
                "--out",
                d,
            ])
            .unwrap()
        };
        let err = run(args("vqav2")).unwrap_err().to_string();
        assert!(
            err.contains("not integrated yet") && err.contains("1 samples"),
            "{err}"
        );
        let err = run(args("mystery")).unwrap_err().to_string();
        assert!(err.contains("--metric"), "{err}");
    }
}
