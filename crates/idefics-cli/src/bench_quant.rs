//! `idefics bench-quant`: the text decoder in f32 and in each quantized type, side by side in one run: peak
//! memory, load time, prefill and decode speed (each variant in its own child process, so that peak RSS is its
//! own; variants alternate round by round and ratios are taken within a round), then the quality of each type
//! against f32 on one token sequence (KL divergence of the next-token distributions, top-1 agreement,
//! perplexity).

use anyhow::{bail, Context, Result};
use clap::Args;
use idefics::bench::inference::{
    build_profile, loadavg, machine_info, median, peak_rss_mb, utc_now,
};
use idefics::bench::quant::{divergence, TextOnlyModel};
use idefics::quant::{QuantConfig, QuantType};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchQuantArgs {
    /// Checkpoint directory (any family; only the text decoder and head are loaded).
    #[arg(long)]
    model: PathBuf,
    /// Variants to compare; `f32` is the reference and is always included.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f32,q8_0,q5_0,q4k,q6k,bf16"
    )]
    types: Vec<String>,
    /// Rounds of all variants (alternating); speed figures are medians over rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Prompt tokens of the prefill.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Single-token decoding steps after the prefill.
    #[arg(long, default_value_t = 32)]
    decode: usize,
    /// Timed prefills per child (median).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Text for the quality comparison (tokenized with the model's tokenizer.json); default: the ids of
    /// MODEL/bench_inputs.json's text request, else a fixed spread of ids.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Most tokens of the quality comparison.
    #[arg(long, default_value_t = 512)]
    quality_tokens: usize,
    /// Result file (JSON).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run one variant's speed measurement and print it as JSON.
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn variant(name: &str) -> Result<Option<QuantConfig>> {
    if name == "f32" {
        return Ok(None);
    }
    let ty: QuantType = name.parse().map_err(anyhow::Error::msg)?;
    Ok(Some(QuantConfig::new(ty)))
}

/// Prompt ids: the bench request's text ids when the checkpoint has them, else a fixed spread of ids.
fn default_ids(model: &Path, vocab: usize, n: usize) -> Vec<u32> {
    let from_file = std::fs::read_to_string(model.join("bench_inputs.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| {
            v["requests"]["text_512"]["input_ids"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64().map(|x| x as u32))
                    .collect::<Vec<_>>()
            })
        });
    let mut ids = from_file.unwrap_or_default();
    let vocab = vocab.max(4) as u64;
    let mut i = ids.len() as u64;
    while ids.len() < n {
        ids.push((3 + (i * 7919 + i * i * 31) % (vocab - 3)) as u32);
        i += 1;
    }
    ids.truncate(n);
    ids
}

fn child(args: &BenchQuantArgs, name: &str) -> Result<()> {
    let quant = variant(name)?;
    let t0 = Instant::now();
    let model = TextOnlyModel::load(&args.model, quant)
        .with_context(|| format!("loading {}", args.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();
    let ids = default_ids(&args.model, model.config().vocab_size, args.prefill);
    let mut prefill = Vec::new();
    for i in 0..=args.repeat {
        let mut cache = model.new_cache();
        let t = Instant::now();
        model.forward(&ids, &mut cache, 1)?;
        if i > 0 {
            prefill.push(t.elapsed().as_secs_f64()); // the first run is the warmup
        }
    }
    let mut cache = model.new_cache();
    let mut next = model
        .forward(&ids, &mut cache, 1)?
        .argmax(candle_core::D::Minus1)?
        .to_vec1::<u32>()?[0];
    let mut steps = Vec::new();
    for _ in 0..args.decode + 1 {
        let t = Instant::now();
        let logits = model.forward(&[next], &mut cache, 1)?;
        steps.push(t.elapsed().as_secs_f64());
        next = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?[0];
    }
    steps.remove(0);
    let prefill_s = median(&mut prefill);
    let decode_s = median(&mut steps);
    let report = model.quant_report().cloned();
    println!(
        "{}",
        json!({
            "variant": name,
            "load_s": load_s,
            "rss_after_load_mb": rss_after_load,
            "peak_rss_mb": peak_rss_mb(),
            "prefill_s": prefill_s,
            "prefill_tok_s": args.prefill as f64 / prefill_s,
            "decode_ms": decode_s * 1e3,
            "decode_tok_s": 1.0 / decode_s,
            "quantized": report,
            "loadavg": loadavg(),
        })
    );
    Ok(())
}

pub fn run(args: BenchQuantArgs) -> Result<()> {
    if let Some(name) = &args.child {
        return child(&args, name);
    }
    if args.rounds == 0 || args.repeat == 0 || args.prefill == 0 {
        bail!("--rounds, --repeat and --prefill must be at least 1");
    }
    let mut names = vec!["f32".to_string()];
    for t in &args.types {
        let name = match t.as_str() {
            "f32" => continue,
            other => other
                .parse::<QuantType>()
                .map_err(anyhow::Error::msg)?
                .name()
                .to_string(),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let exe = std::env::current_exe().context("locating the idefics binary")?;
    let mut rounds: Vec<Vec<Value>> = Vec::new();
    for round in 0..args.rounds {
        let mut row = Vec::new();
        for name in &names {
            let out = Command::new(&exe)
                .args(["bench-quant", "--model"])
                .arg(&args.model)
                .args(["--child", name, "--prefill", &args.prefill.to_string()])
                .args([
                    "--decode",
                    &args.decode.to_string(),
                    "--repeat",
                    &args.repeat.to_string(),
                ])
                .output()
                .with_context(|| format!("running {}", exe.display()))?;
            if !out.status.success() {
                bail!(
                    "the {name} run failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let v: Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("the {name} run printed no result"))?;
            eprintln!(
                "round {} {name:>5}: peak RSS {:7.1} MB, prefill {:7.1} tok/s, decode {:6.1} tok/s, load {:.2} s",
                round + 1,
                v["peak_rss_mb"].as_f64().unwrap_or(0.0),
                v["prefill_tok_s"].as_f64().unwrap_or(0.0),
                v["decode_tok_s"].as_f64().unwrap_or(0.0),
                v["load_s"].as_f64().unwrap_or(0.0),
            );
            row.push(v);
        }
        rounds.push(row);
    }

    // Quality: one process, the f32 logits first, then each type's.
    let reference = TextOnlyModel::load(&args.model, None)?;
    let ids = match &args.text {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let tok = idefics::processor::TextTokenizer::from_dir(&args.model)
                .with_context(|| format!("tokenizer of {}", args.model.display()))?;
            let mut ids = tok.encode(&text, true)?;
            ids.truncate(args.quality_tokens);
            ids
        }
        None => default_ids(
            &args.model,
            reference.config().vocab_size,
            args.quality_tokens,
        ),
    };
    if ids.len() < 2 {
        bail!("the quality text has fewer than 2 tokens");
    }
    let ref_logits = reference.forward(&ids, &mut reference.new_cache(), ids.len())?;
    drop(reference);
    let mut quality = serde_json::Map::new();
    for name in names.iter().skip(1) {
        let model = TextOnlyModel::load(&args.model, variant(name)?)?;
        let logits = model.forward(&ids, &mut model.new_cache(), ids.len())?;
        let d = divergence(&ref_logits, &logits, &ids[1..])?;
        eprintln!(
            "quality {name:>5}: mean KL {:.2e}, max KL {:.2e}, top-1 agreement {:.3}, perplexity {:.3} -> {:.3}",
            d.mean_kl, d.max_kl, d.top1_agreement, d.reference_ppl, d.quantized_ppl
        );
        quality.insert(name.clone(), serde_json::to_value(d)?);
    }

    // Ratios within each round against that round's f32, then their median.
    let figure = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let mut summary = serde_json::Map::new();
    eprintln!("\nvariant  peak RSS (x f32)  prefill tok/s (x f32)  decode tok/s (x f32)");
    for (i, name) in names.iter().enumerate() {
        let col = |key: &str, ratio: bool| -> f64 {
            let mut v: Vec<f64> = rounds
                .iter()
                .map(|r| {
                    let x = figure(&r[i], key);
                    if ratio {
                        x / figure(&r[0], key)
                    } else {
                        x
                    }
                })
                .collect();
            median(&mut v)
        };
        let s = json!({
            "peak_rss_mb": col("peak_rss_mb", false), "peak_rss_x_f32": col("peak_rss_mb", true),
            "prefill_tok_s": col("prefill_tok_s", false), "prefill_x_f32": col("prefill_tok_s", true),
            "decode_tok_s": col("decode_tok_s", false), "decode_x_f32": col("decode_tok_s", true),
        });
        eprintln!(
            "{name:>7}  {:8.1} MiB ({:.2}x)  {:10.1} ({:.2}x)  {:10.1} ({:.2}x)",
            s["peak_rss_mb"].as_f64().unwrap_or(0.0),
            s["peak_rss_x_f32"].as_f64().unwrap_or(0.0),
            s["prefill_tok_s"].as_f64().unwrap_or(0.0),
            s["prefill_x_f32"].as_f64().unwrap_or(0.0),
            s["decode_tok_s"].as_f64().unwrap_or(0.0),
            s["decode_x_f32"].as_f64().unwrap_or(0.0),
        );
        summary.insert(name.clone(), s);
    }
    let out = json!({
        "tool": "idefics-rs bench-quant",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "checkpoint": args.model.display().to_string(),
        "date_utc": utc_now(),
        "settings": {"prefill": args.prefill, "decode": args.decode, "repeat": args.repeat, "rounds": args.rounds,
                     "quality_tokens": ids.len(), "quality_text": args.text.as_ref().map(|p| p.display().to_string()),
                     "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
        "versions": {"idefics-rs": env!("CARGO_PKG_VERSION"), "build_profile": build_profile()},
        "machine": machine_info(),
        "rounds": rounds,
        "summary": summary,
        "quality": quality,
    });
    if let Some(path) = &args.json {
        idefics::bench::report::write_json(path, &out)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
