//! `idefics chat`: an interactive multi-turn conversation. `/image PATH` attaches an image to the next message,
//! `/reset` starts over, `/quit` (or end of input) leaves.

use crate::ask::{answer, load_images, user_message, DecodingArgs};
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
}

pub fn run(args: ChatArgs) -> Result<()> {
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
        messages.push(user_message(pending.len(), line));
        let mut turn_images = images.clone();
        turn_images.extend(pending.iter().cloned());
        match answer(
            &pipeline,
            messages.clone(),
            turn_images.clone(),
            &args.decoding,
            true,
        ) {
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
