//! `idefics ask`: one question about zero or more images, answer streamed to stdout.

use crate::model_source::ModelArgs;
use anyhow::{Context, Result};
use idefics::generate::{GenerationRequest, SamplingParams};
use idefics::pipeline::{Pipeline, PreparedBatch, Prompt, PromptInput};
use idefics::processor::{decode_image_file, ChatMessage, ContentPart, DecodeLimits, RgbImage};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Decoding options shared by `ask` and `chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct DecodingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding, as transformers' default.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (with --temperature).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (with --temperature).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// transformers' repetition penalty (> 1 discourages repeats).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Do not split images into 4 crops + the whole image (overrides the checkpoint's setting).
    #[arg(long, conflicts_with = "split")]
    pub no_split: bool,
    /// Split images even if the checkpoint does not.
    #[arg(long)]
    pub split: bool,
}

impl DecodingArgs {
    pub fn request(&self) -> GenerationRequest {
        GenerationRequest {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
            },
            stop_strings: self.stop.clone(),
        }
    }

    pub fn splitting(&self) -> Option<bool> {
        match (self.split, self.no_split) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// An image file (repeatable); images come before the question, in order.
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// SmolVLM2 (model_type smolvlm) video input, shown before the question: several image files taken as the
    /// frames of one video, in order, or one animated GIF / WebP whose frames are used. The list takes every
    /// following value: write the question before --frames, or end the list with `--`.
    #[arg(long = "frames", num_args = 1.., conflicts_with = "images")]
    pub frames: Vec<PathBuf>,
    /// A system message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub decoding: DecodingArgs,
    /// Print one JSON object (answer, finish reason, token counts, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// The question.
    pub question: String,
}

pub fn load_images(paths: &[PathBuf]) -> Result<Vec<RgbImage>> {
    paths
        .iter()
        .map(|p| {
            decode_image_file(p, &DecodeLimits::default())
                .with_context(|| format!("image {}", p.display()))
        })
        .collect()
}

/// A user turn: the images first, then the text (the layout of the Idefics2 model card's examples).
pub fn user_message(n_images: usize, text: &str) -> ChatMessage {
    let mut parts: Vec<ContentPart> = (0..n_images).map(|_| ContentPart::Image {}).collect();
    parts.push(ContentPart::Text {
        text: text.to_string(),
    });
    ChatMessage::parts("user", parts)
}

pub fn run(args: AskArgs) -> Result<()> {
    // Check the cheap inputs before loading weights.
    let images = load_images(&args.images)?;
    args.decoding.request().sampling.validate()?;
    let video = if args.frames.is_empty() {
        None
    } else {
        let settings = crate::frames::video_settings(&args.model.resolve()?)?;
        Some((
            crate::frames::load_frames(&args.frames, &settings)?,
            settings,
        ))
    };
    let load_start = Instant::now();
    let pipeline = args.model.load_pipeline()?;
    let load_secs = load_start.elapsed().as_secs_f64();

    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::text("system", system));
    }
    let answer = match video {
        Some((video, settings)) => {
            messages.push(crate::frames::video_message(&args.question));
            let prepared = pipeline
                .prepare_video_chat(&messages, video.frames, video.clip, &settings)
                .context("--frames")?;
            answer_prepared(&pipeline, &prepared, &args.decoding, !args.json)?
        }
        None => {
            messages.push(user_message(images.len(), &args.question));
            answer(&pipeline, messages, images, &args.decoding, !args.json)?
        }
    };
    if args.json {
        let report = serde_json::json!({
            "answer": answer.text,
            "finish_reason": answer.finish_reason,
            "prompt_tokens": answer.prompt_tokens,
            "image_tokens": answer.image_tokens,
            "completion_tokens": answer.completion_tokens,
            "do_image_splitting": answer.do_image_splitting,
            "load_seconds": load_secs,
            "time_to_first_token_seconds": answer.time_to_first_token,
            "generate_seconds": answer.generate_seconds,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// One answer and its accounting.
pub struct Answer {
    pub text: String,
    pub finish_reason: idefics::generate::FinishReason,
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    pub completion_tokens: usize,
    pub do_image_splitting: bool,
    pub time_to_first_token: Option<f64>,
    pub generate_seconds: f64,
}

/// Runs one chat turn; streams the text to stdout when `stream` is set.
pub fn answer(
    pipeline: &Pipeline,
    messages: Vec<ChatMessage>,
    images: Vec<RgbImage>,
    decoding: &DecodingArgs,
    stream: bool,
) -> Result<Answer> {
    let prepared = pipeline.prepare(
        &[PromptInput {
            prompt: Prompt::Chat(messages),
            images,
        }],
        decoding.splitting(),
    )?;
    answer_prepared(pipeline, &prepared, decoding, stream)
}

/// Generates the answer of one prepared row; streams the text to stdout when `stream` is set.
pub fn answer_prepared(
    pipeline: &Pipeline,
    prepared: &PreparedBatch,
    decoding: &DecodingArgs,
    stream: bool,
) -> Result<Answer> {
    let start = Instant::now();
    let mut first_token: Option<f64> = None;
    let mut stdout = std::io::stdout().lock();
    let out = pipeline.generate(prepared, &[decoding.request()], |_, delta| {
        if first_token.is_none() {
            first_token = Some(start.elapsed().as_secs_f64());
        }
        if stream && !delta.is_empty() {
            // A closed stdout (e.g. `| head`) ends generation instead of failing.
            return write!(stdout, "{delta}")
                .and_then(|_| stdout.flush())
                .is_ok();
        }
        true
    })?;
    if stream {
        let _ = writeln!(stdout);
    }
    let row = out.into_iter().next().context("no output row")?;
    Ok(Answer {
        completion_tokens: row.token_ids.len(),
        text: row.text,
        finish_reason: row.finish_reason,
        prompt_tokens: prepared.prompt_ids[0].len(),
        image_tokens: prepared.image_tokens[0],
        do_image_splitting: prepared.do_image_splitting,
        time_to_first_token: first_token,
        generate_seconds: start.elapsed().as_secs_f64(),
    })
}
