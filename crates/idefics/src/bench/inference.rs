//! `idefics bench`: speed and memory of one checkpoint (Idefics2, Idefics3 or SmolVLM, chosen from `config.json`'s
//! `model_type`) on fixed requests, timed the way `tools/reference/bench_transformers.py` times transformers, so
//! the two JSON reports compare figure by figure. What differs between the families (image processor, image
//! tokens, FLOP counts) is in [`super::model`].
//!
//! Every figure is the median of `repeat` timed runs after `warmup` untimed ones. The requests (input ids,
//! images, splitting flag) come from `bench_inputs.json`; the checkpoint needs no tokenizer. The JSON report is
//! rewritten after every phase (`complete: false` until the end), so a run cut short keeps what it measured.

use super::model::{BenchModel, VisionWork};
use super::report::write_json;
pub use super::report::{build_profile, loadavg, machine_info, median, peak_rss_mb, utc_now};
use super::{decode_bytes_per_token, prefill_flops, MachineLimits};
use crate::nn::{set_kernels, KernelChoice, KernelFamily};
use crate::pipeline::image_tensors;
use crate::{LoadOptions, ModelInputs};
use candle_core::{Device, Tensor, D};
use idefics_processor::{decode_image_file, DecodeLimits, ImageBatch};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Cheapest first, as the Python script, so a run cut short still has the small-image figures.
const VISION_ORDER: [&str; 4] = [
    "photo_640x480_nosplit",
    "photo_640x480_split",
    "photo_980x980_nosplit",
    "photo_980x980_split",
];
const TTFT_ORDER: [&str; 3] = [
    "photo_640x480_nosplit",
    "photo_640x480_split",
    "photo_980x980_split",
];
const TEXT_REQUEST: &str = "text_512";

/// What to measure and where to write it (the CLI's `idefics bench` arguments).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Checkpoint directory (config.json, *.safetensors, processor_config.json or preprocessor_config.json).
    pub model: PathBuf,
    /// Request file (default MODEL/bench_inputs.json); image paths are relative to its directory.
    pub inputs: Option<PathBuf>,
    /// Untimed runs before the timed ones.
    pub warmup: usize,
    /// Timed runs; every figure is their median.
    pub repeat: usize,
    /// Warmup for the vision / TTFT figures (default `warmup`).
    pub image_warmup: Option<usize>,
    /// Repeat for the vision / TTFT figures (default `repeat`).
    pub image_repeat: Option<usize>,
    /// Single-token decoding steps after the 512-token prefill.
    pub decode_tokens: usize,
    /// Request keys to leave out of the vision / TTFT timings.
    pub skip: Vec<String>,
    /// Also measure the machine's peak FLOP/s, the f32 GEMM's ceiling and the memory bandwidth, and report
    /// fractions of them.
    pub machine: bool,
    /// Result file (default benches/results/<date>-idefics-rs.json).
    pub json: Option<PathBuf>,
    /// This crate's inference kernels or candle's composed ops (set for the whole process).
    pub kernels: KernelChoice,
    /// How to store the linear weights for CPU inference (`LoadOptions::cpu_weight_layout`).
    pub weight_layout: crate::model::CpuWeightLayout,
    /// Quantize the text decoder while loading (`--quant`).
    pub quant: Option<crate::quant::QuantConfig>,
    /// The command line, recorded in the report.
    pub command: Vec<String>,
}

/// One line of the summary table: what was measured, its figure, and a note.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    pub what: String,
    pub value: String,
    pub note: String,
}

/// The finished run: the table to print and where the JSON report was written.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Version, build, threads, statistic, CPU and load average.
    pub heading: String,
    pub rows: Vec<BenchRow>,
    pub json_path: PathBuf,
}

/// Why a benchmark stopped; each message names the file or step.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad option or request file.
    #[error("{0}")]
    Invalid(String),
    /// A step failed (`what` names it, e.g. `loading DIR`); the cause is part of the message.
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
    #[error(transparent)]
    Model(#[from] crate::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Image(#[from] idefics_processor::ImageError),
}

type Result<T> = std::result::Result<T, BenchError>;

/// Turns an error into [`BenchError::Failed`] for the step `what`.
pub(crate) fn failed<E: Display>(what: String) -> impl FnOnce(E) -> BenchError {
    move |e| BenchError::Failed {
        what,
        message: e.to_string(),
    }
}

#[derive(Deserialize)]
struct BenchInputs {
    requests: BTreeMap<String, Request>,
}

#[derive(Deserialize)]
struct Request {
    images: Vec<String>,
    do_image_splitting: bool,
    input_ids: Vec<u32>,
    n_tokens: usize,
}

pub fn run(args: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<BenchReport> {
    if args.repeat == 0 {
        return Err(BenchError::Invalid("--repeat must be at least 1".into()));
    }
    set_kernels(KernelFamily::Inference, args.kernels);
    let (w, n) = (args.warmup, args.repeat);
    let vw = args.image_warmup.unwrap_or(w);
    let vn = args.image_repeat.unwrap_or(n);
    if vn == 0 {
        return Err(BenchError::Invalid(
            "--image-repeat must be at least 1".into(),
        ));
    }
    let inputs_path = args
        .inputs
        .clone()
        .unwrap_or_else(|| args.model.join("bench_inputs.json"));
    let text = std::fs::read_to_string(&inputs_path)
        .map_err(failed(format!("reading {}", inputs_path.display())))?;
    let bench: BenchInputs = serde_json::from_str(&text)
        .map_err(failed(format!("parsing {}", inputs_path.display())))?;
    let image_root = inputs_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let request = |key: &str| {
        bench.requests.get(key).ok_or_else(|| {
            BenchError::Invalid(format!("{} has no request {key:?}", inputs_path.display()))
        })
    };
    let out_path = args.json.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "benches/results/{}-idefics-rs.json",
            &utc_now()[..10]
        ))
    });

    let mut machine = machine_info();
    let command = &args.command;
    // Probed before the model loads, on as many threads as candle's and our kernels use.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limits = args.machine.then(|| MachineLimits::measure(threads));
    if let Some(l) = &limits {
        machine.insert("measured_limits".into(), json!({
            "peak_gflops": l.peak.flops / 1e9, "fma_lanes": l.peak.lanes, "threads": l.peak.threads,
            "gemm_ceiling_gflops": l.gemm.flops / 1e9, "gemm_ceiling_mnk": [l.gemm.shape.0, l.gemm.shape.1, l.gemm.shape.2],
            "copy_gb_s": l.bandwidth.copy / 1e9, "read_gb_s": l.bandwidth.read / 1e9,
            "bandwidth_buffer_mib": l.bandwidth.buffer_bytes >> 20,
            "method": "peak: 12 independent FMA chains per thread on the widest vectors, best of 3; GEMM ceiling: the f32 GEMM of the linear layers, one cache-resident product per thread (a 64-row panel x 96 rows, k 256), best of 3; bandwidth: copy (2n bytes) and read passes over 256 MiB, best of 3",
        }));
        progress(&format!(
            "machine: peak {:.1} GFLOP/s ({} threads, {}-lane FMA), GEMM ceiling {:.1} GFLOP/s, copy {:.1} GB/s, read {:.1} GB/s",
            l.peak.flops / 1e9, l.peak.threads, l.peak.lanes, l.gemm.flops / 1e9, l.bandwidth.copy / 1e9, l.bandwidth.read / 1e9
        ));
    }
    let t0 = Instant::now();
    let opts = LoadOptions {
        device: Device::Cpu,
        use_fused_kernels: true,
        quant: args.quant,
        cpu_weight_layout: args.weight_layout,
        ..LoadOptions::default()
    };
    let bench_model = BenchModel::load(&args.model, &opts)
        .map_err(failed(format!("loading {}", args.model.display())))?;
    let model = &bench_model.model;
    let load_s = t0.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_mb();
    let mut res = Map::new();
    res.insert("load_s".into(), json!(load_s));
    res.insert("rss_after_load_mb".into(), json!(rss_after_load));
    let mut rows = Rows {
        rows: Vec::new(),
        progress,
    };

    let save = |res: &Map<String, Value>, machine: &mut Map<String, Value>, complete: bool| {
        machine.insert("loadavg_1_5_15_now".into(), json!(loadavg()));
        let mut res = res.clone();
        res.insert("peak_rss_mb".into(), json!(peak_rss_mb()));
        let out = json!({
            "tool": "idefics-rs",
            "command": command.join(" "),
            "complete": complete,
            "checkpoint": args.model.display().to_string(),
            "model_type": bench_model.family().model_type(),
            "date_utc": utc_now(),
            "settings": {
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "dtype": "float32", "device": "cpu", "use_fused_kernels": true,
                "weight_layout": format!("{:?}", args.weight_layout),
                "quant": args.quant.map(|q| q.weights.name()), "quant_vision": args.quant.is_some_and(|q| q.vision),
                "warmup": w, "repeat": n, "image_warmup": vw, "image_repeat": vn,
                "statistic": "median", "decode_tokens": args.decode_tokens, "skipped": args.skip,
            },
            "versions": {"idefics-rs": env!("CARGO_PKG_VERSION"), "build_profile": build_profile()},
            "machine": machine,
            "results": res,
        });
        write_json(&out_path, &out)
    };

    // --- prefill: one forward over the 512-token text prompt with a fresh cache. Full logits, as
    // transformers' `model(input_ids, use_cache=True)` computes the lm head at every position.
    let req = request(TEXT_REQUEST)?;
    let ids = Tensor::new(req.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let text_inputs = ModelInputs {
        input_ids: Some(ids),
        ..Default::default()
    };
    let (pre_s, runs) = timed(w, n, || {
        let mut cache = model.new_cache();
        model.forward(&text_inputs, Some(&mut cache))?;
        Ok(())
    })?;
    let tps = req.n_tokens as f64 / pre_s;
    let cfg = bench_model.text_config();
    let pre_flops = prefill_flops(cfg, 0, req.n_tokens, req.n_tokens);
    let (pre_frac, pre_gemm) = compute_fractions(limits.as_ref(), pre_flops, pre_s);
    res.insert(
        "prefill_text_512".into(),
        json!({"s": pre_s, "tokens_per_s": tps, "runs_s": runs, "fraction_of_peak_flops": pre_frac,
               "fraction_of_gemm_ceiling": pre_gemm}),
    );
    rows.push(
        "prefill 512 text tokens",
        format!("{:9.1} ms", pre_s * 1e3),
        format!("{tps:8.1} tok/s{}", of_compute(pre_frac, pre_gemm)),
    );
    save(&res, &mut machine, false)?;

    // --- decode: prefill once, then N greedy single-token steps with the cache (no eos: a fixed N); each step
    // is timed and the figure is the median over all steps of all repeats.
    let steps_n = args.decode_tokens;
    let decode_run = || -> Result<Vec<f64>> {
        let mut cache = model.new_cache();
        let logits = model.forward_last(&text_inputs, &mut cache)?;
        let mut tok = argmax(&logits)?;
        let mut steps = Vec::with_capacity(steps_n);
        for _ in 0..steps_n {
            let t = Instant::now();
            let logits = model.decode_step(&[tok], &mut cache)?;
            tok = argmax(&logits)?;
            steps.push(t.elapsed().as_secs_f64());
        }
        Ok(steps)
    };
    for _ in 0..w {
        decode_run()?;
    }
    let mut all_steps = Vec::new();
    for _ in 0..n {
        all_steps.extend(decode_run()?);
    }
    if !all_steps.is_empty() {
        let mean = all_steps.iter().sum::<f64>() / all_steps.len() as f64;
        let med = median(&mut all_steps);
        // Mean context over the steps: the prompt plus half the new tokens.
        let bytes = decode_bytes_per_token(cfg, req.n_tokens + steps_n / 2, 4);
        let dec_frac = limits.map(|l| l.bandwidth_fraction(bytes, med));
        res.insert("decode".into(), json!({
            "bytes_per_token": bytes, "fraction_of_bandwidth": dec_frac,
            "request": TEXT_REQUEST, "prompt_tokens": req.n_tokens, "new_tokens": steps_n,
            "median_step_s": med, "tokens_per_s": 1.0 / med, "ms_per_token": med * 1e3, "mean_step_s": mean,
            "method": "prefill once, then N greedy single-token forwards with the KV cache; median over all steps of all repeats",
        }));
        rows.push(
            &format!("decode {steps_n} tokens (ctx {})", req.n_tokens),
            format!("{:9.1} ms/tok", med * 1e3),
            format!("{:8.1} tok/s{}", 1.0 / med, of_limit(dec_frac, "bandwidth")),
        );
        save(&res, &mut machine, false)?;
    }

    // --- image processor (file decode + split + resize + normalise + pad) and vision tower + connector.
    let preprocess = |req: &Request| -> Result<ImageBatch> {
        let mut sample = Vec::with_capacity(req.images.len());
        for p in &req.images {
            let path = image_root.join(p);
            sample.push(
                decode_image_file(&path, &DecodeLimits::default())
                    .map_err(failed(format!("decoding {}", path.display())))?,
            );
        }
        Ok(bench_model.preprocess(sample, req.do_image_splitting)?)
    };
    // The request's prompt must hold as many `<image>` tokens as the processor's frames give (a
    // bench_inputs.json written for another processor setting or family fails here, not inside the model).
    let check_tokens = |key: &str, req: &Request, work: &VisionWork| -> Result<()> {
        let found = bench_model.count_image_tokens(&req.input_ids);
        if found == work.image_tokens {
            return Ok(());
        }
        Err(BenchError::Invalid(format!(
            "{}: request {key:?} has {found} <image> tokens, but the {} image processor makes {} frames \
             x {} tokens = {} (rewrite bench_inputs.json for this checkpoint)",
            inputs_path.display(),
            bench_model.family().model_type(),
            work.frames,
            model.image_seq_len(),
            work.image_tokens
        )))
    };
    let mut vision = Map::new();
    for key in VISION_ORDER {
        if args.skip.iter().any(|s| s == key) {
            continue;
        }
        let req = request(key)?;
        let (prep_s, _) = timed(vw, vn, || preprocess(req).map(|_| ()))?;
        let batch = preprocess(req)?;
        check_tokens(key, req, &bench_model.planned_work(&batch))?;
        let (pv, pm) = image_tensors(&batch, &Device::Cpu)?;
        let mut work = None;
        let (vis_s, runs) = timed(vw, vn, || {
            work = Some(bench_model.encode_images(&pv, &pm)?);
            Ok(())
        })?;
        let work =
            work.ok_or_else(|| BenchError::Invalid("--image-repeat must be at least 1".into()))?;
        let shape = batch.pixel_values_shape;
        let patches = work.valid_patches;
        let vis_flops = bench_model.vision_flops(&work.patches);
        let (vis_frac, vis_gemm) = compute_fractions(limits.as_ref(), vis_flops, vis_s);
        vision.insert(
            key.into(),
            json!({
                "preprocess_s": prep_s, "vision_encode_s": vis_s, "vision_runs_s": runs,
                "pixel_values_shape": shape, "valid_patches_total": patches,
                "frames": work.frames, "image_tokens": work.image_tokens,
                "flops": vis_flops, "fraction_of_peak_flops": vis_frac,
                "fraction_of_gemm_ceiling": vis_gemm,
            }),
        );
        rows.push(
            &format!("preprocess {key}"),
            format!("{:9.1} ms", prep_s * 1e3),
            String::new(),
        );
        rows.push(
            &format!("vision+connector {key}"),
            format!("{:9.1} ms", vis_s * 1e3),
            format!(
                "{shape:?}, {} frames, {patches} patches, {} image tokens{}",
                work.frames,
                work.image_tokens,
                of_compute(vis_frac, vis_gemm)
            ),
        );
        res.insert("vision".into(), Value::Object(vision.clone()));
        save(&res, &mut machine, false)?;
    }

    // --- time to first token: image processor + vision + prefill + first (greedy) token, fresh cache.
    let mut ttft = Map::new();
    for key in TTFT_ORDER {
        if args.skip.iter().any(|s| s == key) {
            continue;
        }
        let req = request(key)?;
        let work = bench_model.planned_work(&preprocess(req)?);
        check_tokens(key, req, &work)?;
        let (s, runs) = timed(vw, vn, || {
            let batch = preprocess(req)?;
            let (pv, pm) = image_tensors(&batch, &Device::Cpu)?;
            let inputs = ModelInputs {
                input_ids: Some(Tensor::new(req.input_ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?),
                pixel_values: Some(pv),
                pixel_attention_mask: Some(pm),
                ..Default::default()
            };
            let mut cache = model.new_cache();
            argmax(&model.forward_last(&inputs, &mut cache)?)?;
            Ok(())
        })?;
        let flops =
            bench_model.vision_flops(&work.patches) + prefill_flops(cfg, 0, req.n_tokens, 1);
        let (frac, gemm_frac) = compute_fractions(limits.as_ref(), flops, s);
        ttft.insert(
            key.into(),
            json!({"s": s, "prompt_tokens": req.n_tokens, "image_tokens": work.image_tokens, "runs_s": runs,
                   "flops": flops, "fraction_of_peak_flops": frac, "fraction_of_gemm_ceiling": gemm_frac}),
        );
        rows.push(
            &format!("TTFT {key}"),
            format!("{:9.1} ms", s * 1e3),
            format!(
                "{} prompt tokens{}",
                req.n_tokens,
                of_compute(frac, gemm_frac)
            ),
        );
        res.insert("ttft".into(), Value::Object(ttft.clone()));
        save(&res, &mut machine, false)?;
    }

    let peak = peak_rss_mb();
    rows.push(
        "peak RSS",
        format!("{peak:9.0} MB"),
        format!("after load {rss_after_load:.0} MB"),
    );
    let heading = format!(
        "idefics-rs {} ({} build), candle CPU f32, {} threads, median of {n} after {w} warmup; machine: {}, load {:?}",
        env!("CARGO_PKG_VERSION"),
        build_profile(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        machine.get("cpu").and_then(Value::as_str).unwrap_or("?"),
        loadavg(),
    );
    save(&res, &mut machine, true)?;
    Ok(BenchReport {
        heading,
        rows: rows.rows,
        json_path: out_path,
    })
}

/// A compute-bound phase's FLOP/s as fractions of the measured FMA peak and of the GEMM's ceiling.
fn compute_fractions(
    limits: Option<&MachineLimits>,
    flops: f64,
    seconds: f64,
) -> (Option<f64>, Option<f64>) {
    (
        limits.map(|l| l.compute_fraction(flops, seconds)),
        limits.map(|l| l.gemm_fraction(flops, seconds)),
    )
}

/// `", 48.0% of peak FLOP/s, 62.0% of the GEMM ceiling"` when the machine was probed.
fn of_compute(peak: Option<f64>, gemm: Option<f64>) -> String {
    match (peak, gemm) {
        (Some(p), Some(g)) => format!(
            ", {:.1}% of peak FLOP/s, {:.1}% of the GEMM ceiling",
            p * 100.0,
            g * 100.0
        ),
        _ => String::new(),
    }
}

/// `", 42.0% of peak FLOP/s"` when the machine was probed.
fn of_limit(fraction: Option<f64>, limit: &str) -> String {
    fraction.map_or(String::new(), |f| format!(", {:.1}% of {limit}", f * 100.0))
}

/// The table being built; each row is also reported as it is measured.
struct Rows<'a> {
    rows: Vec<BenchRow>,
    progress: &'a mut dyn FnMut(&str),
}

impl Rows<'_> {
    fn push(&mut self, what: &str, value: String, note: String) {
        (self.progress)(&format!("{what}: {value} {note}"));
        self.rows.push(BenchRow {
            what: what.to_string(),
            value,
            note,
        });
    }
}

/// Median of `repeat` timed calls after `warmup` untimed ones, and the timed runs (seconds).
fn timed(
    warmup: usize,
    repeat: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Vec<f64>)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut runs = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        f()?;
        runs.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = runs.clone();
    Ok((median(&mut sorted), runs))
}

fn argmax(logits: &Tensor) -> Result<u32> {
    let ids: Vec<u32> = logits.argmax(D::Minus1)?.flatten_all()?.to_vec1()?;
    ids.first()
        .copied()
        .ok_or_else(|| BenchError::Invalid("empty logits".into()))
}

#[cfg(test)]
#[path = "inference_tests.rs"]
mod tests;
