use idefics_processor::image::{decode_image, DecodeLimits};
fn main() {
    let limits = DecodeLimits {
        max_pixels: 1_000_000,
        ..Default::default()
    };
    for p in std::env::args().skip(1) {
        let data = std::fs::read(&p).unwrap();
        let t = std::time::Instant::now();
        let r = decode_image(&data, &limits);
        let dt = t.elapsed();
        let head: Vec<String> = data.iter().take(4).map(|b| format!("{b:02x}")).collect();
        match r {
            Ok(img) => {
                let cfg = idefics_processor::image::Idefics2ImageProcessorConfig::from_preprocessor_json(
                    r#"{"do_image_splitting": true, "size": {"longest_edge": 98, "shortest_edge": 37}}"#).unwrap();
                let proc = idefics_processor::image::Idefics2ImageProcessor::new(cfg).unwrap();
                let t = std::time::Instant::now();
                let b = proc.preprocess(&[vec![img.clone()]], Some(true));
                println!(
                    "{p} [{}] {} bytes: ok {}x{} in {dt:?}; processor {:?} in {:?}",
                    head.join(" "),
                    data.len(),
                    img.width(),
                    img.height(),
                    b.map(|b| b.pixel_values_shape),
                    t.elapsed()
                )
            }
            Err(e) => println!(
                "{p} [{}] {} bytes: ERR {e} in {dt:?}",
                head.join(" "),
                data.len()
            ),
        }
    }
}
