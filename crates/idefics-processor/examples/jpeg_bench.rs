//! Decode speed of JPEG files: this crate's libjpeg-turbo port (`decode_image`) against the `image`
//! crate's zune-jpeg decoder, side by side, best of N runs each.
//!
//! `cargo run --profile bench -p idefics-processor --example jpeg_bench -- FILE.jpg...`

use std::time::{Duration, Instant};

use idefics_processor::image::{decode_image, DecodeLimits};

fn best_of(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let limits = DecodeLimits::default();
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path).expect("readable file");
        let img = decode_image(&data, &limits).expect("decodable JPEG");
        let megapixels = (img.width() * img.height()) as f64 / 1e6;
        let n = if megapixels > 4.0 { 5 } else { 20 };
        let ours = best_of(n, || {
            decode_image(&data, &limits).unwrap();
        });
        let zune = best_of(n, || {
            let _rgb = image::load_from_memory_with_format(&data, image::ImageFormat::Jpeg)
                .unwrap()
                .to_rgb8();
        });
        println!(
            "{path}: {}x{} ours {:.1} ms, zune-jpeg {:.1} ms, ours/zune {:.2}",
            img.width(),
            img.height(),
            ours.as_secs_f64() * 1e3,
            zune.as_secs_f64() * 1e3,
            ours.as_secs_f64() / zune.as_secs_f64()
        );
    }
}
