//! `idefics`: the command-line front end. Argument parsing and printing only; the work is in the libraries.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod ask;
mod bench;
mod bench_gemv;
mod bench_quant;
mod bench_train;
mod build_cmd;
mod chat;
mod data_cmd;
mod eval_cmd;
mod forward;
mod frames;
mod malloc;
mod model_source;
mod quantize_cmd;
mod serve_cmd;
mod threads;
mod train_cmd;
mod train_eval;

#[derive(Parser)]
#[command(
    name = "idefics",
    version,
    about = "Idefics2 vision-language models in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a question about images; the answer is streamed.
    Ask(ask::AskArgs),
    /// Chat with the model interactively (with images, or one SmolVLM2 video with --frames).
    Chat(chat::ChatArgs),
    /// Run the model on saved input tensors (or a prompt) and write the logits.
    Forward(forward::ForwardArgs),
    /// Score a model on a benchmark, or rescore a predictions file (`--rescore`).
    Eval(eval_cmd::EvalArgs),
    /// OpenAI-compatible HTTP server (chat completions with images).
    Serve(serve_cmd::ServeArgs),
    /// Synthetic data generation and dataset inspection.
    Data(data_cmd::DataArgs),
    /// Time vision encode, prefill, decode and time to first token on fixed requests (bench_inputs.json), for
    /// Idefics2, Idefics3 and SmolVLM checkpoints.
    Bench(bench::BenchArgs),
    /// Train a tokenizer for a new model on dataset text.
    Tokenizer(build_cmd::TokenizerArgs),
    /// Write a new, randomly initialised model (as transformers' `_init_weights`) from a config and a tokenizer.
    Init(build_cmd::InitArgs),
    /// Pre-train a checkpoint's vision tower with SigLIP's sigmoid loss on image-caption pairs.
    PretrainVision(build_cmd::PretrainVisionArgs),
    /// Build a VLM from a text checkpoint, a vision checkpoint and a new connector.
    Assemble(build_cmd::AssembleArgs),
    /// Train or fine-tune from a TOML recipe (frozen / full / LoRA / DoRA per component); `--resume` continues.
    Train(train_cmd::TrainArgs),
    /// Step time and peak memory of full / LoRA / DoRA training on one fixed batch (a benchmark, not a test).
    BenchTrain(bench_train::BenchTrainArgs),
    /// Merge a peft adapter into its base model and write a full Hugging Face checkpoint.
    Merge(train_cmd::MergeArgs),
    /// The text decoder in f32 and each quantized type side by side: peak RSS, prefill, decode, KL / top-1 / perplexity.
    BenchQuant(bench_quant::BenchQuantArgs),
    /// Decoding's matrix-vector products per weight shape: f32, candle's and our quantized kernels, GB/s.
    BenchGemv(bench_gemv::BenchGemvArgs),
    /// Quantize a checkpoint (q8_0 / q5_0 / q4k / q6k / bf16) once and save it as model.gguf, loadable with --model OUT.
    Quantize(quantize_cmd::QuantizeArgs),
}

fn main() {
    let malloc = malloc::tune();
    // Parsing starts no thread, so the thread split can still depend on the command.
    let cli = Cli::parse();
    let threads = threads::tune(cli.command.workload());
    init_logging();
    tracing::debug!(?malloc, "glibc malloc tuning");
    tracing::debug!(?threads, "candle element-wise threads");
    let result: Result<()> = match cli.command {
        Command::Ask(args) => ask::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Forward(args) => forward::run(args),
        Command::Eval(args) => eval_cmd::run(args),
        Command::Serve(args) => serve_cmd::run(args),
        Command::Data(args) => data_cmd::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Tokenizer(args) => build_cmd::tokenizer(args),
        Command::Init(args) => build_cmd::init_model(args),
        Command::PretrainVision(args) => build_cmd::pretrain_vision(args),
        Command::Assemble(args) => build_cmd::assemble(args),
        Command::Train(args) => train_cmd::run(args),
        Command::Merge(args) => train_cmd::run_merge(args),
        Command::BenchTrain(args) => bench_train::run(args),
        Command::Quantize(args) => quantize_cmd::run(args),
        Command::BenchQuant(args) => bench_quant::run(args),
        Command::BenchGemv(args) => bench_gemv::run(args),
    };
    if let Err(err) = result {
        // One clear line (with its causes) instead of a panic or a debug dump.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

impl Command {
    fn workload(&self) -> threads::Workload {
        match self {
            Command::Train(_) | Command::BenchTrain(_) | Command::PretrainVision(_) => {
                threads::Workload::Training
            }
            _ => threads::Workload::Inference,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(args: &[&str]) -> threads::Workload {
        let cli = Cli::try_parse_from(std::iter::once("idefics").chain(args.iter().copied()))
            .expect("arguments parse");
        cli.command.workload()
    }

    #[test]
    fn only_training_commands_take_candles_pool_down_to_one_thread() {
        use threads::Workload::{Inference, Training};
        assert_eq!(workload(&["train", "--config", "r.toml"]), Training);
        assert_eq!(
            workload(&["bench-train", "--model", "m", "--mode", "lora"]),
            Training
        );
        // Quantized decoding runs on candle's pool: these must keep it.
        assert_eq!(workload(&["bench-quant", "--model", "m"]), Inference);
        assert_eq!(workload(&["ask", "--image", "a.png", "q"]), Inference);
    }
}
