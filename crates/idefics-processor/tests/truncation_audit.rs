//! Truncated PNG / GIF / WebP / BMP files: never decoded where Pillow refuses them (no made-up pixels),
//! with the same accepted lengths as Pillow for GIF and WebP; PNG and BMP are stricter than Pillow about
//! the bytes after the pixels (see src/image/truncation.rs). Reference: tools/reference/
//! make_truncation_fixtures.py. JPEG truncation is tested in jpeg_parity.rs.

use std::path::Path;

use idefics_processor::image::{decode_image, DecodeLimits};
use serde_json::Value;

#[test]
fn truncated_files_are_accepted_only_where_pillow_accepts_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let text = std::fs::read_to_string(root.join("truncation/manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    let limits = DecodeLimits::default();
    let mut report = Vec::new();
    for (name, meta) in manifest["files"].as_object().unwrap() {
        let data = std::fs::read(root.join("images/files").join(name)).unwrap();
        assert_eq!(
            data.len() as u64,
            meta["length"].as_u64().unwrap(),
            "{name}"
        );
        let pillow = |n: usize| {
            meta["accepted"].as_array().unwrap().iter().any(|r| {
                (r[0].as_u64().unwrap() as usize..=r[1].as_u64().unwrap() as usize).contains(&n)
            })
        };
        let full = decode_image(&data, &limits).unwrap();
        let (mut ours, mut stricter) = (0, 0);
        for n in 0..=data.len() {
            match decode_image(&data[..n], &limits) {
                Ok(img) => {
                    assert!(pillow(n), "{name}: {n} bytes decoded, Pillow refuses them");
                    assert!(img == full, "{name}: {n} bytes decode to other pixels");
                    ours += 1;
                }
                Err(e) => {
                    assert!(!e.to_string().contains('\n'), "{name}: {e}");
                    stricter += usize::from(pillow(n));
                }
            }
        }
        let exact = name.ends_with(".gif") || name.ends_with(".webp");
        assert!(
            !exact || stricter == 0,
            "{name}: {stricter} lengths refused that Pillow decodes"
        );
        report.push(format!(
            "{name}: {ours} lengths decoded, {stricter} refused that Pillow decodes"
        ));
    }
    println!("{}", report.join("\n"));
}
