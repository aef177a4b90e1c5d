//! Parity of the Idefics3 / SmolVLM processor with transformers 5.24 + Pillow 12.3, on the fixtures of
//! tools/reference/make_idefics3_processor_fixtures.py: tile grids, bit-identical `pixel_values` and
//! `pixel_attention_mask` (digests of the float32 / int64 bytes), uint8 frames where stored, rendered chat text,
//! `input_ids`, SmolVLM2 video prompts, frame sampling and `num2words`.

use std::path::{Path, PathBuf};

use idefics_processor::image::idefics3::{Idefics3ImageProcessor, TileGrid};
use idefics_processor::video::{
    expand_video_prompts, num2words_en, sample_frame_indices, VideoClip, VideoMetadata,
    VideoProcessorSettings,
};
use idefics_processor::{
    decode_image_file, ChatMessage, DecodeLimits, FamilyProcessor, ModelFamily, PromptRow,
    PromptText, RgbImage,
};
use safetensors::SafeTensors;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixtures() -> PathBuf {
    root().join("idefics3/processor")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
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

/// A case's image spec: a committed file (decoded as transformers' `load_image` does) or a hash image.
fn load_image(spec: &Value) -> RgbImage {
    match spec["kind"].as_str().unwrap() {
        "file" => {
            let path = root()
                .join("images/files")
                .join(spec["name"].as_str().unwrap());
            decode_image_file(&path, &DecodeLimits::default()).unwrap()
        }
        _ => {
            let n = |k: &str| spec[k].as_u64().unwrap();
            synthetic_rgb(n("h") as usize, n("w") as usize, n("seed"))
        }
    }
}

fn samples(case: &Value) -> Vec<Vec<RgbImage>> {
    case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(load_image).collect())
        .collect()
}

fn ckpt(case: &Value) -> PathBuf {
    fixtures().join(format!("ckpt_{}", case["checkpoint"].as_str().unwrap()))
}

fn split_override(case: &Value) -> Option<bool> {
    case.get("do_image_splitting").and_then(Value::as_bool)
}

fn cases() -> Vec<Value> {
    manifest()["cases"].as_array().unwrap().clone()
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Row `b`'s ids without the reference's left padding (the tail where `attention_mask` is 1).
fn unpadded(case: &Value, b: usize) -> Vec<u32> {
    let mask = ids_of(&case["attention_mask"][b]);
    let ids = ids_of(&case["input_ids"][b]);
    assert!(
        mask.windows(2).all(|w| w[0] <= w[1]),
        "padding is on the left"
    );
    ids.into_iter()
        .zip(mask)
        .filter(|&(_, m)| m == 1)
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn family_is_read_from_model_type() {
    for (name, family) in [
        ("smolvlm_small", ModelFamily::SmolVlm),
        ("smolvlm_hub", ModelFamily::SmolVlm),
        ("idefics3_small", ModelFamily::Idefics3),
        ("idefics3_8b", ModelFamily::Idefics3),
    ] {
        let dir = fixtures().join(format!("ckpt_{name}"));
        assert_eq!(ModelFamily::from_dir(&dir).unwrap(), family, "{name}");
        assert_eq!(FamilyProcessor::from_dir(&dir).unwrap().family(), family);
    }
    let idefics2 = root().join("tokenizer");
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&idefics2).unwrap() {
        let f = f.unwrap();
        if f.path().is_file() {
            std::fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
        }
    }
    // No config.json: the family comes from processor_config.json's processor_class.
    assert_eq!(
        ModelFamily::from_dir(tmp.path()).unwrap(),
        ModelFamily::Idefics2
    );
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "llava"}"#).unwrap();
    let e = ModelFamily::from_dir(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("llava"), "{e}");
}

#[test]
fn image_settings_are_read_from_both_file_layouts() {
    let saved =
        Idefics3ImageProcessor::from_model_dir(&fixtures().join("ckpt_smolvlm_small")).unwrap();
    assert_eq!(saved.config().size.longest_edge, Some(128));
    assert_eq!(saved.config().max_image_size, 32);
    let hub =
        Idefics3ImageProcessor::from_model_dir(&fixtures().join("ckpt_smolvlm_256m")).unwrap();
    assert_eq!(hub.config().size.longest_edge, Some(2048));
    assert_eq!(hub.config().max_image_size, 512);
    let p = FamilyProcessor::from_dir(&fixtures().join("ckpt_smolvlm_256m")).unwrap();
    assert_eq!(p.image_seq_len(), 64);
}

#[test]
fn pixel_values_and_grids_are_bit_identical_to_transformers() {
    let frames_bytes = std::fs::read(fixtures().join("frames.safetensors")).unwrap();
    let stored = SafeTensors::deserialize(&frames_bytes).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let Some(shape) = case.get("pixel_values_shape") else {
            continue;
        };
        let proc = Idefics3ImageProcessor::from_model_dir(&ckpt(&case)).unwrap();
        let samples = samples(&case);
        let out = proc.preprocess(&samples, split_override(&case)).unwrap();
        let grids: Vec<Vec<(u64, u64)>> = out
            .grids
            .iter()
            .map(|s| s.iter().map(|g| (g.rows as u64, g.cols as u64)).collect())
            .collect();
        let expected_grids: Vec<Vec<(u64, u64)>> = (0..samples.len())
            .map(|b| {
                let rows = case["rows"][b].as_array().unwrap();
                let cols = case["cols"][b].as_array().unwrap();
                rows.iter()
                    .zip(cols)
                    .map(|(r, c)| (r.as_u64().unwrap(), c.as_u64().unwrap()))
                    .collect()
            })
            .collect();
        assert_eq!(grids, expected_grids, "{name}: rows / cols");
        let shape: Vec<usize> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            out.images.pixel_values_shape.to_vec(),
            shape,
            "{name}: shape"
        );
        if case.get("stored").is_some() {
            // Frame by frame on uint8, to say where a difference is.
            let t = stored.tensor(&format!("{name}/frames")).unwrap();
            let (m, h, w) = (shape[1], shape[3], shape[4]);
            for (b, sample) in samples.iter().enumerate() {
                let mut at = 0;
                for image in sample {
                    let (frames, _) = proc
                        .frames(
                            image,
                            split_override(&case).unwrap_or(proc.config().do_image_splitting),
                        )
                        .unwrap();
                    for f in frames {
                        let base = (b * m + at) * 3 * h * w;
                        let want = &t.data()[base..base + 3 * h * w];
                        let got: Vec<u8> = (0..3)
                            .flat_map(|c| f.as_bytes().iter().skip(c).step_by(3).copied())
                            .collect();
                        let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
                        if n > 0 {
                            failures
                                .push(format!("{name}: sample {b} frame {at}: {n} bytes differ"));
                        }
                        at += 1;
                    }
                }
            }
            let mask = stored.tensor(&format!("{name}/mask")).unwrap();
            assert_eq!(out.images.pixel_attention_mask, mask.data(), "{name}: mask");
        }
        let pv: Vec<u8> = out
            .images
            .pixel_values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        if digest(&pv) != case["pixel_values_digest"].as_str().unwrap() {
            failures.push(format!("{name}: pixel_values digest differs"));
        }
        let mask64: Vec<u8> = out
            .images
            .pixel_attention_mask
            .iter()
            .flat_map(|&v| i64::from(v).to_le_bytes())
            .collect();
        assert_eq!(
            digest(&mask64),
            case["pixel_attention_mask_digest"].as_str().unwrap(),
            "{name}: mask digest"
        );
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 20, "only {checked} cases");
}

#[test]
fn batches_match_transformers_input_ids_text_and_pixels() {
    let mut checked = 0;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let proc = FamilyProcessor::from_dir(&ckpt(&case)).unwrap();
        let samples = samples(&case);
        let messages: Vec<Vec<ChatMessage>> = case
            .get("messages")
            .map(|m| serde_json::from_value(m.clone()).unwrap())
            .unwrap_or_default();
        let rows: Vec<PromptRow> = samples
            .iter()
            .enumerate()
            .map(|(b, images)| PromptRow {
                text: match messages.get(b) {
                    Some(m) => PromptText::Chat(m),
                    None => PromptText::Raw(case["prompts"][b].as_str().unwrap()),
                },
                images,
            })
            .collect();
        let out = proc
            .process_batch(&rows, true, split_override(&case))
            .unwrap();
        for b in 0..rows.len() {
            assert_eq!(out.input_ids[b], unpadded(&case, b), "{name} row {b}");
            assert_eq!(
                out.texts[b],
                case["text"][b].as_str().unwrap(),
                "{name}: text"
            );
            let grids: Vec<TileGrid> = out.grids[b].clone();
            assert_eq!(grids.len(), samples[b].len(), "{name}");
            checked += 1;
        }
        match (&out.images, case.get("pixel_values_digest")) {
            (Some(images), Some(d)) => {
                let pv: Vec<u8> = images
                    .pixel_values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect();
                assert_eq!(digest(&pv), d.as_str().unwrap(), "{name}: pixel_values");
            }
            (None, None) => {}
            (got, want) => panic!("{name}: images {:?} vs digest {want:?}", got.is_some()),
        }
    }
    assert!(checked >= 24, "only {checked} prompts");
}

#[test]
fn single_prompt_entry_and_errors() {
    let dir = fixtures().join("ckpt_smolvlm_hub");
    let proc = FamilyProcessor::from_dir(&dir).unwrap();
    let img = synthetic_rgb(40, 100, 6);
    let one = proc
        .process_prompt("<image>What is this?", std::slice::from_ref(&img), None)
        .unwrap();
    let case = cases()
        .into_iter()
        .find(|c| c["name"] == "hub_batch")
        .unwrap();
    assert_eq!(one.input_ids, unpadded(&case, 0));
    assert_eq!(one.grids, vec![TileGrid { rows: 1, cols: 2 }]);
    assert_eq!(one.images.pixel_values_shape, [1, 3, 3, 32, 32]);
    let e = proc
        .process_prompt("<image><image>", std::slice::from_ref(&img), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 image slot") && e.contains("1 image"), "{e}");
    let text_only = proc.process_prompt("Hello", &[], None).unwrap();
    assert_eq!(text_only.images.pixel_values_shape[1], 0);
}

#[test]
fn video_prompts_match_smolvlm_processor() {
    let m = manifest();
    for v in m["videos"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let dir = fixtures().join("ckpt_smolvlm_small");
        let proc = FamilyProcessor::from_dir(&dir).unwrap();
        // This checkpoint has no video-processor settings: SmolVLMVideoProcessor's class defaults, with a small
        // long side and the image side's tile so that frames stay small.
        let settings = VideoProcessorSettings {
            longest_edge: 64,
            max_image_size: 32,
            ..VideoProcessorSettings::from_dir(&dir).unwrap()
        };
        let timestamps: Vec<f64> = v["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        let clip = VideoClip {
            timestamps,
            duration: v["duration"].as_f64(),
        };
        let text = v["text"].as_str().unwrap();
        let frames = vec![synthetic_rgb(20, 30, 1); clip.timestamps.len()];
        let n = frames.len();
        let out = match v.get("messages") {
            Some(m) => {
                let messages: Vec<ChatMessage> = serde_json::from_value(m.clone()).unwrap();
                let out = proc
                    .process_video_chat(&messages, true, &[(frames, clip)], &settings)
                    .unwrap();
                assert_eq!(out.text, text, "{name}: rendered chat");
                out
            }
            None => {
                let expanded =
                    expand_video_prompts("<video>", std::slice::from_ref(&clip), 4).unwrap();
                assert_eq!(expanded, v["replacement"].as_str().unwrap(), "{name}");
                proc.process_video_prompt(text, &[(frames, clip)], &settings)
                    .unwrap()
            }
        };
        assert_eq!(out.input_ids, ids_of(&v["input_ids"]), "{name}");
        assert_eq!(out.images.pixel_values_shape, [1, n, 3, 32, 32], "{name}");
        assert_eq!(out.grids.len(), n);
    }
}

#[test]
fn frame_sampling_matches_smolvlm_video_processor() {
    for s in manifest()["sampling"].as_array().unwrap() {
        let total = s["total_num_frames"].as_u64().unwrap() as usize;
        let fps = s["fps"].as_f64().unwrap();
        let meta = VideoMetadata {
            total_num_frames: total,
            fps,
            duration: total as f64 / fps,
        };
        let got = sample_frame_indices(
            &meta,
            s["max_frames"].as_u64().unwrap() as usize,
            s["target_fps"].as_f64().unwrap(),
            1.0,
        );
        let want: Vec<usize> = s["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, want, "{s}");
    }
}

#[test]
fn num2words_matches_python() {
    for (n, words) in manifest()["num2words"].as_object().unwrap() {
        assert_eq!(num2words_en(n.parse().unwrap()), words.as_str().unwrap());
    }
}

#[test]
fn animation_frames_match_pillow_image_sequence() {
    use idefics_processor::image::decode_animation;
    let frames_bytes = std::fs::read(fixtures().join("frames.safetensors")).unwrap();
    let stored = SafeTensors::deserialize(&frames_bytes).unwrap();
    for (name, count) in manifest()["animations"].as_object().unwrap() {
        let bytes = std::fs::read(root().join("images/files").join(name)).unwrap();
        let got = decode_animation(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(
            got.len() as u64,
            count.as_u64().unwrap(),
            "{name}: frame count"
        );
        for (i, frame) in got.iter().enumerate() {
            let want = stored.tensor(&format!("anim/{name}/{i}")).unwrap();
            let shape = (frame.image.height(), frame.image.width(), 3);
            assert_eq!(
                want.shape(),
                [shape.0, shape.1, shape.2],
                "{name} frame {i}"
            );
            let (n, max) = frame
                .image
                .as_bytes()
                .iter()
                .zip(want.data())
                .filter(|(a, b)| a != b)
                .fold((0, 0), |(n, m), (a, b)| (n + 1, m.max(a.abs_diff(*b))));
            // GIF frames and the first (lossless) WebP frame are exact; later frames of this animated WebP are
            // lossy VP8 composited by image-webp, whose YUV -> RGB rounding differs from libwebp's by at most 1.
            let lossy_webp_frame = name.ends_with(".webp") && i > 0;
            let allowed = if lossy_webp_frame { 1 } else { 0 };
            assert!(
                max <= allowed,
                "{name} frame {i}: {n} samples differ, max {max}"
            );
        }
        assert!(
            got.windows(2).all(|p| p[0].timestamp < p[1].timestamp),
            "{name}"
        );
    }
}

#[test]
fn idefics2_through_the_family_entry_equals_the_idefics2_api() {
    use idefics_processor::{Idefics2ImageProcessor, PromptProcessor};
    let dir = root().join("tokenizer");
    let family = FamilyProcessor::from_dir(&dir).unwrap();
    assert_eq!(family.family(), ModelFamily::Idefics2);
    let images = [synthetic_rgb(50, 70, 3), synthetic_rgb(30, 20, 4)];
    let prompt = "User:<image>What is this?<image><end_of_utterance>\nAssistant:";
    for split in [None, Some(false)] {
        let got = family.process_prompt(prompt, &images, split).unwrap();
        let text = PromptProcessor::from_dir(&dir).unwrap();
        let encoded = text.encode_prompt(prompt, 2, split).unwrap();
        let pixels = Idefics2ImageProcessor::from_model_dir(&dir)
            .unwrap()
            .preprocess(&[images.to_vec()], Some(encoded.do_image_splitting))
            .unwrap();
        assert_eq!(got.input_ids, encoded.input_ids);
        assert_eq!(got.images, pixels);
        assert!(got.grids.is_empty());
    }
}

#[test]
fn gpt2_tokenizer_is_rebuilt_like_transformers() {
    let tok =
        idefics_processor::TextTokenizer::from_dir(&fixtures().join("tokenizer_gpt2_rebuild"))
            .unwrap();
    for case in manifest()["gpt2_rebuild"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids_of(&case["input_ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn tiling_options_leave_parity_only_when_asked() {
    let dir = fixtures().join("ckpt_smolvlm_small");
    let img = synthetic_rgb(90, 120, 2);
    let parity = FamilyProcessor::from_dir(&dir).unwrap();
    let full = parity
        .process_prompt("<image>", std::slice::from_ref(&img), None)
        .unwrap();
    assert_eq!(full.grids, vec![TileGrid { rows: 3, cols: 4 }]);
    let capped = FamilyProcessor::from_dir(&dir)
        .unwrap()
        .with_tiling_options(Some(4), true)
        .unwrap();
    let out = capped
        .process_prompt("<image>", std::slice::from_ref(&img), None)
        .unwrap();
    assert_eq!(out.grids, vec![TileGrid { rows: 2, cols: 2 }]);
    assert_eq!(out.images.pixel_values_shape[1], 5);
    let small = synthetic_rgb(30, 20, 3);
    let keep = FamilyProcessor::from_dir(&dir)
        .unwrap()
        .with_tiling_options(None, false)
        .unwrap();
    let out = keep
        .process_prompt("<image>", std::slice::from_ref(&small), None)
        .unwrap();
    assert_eq!(out.grids, vec![TileGrid::default()]);
    let up = parity.process_prompt("<image>", &[small], None).unwrap();
    assert_eq!(up.grids, vec![TileGrid { rows: 4, cols: 3 }]);
    let idefics2 = FamilyProcessor::from_dir(&root().join("tokenizer")).unwrap();
    assert!(idefics2.with_tiling_options(Some(2), true).is_err());
}
