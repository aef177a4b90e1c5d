//! Running a model on a benchmark: samples -> the paper's prompts -> batched greedy generation ->
//! `predictions.jsonl` (one flushed line per answer, so an interrupted run resumes) -> scores -> report.
//!
//! Prompts ([`crate::prompt`], the paper's appendix A.3.1): an instruct model gets the zero-shot instruct prompt
//! through the checkpoint's chat template (images first in the user turn); a base model (or any `shots > 0`
//! run) gets the k-shot `Image:<image>Question: ... Answer:` text with shots from a disjoint support split,
//! and stops at the format's stop words. Decoding is greedy, as the paper evaluated. The Cauldron rows (the
//! synthetic set) carry their own instruction in the user turn and are prompted with it as it is.
//!
//! Two entry points:
//! - [`run_eval`] (`idefics eval`): files in, `predictions.jsonl` / `report.json` / `report.md` out, resumable.
//! - [`evaluate`]: in memory, for evaluation during training. Nothing is written and nothing is reloaded:
//!
//! ```no_run
//! # fn demo(model: idefics::Idefics2ForConditionalGeneration) -> idefics::Result<()> {
//! use idefics_eval::runner::{evaluate, EvalRunConfig};
//! use idefics::pipeline::Pipeline;
//! use idefics_eval::data::read_eval_data;
//! use std::path::Path;
//!
//! // The trained model (a clone shares its weights) + the tokenizer / processor files of its checkpoint.
//! let pipeline = Pipeline::from_parts(model.clone(), Path::new("checkpoint-dir"))?;
//! // `idefics data synth` output (its held-out split), at most 64 questions.
//! let data = read_eval_data(Path::new("synth"), "synth", Some(64))
//!     .map_err(|e| idefics::Error::Input(e.to_string()))?;
//! let scores = evaluate(&pipeline, &data, &EvalRunConfig { batch_size: 8, ..EvalRunConfig::new("synth") })?;
//! println!("overall {:?}", scores.overall());
//! for g in &scores.report.groups {
//!     println!("{} {:.1} (chance {:?})", g.source, g.score, g.baseline.map(|b| b.chance_uniform));
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::data::EvalData;
use crate::prompt::{self as eval_prompt, STOP_WORDS};
use crate::{
    build_report, read_predictions, EvalSample, ImageSource, Metric, Prediction, PredictionWriter,
    Report, RunInfo,
};
use idefics_processor::{
    decode_image, decode_image_file, ChatMessage, ContentPart, DecodeLimits, RgbImage,
};
use sha2::{Digest, Sha256};

use idefics::generate::{GenerationRequest, SamplingParams};
use idefics::pipeline::{Pipeline, Prompt, PromptInput};
use idefics::{Error, Result};

/// How prompts are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptStyle {
    /// Zero-shot instruct prompt in the checkpoint's chat template.
    Instruct,
    /// The k-shot base-model text format (`Image:<image>Question: q Answer:`), stopped at its stop words.
    Base,
}

/// What an evaluation run does besides the model and the data.
#[derive(Debug, Clone)]
pub struct EvalRunConfig {
    /// Benchmark name (picks each sample's metric unless `metric` is set).
    pub task: String,
    /// One metric for every sample (tasks without an official metric).
    pub metric: Option<Metric>,
    /// In-context examples per prompt (base format); 0 = zero-shot.
    pub shots: usize,
    /// Seed of the shot selection.
    pub seed: u64,
    /// Prompts per generate call.
    pub batch_size: usize,
    /// Answer length cap; default [`default_max_new_tokens`] of the metric.
    pub max_new_tokens: Option<usize>,
    /// Override the checkpoint's image splitting.
    pub do_image_splitting: Option<bool>,
    /// Prompt style; `None` = instruct when `shots == 0` and the checkpoint has a chat template, else base.
    pub style: Option<PromptStyle>,
}

impl EvalRunConfig {
    /// Defaults for a task: zero-shot, batch 1, the checkpoint's splitting, automatic prompt style.
    pub fn new(task: &str) -> Self {
        Self {
            task: task.to_string(),
            metric: None,
            shots: 0,
            seed: 0,
            batch_size: 1,
            max_new_tokens: None,
            do_image_splitting: None,
            style: None,
        }
    }
}

/// Short answers need few tokens; free-form MMMU answers and captions a few more.
pub fn default_max_new_tokens(metric: Metric) -> usize {
    match metric {
        Metric::MmmuOpen | Metric::Cider | Metric::CiderPretokenized => 64,
        _ => 16,
    }
}

/// Where a run stands, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalProgress {
    /// Samples handled in this run (answered or failed).
    pub done: usize,
    /// Samples this run has to handle (those not already in the predictions file).
    pub total: usize,
    /// Samples found already answered in the predictions file.
    pub resumed: usize,
    /// Samples that failed in this run (see [`SampleFailure`]).
    pub failed: usize,
}

/// A sample that could not be run (undecodable image, prompt over the context); it gets no prediction, so a
/// later run retries it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SampleFailure {
    pub id: String,
    pub task: String,
    pub error: String,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    /// The report written to `report.json` / `report.md` (scores over the whole predictions file).
    pub report: Report,
    /// Predictions generated by this run.
    pub generated: usize,
    /// Samples skipped because the predictions file already had them.
    pub resumed: usize,
    /// Samples that failed in this run (also in `errors.jsonl`).
    pub failures: Vec<SampleFailure>,
    pub predictions_path: PathBuf,
}

/// One prompt ready for the pipeline, with what its prediction record needs.
struct PreparedSample<'a> {
    sample: &'a EvalSample,
    metric: Metric,
    input: PromptInput,
    /// The text prompt as written to the predictions file (`<image>` placeholders, chat turn markers).
    prompt_text: String,
    request: GenerationRequest,
}

/// Run `samples` through the model, appending to `out_dir/predictions.jsonl` (resuming it), then score the
/// whole file and write `run.json`, `report.json`, `report.md` (and `errors.jsonl` when samples failed).
///
/// `run_info` brings what only the caller knows (model name, revision, data path); this fills the
/// processor, prompt, decoding, shots and seed fields. `support` is the split shots are drawn from (checked
/// disjoint from `samples`); it may be empty for zero-shot runs.
pub fn run_eval(
    pipeline: &Pipeline,
    samples: &[EvalSample],
    support: &[EvalSample],
    config: &EvalRunConfig,
    run_info: RunInfo,
    out_dir: &Path,
    mut progress: impl FnMut(&EvalProgress),
) -> Result<EvalOutcome> {
    if config.batch_size == 0 {
        return Err(Error::Input("batch size must be at least 1".into()));
    }
    let style = resolve_style(pipeline, config)?;
    if style == PromptStyle::Base && config.shots > 0 {
        if support.is_empty() {
            return Err(Error::Input(format!(
                "{} shots need a support split to draw them from",
                config.shots
            )));
        }
        eval_prompt::check_disjoint(support, samples).map_err(eval_err)?;
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let predictions_path = out_dir.join("predictions.jsonl");
    let mut writer = PredictionWriter::open_resume(&predictions_path).map_err(eval_err)?;

    let run_info = fill_run_info(pipeline, samples, support, config, style, run_info)?;
    let run_path = out_dir.join("run.json");
    let run_json = serde_json::to_string_pretty(&run_info)
        .map_err(|e| Error::Input(format!("cannot serialise the run description: {e}")))?;
    std::fs::write(&run_path, run_json + "\n").map_err(|e| Error::io(&run_path, e))?;

    let todo: Vec<&EvalSample> = samples
        .iter()
        .filter(|s| !writer.is_done(&s.task, &s.id))
        .collect();
    let resumed = samples.len() - todo.len();
    if resumed > 0 {
        tracing::info!(
            "{}: {} of {} samples already answered; resuming",
            predictions_path.display(),
            resumed,
            samples.len()
        );
    }
    let mut generated = 0;
    let failures = answer_samples(
        pipeline,
        &todo,
        support,
        config,
        style,
        resumed,
        &mut progress,
        |prediction| {
            writer.write(&prediction).map_err(eval_err)?;
            generated += 1;
            Ok(())
        },
    )?;
    if !failures.is_empty() {
        write_failures(&out_dir.join("errors.jsonl"), &failures)?;
    }

    let predictions = read_predictions(&predictions_path).map_err(eval_err)?;
    let report = build_report(run_info, &predictions).map_err(eval_err)?;
    report.write(out_dir).map_err(eval_err)?;
    Ok(EvalOutcome {
        report,
        generated,
        resumed,
        failures,
        predictions_path,
    })
}

/// What an in-memory evaluation ([`evaluate`]) produced.
#[derive(Debug, Clone)]
pub struct EvalScores {
    /// Scores per task (overall) and per source (`report.groups`, with the chance levels of the data), and
    /// the run description; the same report `idefics eval` writes.
    pub report: Report,
    /// Every answer, in sample order (failed samples have none).
    pub predictions: Vec<Prediction>,
    /// Samples that could not be run (bad image, prompt over the context).
    pub failures: Vec<SampleFailure>,
}

impl EvalScores {
    /// The overall score (in %) of a single-task run: the first task's score, `None` when nothing was scored.
    pub fn overall(&self) -> Option<f64> {
        self.report.tasks.first().map(|t| t.score)
    }

    /// Score (in %) per source, e.g. `synth_shapes -> 25.0`.
    pub fn per_source(&self) -> std::collections::BTreeMap<String, f64> {
        self.report
            .groups
            .iter()
            .map(|g| (g.source.clone(), g.score))
            .collect()
    }
}

/// Evaluate in memory (zero-shot, or the base format without shots): the model of `pipeline` answers every
/// sample of `data` (greedy, batches of `config.batch_size`), and the answers are scored per task and per
/// source, next to `data`'s chance levels. Nothing is written to disk. For evaluation during training: build
/// the pipeline with [`Pipeline::from_parts`] and read the data once with
/// `idefics_eval::data::read_eval_data`.
pub fn evaluate(
    pipeline: &Pipeline,
    data: &EvalData,
    config: &EvalRunConfig,
) -> Result<EvalScores> {
    if config.batch_size == 0 {
        return Err(Error::Input("batch size must be at least 1".into()));
    }
    if config.shots > 0 {
        return Err(Error::Input(
            "in-memory evaluation is zero-shot; use run_eval with a support split for shots".into(),
        ));
    }
    let style = resolve_style(pipeline, config)?;
    let run_info = RunInfo {
        baselines: data.baselines.clone(),
        ..RunInfo::default()
    };
    let run_info = fill_run_info(pipeline, &data.samples, &[], config, style, run_info)?;
    let todo: Vec<&EvalSample> = data.samples.iter().collect();
    let mut predictions = Vec::with_capacity(todo.len());
    let failures = answer_samples(
        pipeline,
        &todo,
        &[],
        config,
        style,
        0,
        &mut |_: &EvalProgress| {},
        |p| {
            predictions.push(p);
            Ok(())
        },
    )?;
    let report = build_report(run_info, &predictions).map_err(eval_err)?;
    Ok(EvalScores {
        report,
        predictions,
        failures,
    })
}

/// Answers `todo` batch by batch, handing each prediction to `on_prediction` as soon as its batch is done,
/// and returns the samples that failed.
#[allow(clippy::too_many_arguments)]
fn answer_samples(
    pipeline: &Pipeline,
    todo: &[&EvalSample],
    support: &[EvalSample],
    config: &EvalRunConfig,
    style: PromptStyle,
    resumed: usize,
    progress: &mut impl FnMut(&EvalProgress),
    mut on_prediction: impl FnMut(Prediction) -> Result<()>,
) -> Result<Vec<SampleFailure>> {
    let mut state = EvalProgress {
        done: 0,
        total: todo.len(),
        resumed,
        failed: 0,
    };
    progress(&state);
    let mut failures = Vec::new();
    for chunk in todo.chunks(config.batch_size) {
        let mut ready = Vec::with_capacity(chunk.len());
        for &sample in chunk {
            match prepare_sample(pipeline, sample, support, config, style) {
                Ok(p) => ready.push(p),
                Err(e) => failures.push(failure(sample, &e)),
            }
        }
        let results = match generate_batch(pipeline, &ready, config.do_image_splitting) {
            Ok(texts) => texts.into_iter().map(Ok).collect(),
            // A batch-level failure (e.g. one prompt over the context): retry one by one to find the culprit.
            Err(_) if ready.len() > 1 => ready
                .iter()
                .map(|p| {
                    generate_batch(pipeline, std::slice::from_ref(p), config.do_image_splitting)
                        .and_then(|mut t| t.pop().ok_or_else(|| Error::Input("no output".into())))
                })
                .collect(),
            Err(e) => vec![Err(e)],
        };
        for (p, result) in ready.iter().zip(results) {
            match result {
                Ok(text) => on_prediction(Prediction {
                    id: p.sample.id.clone(),
                    task: p.sample.task.clone(),
                    metric: p.metric,
                    question: p.sample.question.clone(),
                    prompt: p.prompt_text.clone(),
                    prediction: text,
                    answers: p.sample.answers.clone(),
                    choices: p.sample.choices.clone(),
                    source: p.sample.source.clone(),
                })?,
                Err(e) => failures.push(failure(p.sample, &e)),
            }
        }
        state.done += chunk.len();
        state.failed = failures.len();
        progress(&state);
    }
    Ok(failures)
}

fn eval_err(e: crate::EvalError) -> Error {
    Error::Input(e.to_string())
}

fn failure(sample: &EvalSample, e: &Error) -> SampleFailure {
    tracing::warn!("sample {} of {}: {e}", sample.id, sample.task);
    SampleFailure {
        id: sample.id.clone(),
        task: sample.task.clone(),
        error: e.to_string(),
    }
}

fn write_failures(path: &Path, failures: &[SampleFailure]) -> Result<()> {
    let mut text = String::new();
    for f in failures {
        text.push_str(&serde_json::to_string(f).unwrap_or_default());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

fn resolve_style(pipeline: &Pipeline, config: &EvalRunConfig) -> Result<PromptStyle> {
    let has_template = pipeline.processor.chat_template().is_some();
    match config.style {
        Some(PromptStyle::Instruct) if config.shots > 0 => Err(Error::Input(
            "the instruct prompt is zero-shot; shots use the base-model format".into(),
        )),
        Some(PromptStyle::Instruct) if !has_template => Err(Error::Input(
            "the instruct prompt needs the checkpoint's chat template, and it has none".into(),
        )),
        Some(style) => Ok(style),
        None if config.shots == 0 && has_template => Ok(PromptStyle::Instruct),
        None => Ok(PromptStyle::Base),
    }
}

fn sample_metric(config: &EvalRunConfig, sample: &EvalSample) -> Result<Metric> {
    config
        .metric
        .or_else(|| Metric::for_sample(&config.task, !sample.choices.is_empty()))
        .ok_or_else(|| {
            Error::Input(format!(
                "no official metric known for task {:?}; name one",
                config.task
            ))
        })
}

/// The eval prompt of a sample (no images loaded).
fn eval_prompt_of(
    sample: &EvalSample,
    support: &[EvalSample],
    config: &EvalRunConfig,
    style: PromptStyle,
    metric: Metric,
) -> Result<eval_prompt::Prompt> {
    match style {
        PromptStyle::Instruct => Ok(eval_prompt::instruct_prompt(sample)),
        PromptStyle::Base => {
            let shots: Vec<&EvalSample> =
                eval_prompt::select_shots(support.len(), &sample.id, config.shots, config.seed)
                    .into_iter()
                    .filter_map(|i| support.get(i))
                    .collect();
            let captioning = matches!(metric, Metric::Cider | Metric::CiderPretokenized);
            eval_prompt::base_prompt(sample, &shots, captioning).map_err(eval_err)
        }
    }
}

fn prepare_sample<'a>(
    pipeline: &Pipeline,
    sample: &'a EvalSample,
    support: &[EvalSample],
    config: &EvalRunConfig,
    style: PromptStyle,
) -> Result<PreparedSample<'a>> {
    let metric = sample_metric(config, sample)?;
    let p = eval_prompt_of(sample, support, config, style, metric)?;
    let images = p
        .images
        .iter()
        .enumerate()
        .map(|(i, source)| load_image(source).map_err(|e| Error::Input(format!("image {i}: {e}"))))
        .collect::<Result<Vec<RgbImage>>>()?;
    let (prompt, prompt_text, stop_strings) = match style {
        PromptStyle::Instruct => {
            let mut parts: Vec<ContentPart> =
                (0..images.len()).map(|_| ContentPart::Image {}).collect();
            parts.push(ContentPart::Text {
                text: p.text.clone(),
            });
            let messages = vec![ChatMessage::parts("user", parts)];
            let rendered = pipeline
                .processor
                .chat_template()
                .map(|t| t.render(&messages, true))
                .transpose()?
                .unwrap_or_else(|| p.text.clone());
            (Prompt::Chat(messages), rendered, Vec::new())
        }
        PromptStyle::Base => (
            Prompt::Raw(p.text.clone()),
            p.text.clone(),
            STOP_WORDS.iter().map(|s| s.to_string()).collect(),
        ),
    };
    Ok(PreparedSample {
        sample,
        metric,
        input: PromptInput { prompt, images },
        prompt_text,
        request: GenerationRequest {
            max_new_tokens: config
                .max_new_tokens
                .unwrap_or_else(|| default_max_new_tokens(metric)),
            sampling: SamplingParams::default(),
            stop_strings,
        },
    })
}

fn load_image(source: &ImageSource) -> Result<RgbImage> {
    let limits = DecodeLimits::default();
    Ok(match source {
        ImageSource::Path(path) => decode_image_file(path, &limits)?,
        ImageSource::Bytes(bytes) => decode_image(bytes, &limits)?,
    })
}

/// One generate call; the answers, whitespace-trimmed (the scorers ignore it; base prompts answer after
/// `Answer:` with a leading space).
fn generate_batch(
    pipeline: &Pipeline,
    batch: &[PreparedSample],
    splitting: Option<bool>,
) -> Result<Vec<String>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let inputs: Vec<PromptInput> = batch.iter().map(|p| p.input.clone()).collect();
    let requests: Vec<GenerationRequest> = batch.iter().map(|p| p.request.clone()).collect();
    let prepared = pipeline.prepare(&inputs, splitting)?;
    let out = pipeline.generate(&prepared, &requests, |_, _| true)?;
    Ok(out.into_iter().map(|s| s.text.trim().to_string()).collect())
}

/// Completes the caller's run description with what this run uses.
fn fill_run_info(
    pipeline: &Pipeline,
    samples: &[EvalSample],
    support: &[EvalSample],
    config: &EvalRunConfig,
    style: PromptStyle,
    mut info: RunInfo,
) -> Result<RunInfo> {
    info.processor = Some(pipeline.processor.settings_json(config.do_image_splitting));
    // Every template this run's samples use (open-ended and multiple choice may mix), and each metric's cap.
    let mut templates = BTreeSet::new();
    let mut caps = BTreeSet::new();
    for s in samples {
        let metric = sample_metric(config, s)?;
        caps.insert((
            metric.name(),
            config
                .max_new_tokens
                .unwrap_or_else(|| default_max_new_tokens(metric)),
        ));
        if let Ok(p) = eval_prompt_of(s, support, config, style, metric) {
            templates.insert(p.template);
        }
    }
    let templates: Vec<&str> = templates.into_iter().collect();
    info.prompt_template = Some(match style {
        PromptStyle::Instruct => format!(
            "chat template, user turn = <image>... + {}",
            templates.join(" | ")
        ),
        PromptStyle::Base => templates.join(" | "),
    });
    let max_new_tokens: serde_json::Map<String, serde_json::Value> = caps
        .into_iter()
        .map(|(m, n)| (m.to_string(), n.into()))
        .collect();
    let stops: Vec<&str> = match style {
        PromptStyle::Instruct => vec![],
        PromptStyle::Base => STOP_WORDS.to_vec(),
    };
    info.decoding = Some(serde_json::json!({
        "greedy": true,
        "max_new_tokens": max_new_tokens,
        "stop_strings": stops,
        "stop_tokens": "generation_config eos + <end_of_utterance>",
        "batch_size": config.batch_size,
        "dtype": format!("{:?}", pipeline.model.dtype()),
    }));
    info.shots = Some(config.shots);
    if config.shots > 0 {
        info.seed = Some(config.seed);
    }
    Ok(info)
}

/// A revision for a local checkpoint: the Hub commit when `dir` is a Hub cache snapshot
/// (`.../snapshots/<commit>`), else `sha256:` of the config and of each weight file's name, size, first and
/// last MiB (a fingerprint, not a full hash: reading tens of GB would delay every run).
pub fn checkpoint_revision(dir: &Path) -> Result<String> {
    let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    if let (Some(name), Some(parent)) = (dir.file_name(), dir.parent()) {
        if parent.file_name().is_some_and(|p| p == "snapshots") {
            return Ok(name.to_string_lossy().into_owned());
        }
    }
    let mut hasher = Sha256::new();
    let config = dir.join("config.json");
    hasher.update(std::fs::read(&config).map_err(|e| Error::io(&config, e))?);
    let mut weights: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    weights.sort();
    const MIB: u64 = 1 << 20;
    for path in weights {
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        hasher.update(path.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(len.to_le_bytes());
        let mut buf = Vec::new();
        if len <= 2 * MIB {
            file.read_to_end(&mut buf)
                .map_err(|e| Error::io(&path, e))?;
        } else {
            use std::io::{Seek, SeekFrom};
            buf.resize(MIB as usize, 0);
            file.read_exact(&mut buf).map_err(|e| Error::io(&path, e))?;
            hasher.update(&buf);
            file.seek(SeekFrom::Start(len - MIB))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| Error::io(&path, e))?;
        }
        hasher.update(&buf);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("sha256:{hex}"))
}
