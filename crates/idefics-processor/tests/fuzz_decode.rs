//! A stable-Rust fuzzer for image decoding + the Idefics2 and Idefics3 processors, on the shared harness
//! (tests/fuzz/harness.rs).
//!
//! It mutates a seed corpus (every image under tests/fixtures/images/files and tests/fixtures/jpeg/files)
//! with the harness's byte mutator (bit flips, interesting bytes, 16-bit field overwrites such as image
//! sizes, chunk insert / delete / duplicate, truncation, splicing two inputs) and checks, for each input:
//! no panic (decoders run under `catch_unwind`, which reports a panic as a "decoder panicked" error), no
//! run longer than 1 s of CPU time, and no allocation beyond a bound derived from the decode limits (a counting
//! global allocator measures the peak of live bytes).
//!
//! `cargo test -p idefics-processor --test fuzz_decode` runs a short bounded pass (CI). For a long run:
//! `IDEFICS_FUZZ_SECS=600 IDEFICS_FUZZ_SEED=1 cargo test -p idefics-processor --test fuzz_decode -- --nocapture`
//! Inputs that fail are written to `$IDEFICS_FUZZ_OUT` (default: the system temp dir); commit them under
//! tests/fixtures/fuzz_regressions/, which this test always replays.

use std::sync::atomic::Ordering;
use std::time::Duration;

use idefics_processor::image::{
    decode_image, DecodeLimits, Idefics2ImageProcessor, Idefics2ImageProcessorConfig,
    Idefics3ImageProcessor, Idefics3ImageProcessorConfig, ImageSize,
};

#[path = "../../../tests/fuzz/harness.rs"]
mod harness;

#[global_allocator]
static GLOBAL: harness::CountingAlloc = harness::CountingAlloc;

/// Pixel cap of the fuzz runs: work linear in the pixel count stays far below the hang bound (a 1 MP image
/// decodes and goes through the processor in ~0.1 s in the dev profile), so a hang means a blow-up.
const MAX_PIXELS: u64 = 1_000_000;
/// Peak live bytes one input may add: the largest JPEG layout (4 components x 2-byte coefficients +
/// 4 planes + RGB output, on MCU-padded sizes) and the processor's frames are well under 40 bytes per
/// capped pixel; the constant covers allocator and decoder scratch.
const MAX_EXTRA_BYTES: usize = MAX_PIXELS as usize * 40 + (32 << 20);
const HANG: Duration = Duration::from_secs(1);

fn corpus() -> Vec<(String, Vec<u8>)> {
    ["images/files", "jpeg/files", "fuzz_regressions"]
        .into_iter()
        .flat_map(|sub| harness::files_in(sub, 64 << 10))
        .collect()
}

/// Both processor families: Idefics2 (crops + full image) and Idefics3 / SmolVLM (tiles + global image, at a
/// small tile size so that the bound on allocations stays meaningful).
struct Processors {
    idefics2: Idefics2ImageProcessor,
    idefics3: Idefics3ImageProcessor,
}

/// One input through decode + processors: `Ok(decoded)`, or a failure the decoder reported as a caught panic.
/// Panics of the processors reach the harness, which counts them.
fn run_one(data: &[u8], proc: &Processors) -> Result<bool, String> {
    let limits = DecodeLimits {
        max_pixels: MAX_PIXELS,
        ..Default::default()
    };
    match decode_image(data, &limits) {
        Ok(img) => {
            let split = img.width() >= 2 && img.height() >= 2;
            let _ = proc.idefics2.preprocess(&[vec![img.clone()]], Some(split));
            let _ = proc.idefics3.preprocess(&[vec![img]], Some(split));
            Ok(true)
        }
        Err(e) if e.to_string().contains("panicked") => Err(format!("decoder {e}")),
        Err(_) => Ok(false),
    }
}

#[test]
fn fuzz_decode_and_processor() {
    let seeds = corpus();
    assert!(seeds.len() > 100, "seed corpus missing");
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
    let donors: Vec<&[u8]> = seeds.iter().map(|(_, b)| b.as_slice()).collect();
    let settings = harness::Settings {
        name: "decode",
        bounded_execs: 3_000,
        hang: HANG,
        max_extra_bytes: MAX_EXTRA_BYTES,
        default_seed: 0x01DE_F1C5,
    };
    let stats = harness::fuzz(
        &settings,
        &seeds,
        |rng, parent| harness::mutate_bytes(rng, &donors, parent),
        |data| run_one(data, &proc),
        |data| data.clone(),
    );
    assert!(stats.accepted > 0, "no input decoded: {stats:?}");
    // The allocator really counts (a bound that never moves would pass everything).
    assert!(harness::PEAK.load(Ordering::Relaxed) > 0);
}
