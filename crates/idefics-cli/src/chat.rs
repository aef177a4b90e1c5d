//! `idefics chat`: an interactive multi-turn conversation. `/image PATH` attaches an image to the next message,
//! `/reset` starts over, `/quit` (or end of input) leaves. With `--frames` (SmolVLM2), the conversation is about
//! one video, shown with the first message (again after `/reset`); images cannot be added to it (transformers'
//! SmolVLM processor takes images or videos in one call, not both).

use crate::ask::{answer, answer_prepared, load_images, user_message, DecodingArgs};
use crate::model_source::ModelArgs;
use anyhow::Result;
use idefics::processor::{ChatMessage, RgbImage};
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message for the whole conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub decoding: DecodingArgs,
    /// SmolVLM2 (model_type smolvlm): the conversation is about one video, given as several image files (its
    /// frames, in order) or one animated GIF / WebP.
    #[arg(long = "frames", num_args = 1..)]
    pub frames: Vec<PathBuf>,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let video = if args.frames.is_empty() {
        None
    } else {
        let settings = crate::frames::video_settings(&args.model.resolve()?)?;
        Some((
            crate::frames::load_frames(&args.frames, &settings)?,
            settings,
        ))
    };
    let pipeline = args.model.load_pipeline()?;
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut images: Vec<RgbImage> = Vec::new();
    let mut pending: Vec<RgbImage> = Vec::new();
    if let Some(system) = &args.system {
        history.push(ChatMessage::text("system", system));
    }
    eprintln!("Type a message. /image PATH attaches an image, /reset clears, /quit leaves.");
    let stdin = std::io::stdin();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" || line == "/exit" {
            return Ok(());
        }
        if line == "/reset" {
            history.retain(|m| m.role == "system");
            images.clear();
            pending.clear();
            continue;
        }
        if line.starts_with("/image ") && video.is_some() {
            eprintln!("error: this chat is about a video (--frames); images cannot be added to it");
            continue;
        }
        if let Some(path) = line.strip_prefix("/image ") {
            match load_images(&[PathBuf::from(path.trim())]) {
                Ok(mut img) => {
                    pending.append(&mut img);
                    eprintln!("({} image(s) attached to your next message)", pending.len());
                }
                Err(e) => eprintln!("error: {e:#}"),
            }
            continue;
        }
        let mut messages = history.clone();
        let mut turn_images = images.clone();
        turn_images.extend(pending.iter().cloned());
        let reply = match &video {
            Some((v, settings)) => {
                // The video goes with the first user message of the conversation.
                let shown = history.iter().any(|m| m.role == "user");
                messages.push(if shown {
                    user_message(0, line)
                } else {
                    crate::frames::video_message(line)
                });
                pipeline
                    .prepare_video_chat(&messages, v.frames.clone(), v.clip.clone(), settings)
                    .map_err(anyhow::Error::from)
                    .and_then(|prepared| {
                        answer_prepared(&pipeline, &prepared, &args.decoding, true)
                    })
            }
            None => {
                messages.push(user_message(pending.len(), line));
                answer(
                    &pipeline,
                    messages.clone(),
                    turn_images.clone(),
                    &args.decoding,
                    true,
                )
            }
        };
        match reply {
            Ok(reply) => {
                history = messages;
                history.push(ChatMessage::text("assistant", &reply.text));
                images = turn_images;
                pending.clear();
            }
            // A bad turn (e.g. too long for the context) leaves the conversation as it was.
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
}
