//! A stable-Rust fuzzer for image decoding + the Idefics2 processor (cargo-fuzz needs nightly).
//!
//! It mutates a seed corpus (every image under tests/fixtures/images/files and tests/fixtures/jpeg/files)
//! with a deterministic mutator (bit flips, interesting bytes, 16-bit field overwrites such as image
//! sizes, chunk insert / delete / duplicate, truncation, splicing two inputs) and checks, for each input:
//! no panic (decoders run under `catch_unwind`, which reports a panic as a "decoder panicked" error), no
//! run longer than 1 s, and no allocation beyond a bound derived from the decode limits (a counting
//! global allocator measures the peak of live bytes).
//!
//! `cargo test -p idefics-processor --test fuzz_decode` runs a short bounded pass (CI). For a long run:
//! `IDEFICS_FUZZ_SECS=600 IDEFICS_FUZZ_SEED=1 cargo test --release -p idefics-processor --test fuzz_decode -- --nocapture`
//! Inputs that fail are written to `$IDEFICS_FUZZ_OUT` (default: the system temp dir); commit them under
//! tests/fixtures/fuzz_regressions/, which this test always replays.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idefics_processor::image::{
    decode_image, DecodeLimits, Idefics2ImageProcessor, Idefics2ImageProcessorConfig,
    Idefics3ImageProcessor, Idefics3ImageProcessorConfig, ImageSize,
};

struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
thread_local!(static TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
            if layout.size() > (1 << 30) && std::env::var_os("IDEFICS_FUZZ_TRACE").is_some() {
                TRACE.with(|t| {
                    if !t.replace(true) {
                        eprintln!("{}", std::backtrace::Backtrace::force_capture());
                        t.set(false);
                    }
                });
            }
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Pixel cap of the fuzz runs: work linear in the pixel count stays far below the hang bound (a 1 MP image
/// decodes and goes through the processor in ~0.1 s in the dev profile), so a hang means a blow-up.
const MAX_PIXELS: u64 = 1_000_000;
/// Peak live bytes one input may add: the largest JPEG layout (4 components x 2-byte coefficients +
/// 4 planes + RGB output, on MCU-padded sizes) and the processor's frames are well under 40 bytes per
/// capped pixel; the constant covers allocator and decoder scratch.
const MAX_EXTRA_BYTES: usize = MAX_PIXELS as usize * 40 + (32 << 20);
const HANG: Duration = Duration::from_secs(1);

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for sub in ["images/files", "jpeg/files", "fuzz_regressions"] {
        let Ok(entries) = std::fs::read_dir(fixtures().join(sub)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for p in paths {
            let bytes = std::fs::read(&p).unwrap();
            if bytes.len() <= 64 << 10 {
                seeds.push((
                    format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                    bytes,
                ));
            }
        }
    }
    seeds
}

fn mutate(rng: &mut Rng, seeds: &[(String, Vec<u8>)], input: &[u8]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if d.is_empty() {
            d.push(0xFF);
        }
        let i = rng.below(d.len());
        match rng.below(9) {
            0 => d[i] ^= 1 << rng.below(8),
            1 => d[i] = [0, 0xFF, 0x7F, 0x80, 1, 0xD9, 0xDA, 0x10][rng.below(8)],
            2 => {
                let v: u16 = [0, 1, 0xFFFF, 0x7FFF, 0x8000, 65500, 8192, 3][rng.below(8)];
                if i + 2 <= d.len() {
                    d[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            3 => d.truncate(i.max(1)),
            4 => {
                let n = rng.below(64).min(d.len() - i);
                d.drain(i..i + n);
            }
            5 => {
                let n = rng.below(64).min(d.len() - i);
                let chunk = d[i..i + n].to_vec();
                let at = rng.below(d.len());
                d.splice(at..at, chunk);
            }
            6 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, bytes);
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())].1;
                let from = rng.below(other.len());
                d.truncate(i);
                d.extend_from_slice(&other[from..]);
            }
            _ => {
                let v = rng.next().to_le_bytes();
                let n = rng.below(4) + 1;
                for (k, b) in v.iter().take(n).enumerate() {
                    if let Some(x) = d.get_mut(i + k) {
                        *x = *b;
                    }
                }
            }
        }
    }
    d
}

#[derive(Default, Debug)]
struct Stats {
    execs: u64,
    decoded: u64,
    panics: u64,
    hangs: u64,
    over_alloc: u64,
    slowest: Duration,
}

/// One input through decode + processor; returns a failure description if a check fails.
/// Both processor families: Idefics2 (crops + full image) and Idefics3 / SmolVLM (tiles + global image, at a
/// small tile size so that the bound on allocations stays meaningful).
struct Processors {
    idefics2: Idefics2ImageProcessor,
    idefics3: Idefics3ImageProcessor,
}

fn run_one(data: &[u8], proc: &Processors, stats: &mut Stats) -> Option<String> {
    let limits = DecodeLimits {
        max_pixels: MAX_PIXELS,
        ..Default::default()
    };
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let decoded = decode_image(data, &limits);
    let mut failure: Vec<String> = Vec::new();
    match &decoded {
        Ok(img) => {
            stats.decoded += 1;
            let split = img.width() >= 2 && img.height() >= 2;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = proc.idefics2.preprocess(&[vec![img.clone()]], Some(split));
                let _ = proc.idefics3.preprocess(&[vec![img.clone()]], Some(split));
            }));
            if r.is_err() {
                stats.panics += 1;
                failure.push("processor panicked".into());
            }
        }
        Err(e) if e.to_string().contains("panicked") => {
            stats.panics += 1;
            failure.push(format!("decoder panicked: {e}"));
        }
        Err(_) => {}
    }
    drop(decoded);
    let took = start.elapsed();
    stats.slowest = stats.slowest.max(took);
    if took > HANG {
        stats.hangs += 1;
        failure.push(format!("took {took:?}"));
    }
    let extra = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    if extra > MAX_EXTRA_BYTES {
        stats.over_alloc += 1;
        failure.push(format!(
            "peak {extra} bytes over the {MAX_EXTRA_BYTES} bound"
        ));
    }
    stats.execs += 1;
    (!failure.is_empty()).then(|| failure.join("; "))
}

#[test]
fn fuzz_decode_and_processor() {
    let seeds = corpus();
    assert!(seeds.len() > 100, "seed corpus missing");
    let secs: u64 = std::env::var("IDEFICS_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let seed: u64 = std::env::var("IDEFICS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x01DE_F1C5);
    let out_dir = std::env::var_os("IDEFICS_FUZZ_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let cfg = Idefics2ImageProcessorConfig::from_preprocessor_json(
        r#"{"do_image_splitting": true, "size": {"longest_edge": 98, "shortest_edge": 37}}"#,
    )
    .unwrap();
    let proc = Processors {
        idefics2: Idefics2ImageProcessor::new(cfg).unwrap(),
        idefics3: Idefics3ImageProcessor::new(Idefics3ImageProcessorConfig {
            size: ImageSize {
                longest_edge: Some(96),
                ..Idefics3ImageProcessorConfig::default().size
            },
            max_image_size: 32,
            ..Idefics3ImageProcessorConfig::default()
        })
        .unwrap(),
    };
    // Silence the default panic message of decoders caught by catch_unwind (counted instead).
    std::panic::set_hook(Box::new(|_| {}));
    let mut stats = Stats::default();
    let mut failures = Vec::new();
    let mut rng = Rng(seed | 1);
    // Every seed as is (including committed regressions), then mutants until the budget is spent.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let bounded_execs = 3_000u64;
    for (name, s) in &seeds {
        if let Some(f) = run_one(s, &proc, &mut stats) {
            failures.push((format!("{f} (seed {name})"), s.clone()));
        }
    }
    loop {
        let done = if secs > 0 {
            Instant::now() >= deadline
        } else {
            stats.execs >= bounded_execs
        };
        if done {
            break;
        }
        let parent = &seeds[rng.below(seeds.len())].1;
        let input = mutate(&mut rng, &seeds, parent);
        if let Some(f) = run_one(&input, &proc, &mut stats) {
            let path = out_dir.join(format!("idefics-fuzz-{seed}-{}.bin", stats.execs));
            let _ = std::fs::write(&path, &input);
            failures.push((format!("{f} (saved to {})", path.display()), input));
        }
    }
    let _ = std::panic::take_hook();
    println!("fuzz: {stats:?}, seed {seed}");
    assert!(
        failures.is_empty(),
        "{} failing inputs:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
