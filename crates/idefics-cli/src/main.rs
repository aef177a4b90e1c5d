//! `idefics`: the command-line front end. Argument parsing and printing only; the work is in the libraries.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod forward;
mod serve_cmd;

#[derive(Parser)]
#[command(name = "idefics", version, about = "Idefics2 vision-language models in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the model on saved input tensors (or a prompt) and write the logits.
    Forward(forward::ForwardArgs),
    /// OpenAI-compatible HTTP server (chat completions with images).
    Serve(serve_cmd::ServeArgs),
}

fn main() {
    init_logging();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Serve(args) => serve_cmd::run(args),
    };
    if let Err(err) = result {
        // One clear line (with its causes) instead of a panic or a debug dump.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDEFICS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
