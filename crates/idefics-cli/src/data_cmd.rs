//! `idefics data`: generate the synthetic dataset and look into dataset files.

use std::path::PathBuf;

use anyhow::{Context, Result};
use idefics_data::synth::{self, Family, SynthConfig};
use idefics_data::{CauldronReader, ObelicsReader, PairReader, ReaderOptions};

#[derive(clap::Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Generate the synthetic dataset (The Cauldron parquet + pairs + interleaved documents, train + held-out).
    Synth(SynthArgs),
    /// Count the rows of dataset files (parquet / JSONL) and print the first samples.
    Inspect(InspectArgs),
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output folder (gets train/, heldout/ and metadata.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Training examples per task family.
    #[arg(long)]
    pub n: usize,
    /// Held-out examples per task family [default: n / 10, at least 1].
    #[arg(long)]
    pub heldout: Option<usize>,
    /// Random seed (the held-out split uses a seed derived from it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Task families, comma-separated.
    #[arg(
        long,
        default_value = "shapes,ocr,docs,charts,basics",
        value_delimiter = ','
    )]
    pub tasks: Vec<String>,
    /// Rows per parquet row group.
    #[arg(long, default_value_t = 64)]
    pub rows_per_group: usize,
    /// Questions per training image (distinct question kinds; a family with fewer kinds gives fewer). The
    /// images and the first questions are the same for any value; the held-out split always has 3.
    #[arg(long, default_value_t = synth::DEFAULT_QUESTIONS_PER_IMAGE)]
    pub questions_per_image: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Layout {
    /// The Cauldron conversations (images + texts).
    Chat,
    /// Image-text pairs (image + text).
    Pairs,
    /// OBELICS interleaved documents (images + texts, parallel).
    Interleaved,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Files or folders of .parquet / .jsonl files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "chat")]
    pub layout: Layout,
    /// Samples to print.
    #[arg(long, default_value_t = 3)]
    pub show: usize,
    /// Also write the images of the printed chat samples here (`<row>_<k>.<ext>`, bytes as stored), with
    /// `samples.jsonl` listing their files and turns: handy to try `idefics ask` on dataset images.
    #[arg(long)]
    pub export: Option<PathBuf>,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Synth(a) => synth_cmd(a),
        DataCommand::Inspect(a) => inspect(a),
    }
}

fn synth_cmd(a: SynthArgs) -> Result<()> {
    let families = a
        .tasks
        .iter()
        .map(|t| Family::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = SynthConfig {
        out: a.out.clone(),
        n: a.n,
        heldout: a.heldout.unwrap_or((a.n / 10).max(1)),
        seed: a.seed,
        families,
        rows_per_group: a.rows_per_group,
        questions_per_image: a.questions_per_image,
    };
    let meta =
        synth::generate(&cfg).with_context(|| format!("generating into {}", a.out.display()))?;
    for (split, s) in &meta.splits {
        for (family, f) in &s.families {
            println!(
                "{split:8} {family:7} {:6} images {:6} questions  chance {:.3}  majority {:.3}",
                f.examples, f.questions, f.chance_uniform, f.majority_baseline
            );
        }
        println!(
            "{split:8} pairs {}  interleaved documents {}",
            s.pairs, s.interleaved_documents
        );
    }
    println!("wrote {}", a.out.join("metadata.json").display());
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<()> {
    let opts = ReaderOptions::default();
    let (mut ok, mut bad) = (0usize, 0usize);
    let mut report = |line: Result<String, idefics_data::DataError>, shown: &mut usize| match line {
        Ok(s) => {
            ok += 1;
            if *shown < a.show {
                println!("{s}");
                *shown += 1;
            }
        }
        Err(e) => {
            bad += 1;
            eprintln!("bad row: {e}");
        }
    };
    let mut shown = 0;
    match a.layout {
        Layout::Chat => {
            if let Some(dir) = &a.export {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut listing = String::new();
            for (row, s) in CauldronReader::open(&a.paths, opts)?.enumerate() {
                if let (Some(dir), Ok(sample)) = (&a.export, &s) {
                    if shown < a.show {
                        listing.push_str(&export_sample(dir, row, sample)?);
                    }
                }
                report(
                    s.map(|s| format!("{} image(s), turns: {:?}", s.images.len(), s.turns)),
                    &mut shown,
                );
            }
            if let Some(dir) = &a.export {
                std::fs::write(dir.join("samples.jsonl"), listing)?;
            }
        }
        Layout::Pairs => {
            for s in PairReader::open(&a.paths, opts)? {
                report(
                    s.map(|s| format!("{} -> {:?}", s.image.origin(), s.text)),
                    &mut shown,
                );
            }
        }
        Layout::Interleaved => {
            for s in ObelicsReader::open(&a.paths, opts)? {
                report(
                    s.map(|d| format!("{} items, {} image(s)", d.items.len(), d.images().count())),
                    &mut shown,
                );
            }
        }
    }
    println!("{ok} rows read, {bad} bad rows");
    Ok(())
}

/// Writes the images of one chat sample into `dir` and returns its `samples.jsonl` line.
fn export_sample(
    dir: &std::path::Path,
    row: usize,
    sample: &idefics_data::ChatSample,
) -> Result<String> {
    let mut files = Vec::new();
    for (k, img) in sample.images.iter().enumerate() {
        let bytes = img.load_bytes()?;
        let ext = if bytes.starts_with(b"\x89PNG") {
            "png"
        } else if bytes.starts_with(&[0xff, 0xd8]) {
            "jpg"
        } else {
            "img"
        };
        let name = format!("{row:04}_{k}.{ext}");
        std::fs::write(dir.join(&name), &bytes)
            .with_context(|| format!("writing {}", dir.join(&name).display()))?;
        files.push(name);
    }
    let line = serde_json::json!({ "images": files, "texts": sample.turns });
    Ok(format!("{line}\n"))
}
