//! JPEG decoding is bit-exact with Pillow 12.3 (libjpeg-turbo 3.1) and `pixel_values` with transformers
//! 5.24, on the fixtures of tools/reference/make_jpeg_fixtures.py: baseline, progressive, restart markers,
//! 4:4:4 / 4:2:2 / 4:2:0 / 4:4:0 / 4:1:1 / mixed sampling, grey, CMYK, YCCK, Adobe RGB, EXIF and XMP
//! orientations, odd sizes; broken files are accepted exactly when Pillow accepts them.

use std::path::{Path, PathBuf};

use idefics_processor::image::{
    decode_image, DecodeLimits, Idefics2ImageProcessor, Idefics2ImageProcessorConfig, RgbImage,
};
use safetensors::SafeTensors;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/jpeg")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap()).unwrap()
}

fn file(name: &str) -> Vec<u8> {
    std::fs::read(dir().join("files").join(name)).unwrap()
}

fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_image(bytes, &DecodeLimits::default()).map_err(|e| e.to_string())
}

/// zlib CRC-32 and byte sum, as the fixtures' `digest`.
fn digest(bytes: &[u8]) -> String {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    format!("{:08x}:{sum}", crc ^ 0xFFFF_FFFF)
}

#[test]
fn every_fixture_decodes_as_pillow_decodes_it() {
    let expected_bytes = std::fs::read(dir().join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&expected_bytes).unwrap();
    let m = manifest();
    let files = m["files"].as_object().unwrap();
    assert!(files.len() >= 120, "fixtures missing");
    let mut failures = Vec::new();
    let mut exact = 0;
    for (name, meta) in files {
        let got = decode(&file(name));
        if let Some(err) = meta.get("error") {
            match got {
                Ok(_) => failures.push(format!("{name}: decoded, but Pillow refuses it ({err})")),
                Err(e) if e.contains('\n') => failures.push(format!("{name}: multi-line error")),
                Err(_) => exact += 1,
            }
            continue;
        }
        let img = match got {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{name}: refused ({e}), but Pillow decodes it"));
                continue;
            }
        };
        let size = |k: &str| meta[k].as_u64().unwrap() as usize;
        if (img.height(), img.width()) != (size("height"), size("width")) {
            failures.push(format!("{name}: size {}x{}", img.height(), img.width()));
            continue;
        }
        let same = match meta.get("digest") {
            Some(d) => digest(img.as_bytes()) == d.as_str().unwrap(),
            None => expected.tensor(name).unwrap().data() == img.as_bytes(),
        };
        if same {
            exact += 1;
        } else {
            let n = match meta.get("digest") {
                Some(_) => "digest".to_string(),
                None => {
                    let t = expected.tensor(name).unwrap();
                    let d = t.data().iter().zip(img.as_bytes()).filter(|(a, b)| a != b);
                    let (count, max) =
                        d.fold((0, 0), |(n, m), (a, b)| (n + 1, m.max(a.abs_diff(*b))));
                    format!("{count} bytes, max {max}")
                }
            };
            failures.push(format!("{name}: pixels differ ({n})"));
        }
    }
    assert!(
        failures.is_empty(),
        "{exact} match Pillow; {} do not:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn truncated_at_any_length_is_refused_exactly_where_pillow_refuses() {
    let m = manifest();
    for (name, accepted) in m["truncation"].as_object().unwrap() {
        let data = file(name);
        let accepted: Vec<usize> = accepted
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let sos = data.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        for n in sos..=data.len() {
            match decode(&data[..n]) {
                Ok(_) => assert!(
                    accepted.contains(&n),
                    "{name}: {n} bytes decoded, Pillow refuses"
                ),
                Err(e) => {
                    assert!(!accepted.contains(&n), "{name}: {n} bytes refused ({e})");
                    assert!(e.contains("image file is truncated"), "{name} at {n}: {e}");
                }
            }
        }
    }
}

#[test]
fn pixel_values_match_transformers_bit_for_bit() {
    let m = manifest();
    let proc_cfg = &m["processor"]["config"];
    let cfg = Idefics2ImageProcessorConfig::from_preprocessor_json(&proc_cfg.to_string()).unwrap();
    let proc = Idefics2ImageProcessor::new(cfg).unwrap();
    for case in m["processor"]["cases"].as_array().unwrap() {
        let images: Vec<RgbImage> = case["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| decode(&file(n.as_str().unwrap())).unwrap())
            .collect();
        let split = case["do_image_splitting"].as_bool().unwrap();
        let batch = proc.preprocess(&[images], Some(split)).unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(batch.pixel_values_shape.to_vec(), shape, "{case}");
        let bytes: Vec<u8> = batch
            .pixel_values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            digest(&bytes),
            case["pixel_values"].as_str().unwrap(),
            "{case}"
        );
        assert_eq!(
            digest(&batch.pixel_attention_mask),
            case["mask"].as_str().unwrap(),
            "{case}"
        );
    }
}
