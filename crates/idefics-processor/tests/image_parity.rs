//! Parity with Pillow 12.3 / transformers 5.24 on the fixtures of tools/reference/make_image_fixtures.py:
//! Pillow-exact resize, `load_image` decoding (every format, JPEG included: more JPEG cases in
//! jpeg_parity.rs), the Idefics2 image processor's frames, masks and floats.

use std::path::{Path, PathBuf};

use idefics_processor::image::{
    decode_image_file, resize, DecodeLimits, Idefics2ImageProcessor, Idefics2ImageProcessorConfig,
    NormalizeLut, ResampleFilter, RgbImage,
};
use safetensors::SafeTensors;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// HWC u8 tensor -> RgbImage.
fn tensor_image(st: &SafeTensors, key: &str) -> RgbImage {
    let t = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let shape = t.shape();
    assert_eq!(shape.len(), 3, "{key}");
    RgbImage::new(shape[1], shape[0], t.data().to_vec()).unwrap()
}

/// The hash image of make_image_fixtures.py `synthetic_rgb(h, w, seed)`.
fn synthetic_rgb(h: usize, w: usize, seed: u64) -> RgbImage {
    let mut data = Vec::with_capacity(h * w * 3);
    for y in 0..h as u64 {
        for x in 0..w as u64 {
            let ramp = ((x * 255) / (w as u64).max(1) + (y * 255) / (h as u64).max(1)) / 2;
            for c in 0..3u64 {
                let mut v = (x * 73856093) ^ (y * 19349663) ^ (c * 83492791);
                v = (v ^ seed.wrapping_mul(2654435761)) & 0xFFFF_FFFF;
                v ^= v >> 13;
                v = v.wrapping_mul(0x5BD1E995) & 0xFFFF_FFFF;
                v ^= v >> 15;
                let noise = v & 0xFF;
                data.push(((noise / 4 + ramp * 3 / 4) % 256) as u8);
            }
        }
    }
    RgbImage::new(w, h, data).unwrap()
}

/// zlib CRC-32 and byte sum, formatted as the fixtures' `digest`.
fn digest(bytes: &[u8]) -> String {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    let sum: u64 = bytes.iter().map(|&b| u64::from(b)).sum();
    format!("{:08x}:{sum}", crc ^ 0xFFFF_FFFF)
}

/// (count of differing bytes, max abs difference).
fn diff(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .fold((0, 0), |(n, m), (x, y)| (n + 1, m.max(x.abs_diff(*y))))
}

fn filter_named(name: &str) -> ResampleFilter {
    let code = manifest()["resize"]["filters"][name].as_i64().unwrap();
    ResampleFilter::from_pil_code(code).unwrap()
}

#[test]
fn resize_matches_pillow_on_all_size_pairs_and_filters() {
    let bytes = load("resize.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = manifest();
    let filters = m["resize"]["filters"].as_object().unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in m["resize"]["cases"].as_array().unwrap() {
        let i = case["index"].as_u64().unwrap();
        let src = tensor_image(&st, &format!("src/{i}"));
        let (oh, ow) = (
            case["out"][0].as_u64().unwrap() as usize,
            case["out"][1].as_u64().unwrap() as usize,
        );
        for name in filters.keys() {
            let expected = tensor_image(&st, &format!("out/{i}/{name}"));
            let got = resize(&src, ow, oh, filter_named(name)).unwrap();
            assert_eq!((got.height(), got.width()), (oh, ow));
            let (n, max) = diff(got.as_bytes(), expected.as_bytes());
            if n > 0 {
                failures.push(format!(
                    "{name} {}x{} -> {oh}x{ow}: {n} bytes differ, max {max}",
                    src.height(),
                    src.width()
                ));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} resizes differ from Pillow:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 150, "only {checked} resize cases");
}

#[test]
fn resize_matches_pillow_at_pipeline_sizes() {
    for case in manifest()["resize"]["big"].as_array().unwrap() {
        let dim = |k: &str, i: usize| case[k][i].as_u64().unwrap() as usize;
        let src = synthetic_rgb(dim("in", 0), dim("in", 1), case["seed"].as_u64().unwrap());
        let filter = filter_named(case["filter"].as_str().unwrap());
        let got = resize(&src, dim("out", 1), dim("out", 0), filter).unwrap();
        assert_eq!(
            digest(got.as_bytes()),
            case["digest"].as_str().unwrap(),
            "{case}"
        );
    }
}

#[test]
fn normalize_lut_equals_transformers_floats_bit_for_bit() {
    let bytes = load("processor.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = manifest();
    for name in ["idefics2", "clip"] {
        let spec = &m["luts"][name];
        let three = |k: &str| -> [f64; 3] { std::array::from_fn(|i| spec[k][i].as_f64().unwrap()) };
        let cfg = Idefics2ImageProcessorConfig {
            image_mean: three("mean"),
            image_std: three("std"),
            ..Default::default()
        };
        let lut = NormalizeLut::new(&cfg);
        let t = st.tensor(&format!("lut/{name}")).unwrap();
        assert_eq!(t.shape(), &[3, 256]);
        let expected: Vec<u32> = t
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let got: Vec<u32> = lut.table.iter().flatten().map(|v| v.to_bits()).collect();
        let bad: Vec<usize> = (0..768).filter(|&i| got[i] != expected[i]).collect();
        assert!(
            bad.is_empty(),
            "{name}: {} LUT entries differ, first at channel {} value {}",
            bad.len(),
            bad[0] / 256,
            bad[0] % 256
        );
    }
}

#[test]
fn decoding_matches_transformers_load_image() {
    let bytes = load("decode.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut report = Vec::new();
    let mut exact = 0;
    for (name, meta) in manifest()["decode"].as_object().unwrap() {
        if meta.get("error").is_some() || name.ends_with(".tiff") {
            // Reference refuses it / we do not support TIFF (image_bad_inputs.rs).
            continue;
        }
        let got = decode_image_file(
            &fixtures().join("files").join(name),
            &DecodeLimits::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (h, w) = (
            meta["height"].as_u64().unwrap() as usize,
            meta["width"].as_u64().unwrap() as usize,
        );
        assert_eq!((got.height(), got.width()), (h, w), "{name}: size");
        if let Some(d) = meta.get("digest") {
            if digest(got.as_bytes()) == d.as_str().unwrap() {
                exact += 1;
            } else {
                report.push(format!("{name}: digest differs"));
            }
            continue;
        }
        let expected = tensor_image(&st, &format!("decode/{name}"));
        let (n, max) = diff(got.as_bytes(), expected.as_bytes());
        if n == 0 {
            exact += 1;
        } else {
            report.push(format!(
                "{name}: {n} of {} bytes differ, max {max}",
                got.as_bytes().len()
            ));
        }
    }
    assert!(
        report.is_empty(),
        "{exact} exact; differences from PIL:\n{}",
        report.join("\n")
    );
}

/// Inputs of a processor case: committed files (decoded by us, JPEG included) or synthetic hash images.
fn case_images(case: &Value) -> Vec<Vec<RgbImage>> {
    case["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| {
            sample
                .as_array()
                .unwrap()
                .iter()
                .map(|spec| match spec["kind"].as_str().unwrap() {
                    "file" => {
                        let name = spec["name"].as_str().unwrap();
                        decode_image_file(
                            &fixtures().join("files").join(name),
                            &DecodeLimits::default(),
                        )
                        .unwrap()
                    }
                    _ => synthetic_rgb(
                        spec["h"].as_u64().unwrap() as usize,
                        spec["w"].as_u64().unwrap() as usize,
                        spec["seed"].as_u64().unwrap(),
                    ),
                })
                .collect()
        })
        .collect()
}

fn processor_for(m: &Value, config_name: &str) -> Idefics2ImageProcessor {
    let json = m["configs"][config_name].to_string();
    Idefics2ImageProcessor::new(
        Idefics2ImageProcessorConfig::from_preprocessor_json(&json).unwrap(),
    )
    .unwrap()
}

#[test]
fn processor_matches_transformers() {
    let bytes = load("processor.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let m = manifest();
    let mut failures = Vec::new();
    for case in m["processor"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let proc = processor_for(&m, case["config"].as_str().unwrap());
        let split = case["do_image_splitting"].as_bool().unwrap();
        let images = case_images(case);
        if let Some(err) = case.get("error") {
            // transformers raises here (division by zero on a 0-pixel crop); we must give a clear error instead.
            let e = proc.preprocess(&images, Some(split)).expect_err(name);
            assert!(
                e.to_string().contains("too small to split"),
                "{name}: {e} (reference: {err})"
            );
            continue;
        }
        let frames: Vec<Vec<RgbImage>> = images
            .iter()
            .map(|s| {
                s.iter()
                    .flat_map(|im| proc.frames(im, split).unwrap())
                    .collect()
            })
            .collect();
        let batch = proc.pack(&frames).unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            batch.pixel_values_shape.to_vec(),
            shape,
            "{name}: pixel_values shape"
        );
        let [_, mm, _, hh, ww] = batch.pixel_values_shape;
        for fr in case["frames"].as_array().unwrap() {
            let g = |k: &str| fr[k].as_u64().unwrap() as usize;
            let (b, mi, h, w) = (g("b"), g("m"), g("h"), g("w"));
            // Mask: exactly the top-left h x w rectangle (h = w = 0 for a missing frame).
            let mask =
                &batch.pixel_attention_mask[(b * mm + mi) * hh * ww..(b * mm + mi + 1) * hh * ww];
            let ok = mask
                .iter()
                .enumerate()
                .all(|(i, &v)| v == u8::from(i / ww < h && i % ww < w));
            assert!(
                ok,
                "{name}: mask of frame ({b}, {mi}) is not the {h}x{w} rectangle"
            );
            if h == 0 {
                assert!(
                    frames[b].len() <= mi,
                    "{name}: frame ({b}, {mi}) should be missing"
                );
                continue;
            }
            let got = &frames[b][mi];
            assert_eq!(
                (got.height(), got.width()),
                (h, w),
                "{name}: frame ({b}, {mi}) size"
            );
            let key = format!("proc/{}/{b}/{mi}", case["index"]);
            let outcome = if let Some(d) = fr.get("digest") {
                (digest(got.as_bytes()) != d.as_str().unwrap())
                    .then(|| "digest differs".to_string())
            } else {
                let (n, max) = diff(got.as_bytes(), tensor_image(&st, &key).as_bytes());
                (n > 0).then(|| format!("{n} bytes differ, max {max}"))
            };
            if let Some(o) = outcome {
                failures.push(format!("{name} frame ({b}, {mi}) {h}x{w}: {o}"));
            }
            // pixel_values of the frame = LUT(frame) inside, 0.0 in the padding.
            let lut = &proc.normalize_lut().table;
            let base = (b * mm + mi) * 3 * hh * ww;
            for c in 0..3 {
                for y in [0, h - 1] {
                    for x in [0, w - 1] {
                        let v = batch.pixel_values[base + c * hh * ww + y * ww + x];
                        assert_eq!(
                            v.to_bits(),
                            lut[c][got.as_bytes()[(y * w + x) * 3 + c] as usize].to_bits()
                        );
                    }
                }
                if w < ww {
                    assert_eq!(batch.pixel_values[base + c * hh * ww + w], 0.0);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "frames differ from transformers:\n{}",
        failures.join("\n")
    );
}
