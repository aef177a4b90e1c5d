//! `idefics eval`: score a model on a benchmark, or rescore a predictions file without the model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use idefics::hub::{resolve_model, HubConfig};
use idefics::pipeline::Pipeline;
use idefics::LoadOptions;
use idefics_eval::data::{read_eval_data, EvalData};
use idefics_eval::runner::{checkpoint_revision, run_eval, EvalRunConfig, PromptStyle};
use idefics_eval::{Metric, RunInfo};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory (Hugging Face layout) or Hub id. Default: the bundled model.
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit) of a Hub model.
    #[arg(long, requires = "model")]
    pub revision: Option<String>,
    #[command(flatten)]
    pub quant: crate::model_source::QuantArgs,
    /// Benchmark name (vqav2, textvqa, okvqa, docvqa, chartqa, mmmu, mmbench, ai2d, coco, synth, ...): picks
    /// the official metric (synth: exact match, scored per task family next to its chance level).
    #[arg(long, required_unless_present = "rescore")]
    pub task: Option<String>,
    /// Benchmark data: a JSONL or parquet file (The Cauldron layout or an lmms-lab evaluation mirror's), a
    /// folder of parquet files, the output folder of `idefics data synth` (its held-out split), or a
    /// VQAv2-layout folder (questions + annotations JSON + images).
    #[arg(long, required_unless_present = "rescore")]
    pub data: Option<PathBuf>,
    /// Metric name, for a task without a known official metric (see `idefics_eval::Metric`).
    #[arg(long)]
    pub metric: Option<String>,
    /// Score only the first N samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// In-context examples per prompt (base-model format); 0 = zero-shot.
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Support split the shots are drawn from (same formats as --data; must be disjoint from it).
    #[arg(long)]
    pub support: Option<PathBuf>,
    /// Seed of the shot selection.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// MMBench's CircularEval: ask each multiple-choice question once per rotation of its options; the
    /// report adds a "<task> (circular)" row counting a question right only if all rotations are.
    #[arg(long)]
    pub circular: bool,
    /// Text-only control: ask every question with the images of another question of the same source. A model
    /// that reads its images scores lower; one that answers from the question alone scores the same.
    #[arg(long)]
    pub swap_images: bool,
    /// Prompts per generation batch.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Answer length cap (default: 16 tokens for short answers, 64 for captions and MMMU open answers).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Use the base-model text format even when the checkpoint has a chat template (zero-shot base runs).
    #[arg(long)]
    pub base_prompt: bool,
    /// Do not split images into 4 crops + the whole image (overrides the checkpoint's setting).
    #[arg(long, conflicts_with = "split")]
    pub no_split: bool,
    /// Split images even if the checkpoint does not.
    #[arg(long)]
    pub split: bool,
    /// Output folder: predictions.jsonl, run.json, report.json, report.md (default with --rescore: the
    /// predictions file's folder). A folder with a predictions.jsonl is resumed.
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
    let (Some(task), Some(data), Some(out)) = (&args.task, &args.data, &args.out) else {
        bail!("--task, --data and --out are required unless --rescore is given");
    };
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if args.max_new_tokens == Some(0) {
        bail!("--max-new-tokens must be at least 1");
    }
    let metric = match &args.metric {
        Some(name) => Some(Metric::from_name(name).with_context(|| {
            let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
            format!("unknown --metric {name:?}; known: {}", known.join(", "))
        })?),
        None => {
            Metric::default_for_task(task).with_context(|| {
                format!("no official metric known for task {task:?}; name one with --metric")
            })?;
            None
        }
    };
    let EvalData {
        mut samples,
        baselines,
    } = read_samples(data, task, args.limit)?;
    if args.circular {
        let questions = samples.len();
        samples = idefics_eval::circular::circular_samples(&samples);
        tracing::info!(
            "CircularEval: {questions} questions -> {} prompts",
            samples.len()
        );
    }
    if args.swap_images {
        let swapped = idefics_eval::control::swap_images_within_sources(&mut samples);
        tracing::info!(
            "text-only control: {swapped} of {} samples get another sample's images",
            samples.len()
        );
    }
    if args.shots > 0 && args.support.is_none() {
        bail!(
            "--shots {} needs --support: shots are drawn from a split disjoint from the scored one",
            args.shots
        );
    }
    let support = match &args.support {
        Some(support) => {
            let support = read_samples(support, task, None)?.samples;
            idefics_eval::prompt::check_disjoint(&support, &samples)?;
            support
        }
        None => Vec::new(),
    };
    tracing::info!(
        "{} samples of {task} read from {}",
        samples.len(),
        data.display()
    );

    // Check the cheap inputs (above) before loading weights.
    let model = match &args.model {
        Some(model) => model.clone(),
        None => crate::model_source::bundled_model()?.display().to_string(),
    };
    let (dir, hub_commit) = resolve(&model, args.revision.as_deref())?;
    let opts = LoadOptions {
        device: crate::model_source::device()?,
        quant: args.quant.config(),
        cpu_weight_layout: idefics::model::CpuWeightLayout::Panels,
        ..LoadOptions::default()
    };
    let pipeline =
        Pipeline::load(&dir, &opts).with_context(|| format!("loading {}", dir.display()))?;
    let revision = match hub_commit {
        Some(commit) => commit,
        None => checkpoint_revision(&dir)?,
    };
    let config = EvalRunConfig {
        task: task.clone(),
        metric,
        shots: args.shots,
        seed: args.seed,
        batch_size: args.batch_size,
        max_new_tokens: args.max_new_tokens,
        do_image_splitting: match (args.split, args.no_split) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        style: args.base_prompt.then_some(PromptStyle::Base),
    };
    let info = RunInfo {
        model: Some(model.clone()),
        revision: Some(revision),
        data: Some(if args.swap_images {
            format!(
                "{} (control: every question asked with another question's images)",
                data.display()
            )
        } else {
            data.display().to_string()
        }),
        baselines,
        ..RunInfo::default()
    };

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {bar:30} {pos}/{len} samples, {per_sec}, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(task.clone());
    bar.enable_steady_tick(Duration::from_millis(500));
    let outcome = run_eval(&pipeline, &samples, &support, &config, info, out, |p| {
        if bar.length() != Some(p.total as u64) {
            bar.set_length(p.total as u64);
            if p.resumed > 0 {
                bar.println(format!(
                    "resuming: {} samples already in {}",
                    p.resumed,
                    out.join("predictions.jsonl").display()
                ));
            }
        }
        bar.set_position(p.done as u64);
        if p.failed > 0 {
            bar.set_message(format!("({} failed)", p.failed));
        }
    })?;
    bar.finish_and_clear();

    print!("{}", outcome.report.to_markdown());
    eprintln!(
        "{} generated, {} resumed; wrote {}, report.json and report.md in {}",
        outcome.generated,
        outcome.resumed,
        outcome.predictions_path.display(),
        out.display()
    );
    if !outcome.failures.is_empty() {
        eprintln!(
            "warning: {} samples failed and are not scored (see {}); rerun the same command to retry them",
            outcome.failures.len(),
            out.join("errors.jsonl").display()
        );
    }
    Ok(())
}

/// A local folder, or a Hub id downloaded into the cache (then its commit is the revision).
fn resolve(model: &str, revision: Option<&str>) -> Result<(PathBuf, Option<String>)> {
    let path = Path::new(model);
    if path.is_dir() {
        if revision.is_some() {
            bail!("--revision applies to Hub models; {model} is a local folder");
        }
        return Ok((path.to_path_buf(), None));
    }
    let files = resolve_model(model, revision, &HubConfig::from_env(), &mut |_| {})
        .with_context(|| format!("--model {model}: not a folder; as a Hub id"))?;
    Ok((files.dir, files.commit))
}

/// Any data layout `read_eval_data` knows; an empty set is an error.
fn read_samples(path: &Path, task: &str, limit: Option<usize>) -> Result<EvalData> {
    let data = read_eval_data(path, task, limit)?;
    if data.samples.is_empty() {
        bail!("{}: no samples", path.display());
    }
    Ok(data)
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
    fn model_form_checks_inputs_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d.jsonl");
        std::fs::write(
            &data,
            "{\"id\": 1, \"question\": \"Q\", \"answer\": \"a\"}\n",
        )
        .unwrap();
        let d = dir.path().to_str().unwrap();
        let args = |task: &str, extra: &[&str]| {
            let mut a = vec![
                "--model",
                d,
                "--task",
                task,
                "--data",
                data.to_str().unwrap(),
                "--out",
                d,
            ];
            a.extend_from_slice(extra);
            parse(&a).unwrap()
        };
        let err = run(args("mystery", &[])).unwrap_err().to_string();
        assert!(err.contains("--metric"), "{err}");
        let err = run(args("vqav2", &["--shots", "2"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--support"), "{err}");
        let err = run(args("vqav2", &["--batch-size", "0"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--batch-size"), "{err}");
        // The folder has no checkpoint: the error names it.
        let err = format!("{:#}", run(args("vqav2", &[])).unwrap_err());
        assert!(err.contains("loading"), "{err}");
    }
}
