//! `idefics bench` end to end on the tiny committed checkpoints of each family.

use super::*;
use crate::bench::BenchModel;

/// A whole run on the tiny committed checkpoint (text requests only: it has no bench images): the report keys
/// that tools/ and docs/ read, and the printed rows.
#[test]
fn runs_on_a_tiny_checkpoint_and_writes_the_report() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/e2e/tiny-chat");
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("bench_inputs.json");
    let ids: Vec<u32> = (0..40).map(|i| 5 + i % 50).collect();
    std::fs::write(
        &inputs,
        json!({"requests": {TEXT_REQUEST: {"images": [], "do_image_splitting": false,
            "input_ids": ids, "n_tokens": ids.len()}}})
        .to_string(),
    )
    .unwrap();
    let options = BenchOptions {
        model,
        inputs: Some(inputs),
        warmup: 0,
        repeat: 1,
        image_warmup: None,
        image_repeat: None,
        decode_tokens: 2,
        skip: VISION_ORDER.iter().map(|k| k.to_string()).collect(),
        machine: false,
        json: Some(dir.path().join("out.json")),
        kernels: KernelChoice::Fused,
        weight_layout: crate::model::CpuWeightLayout::Panels,
        quant: None,
        command: vec!["idefics".into(), "bench".into()],
    };
    let mut progress = Vec::new();
    let report = run(&options, &mut |line| progress.push(line.to_string())).unwrap();
    let what: Vec<&str> = report.rows.iter().map(|r| r.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "prefill 512 text tokens",
            "decode 2 tokens (ctx 40)",
            "peak RSS"
        ]
    );
    assert_eq!(progress.len(), 3);
    let out: Value =
        serde_json::from_str(&std::fs::read_to_string(&report.json_path).unwrap()).unwrap();
    assert_eq!(out["complete"], true);
    assert_eq!(out["command"], "idefics bench");
    for key in [
        "load_s",
        "rss_after_load_mb",
        "peak_rss_mb",
        "prefill_text_512",
        "decode",
    ] {
        assert!(out["results"].get(key).is_some(), "results.{key}");
    }
    assert_eq!(out["results"]["decode"]["new_tokens"], 2);
    assert!(out["results"]["prefill_text_512"]["s"].as_f64().unwrap() > 0.0);
    let mut bad = options.clone();
    bad.repeat = 0;
    assert!(run(&bad, &mut |_| {})
        .unwrap_err()
        .to_string()
        .contains("--repeat"));
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path)
}

/// A prompt laid out as the processors write it, with `image_tokens` `<image>` ids (`image`); the other ids are
/// ordinary text ids below 300 (every tiny vocabulary here has more).
fn prompt_ids(image: u32, image_tokens: usize) -> Vec<u32> {
    let mut ids = vec![1, 7];
    ids.extend(std::iter::repeat_n(image, image_tokens));
    ids.extend((0..12).map(|i| 20 + i * 7));
    ids
}

/// Options for a short run of the two 640x480 requests (pointing at a 120x80 photo) and a 30-token text.
fn image_run_options(model: PathBuf, dir: &Path, image: u32, tokens: [usize; 2]) -> BenchOptions {
    let photo = fixture("images_e2e/landscape_120x80.png");
    let photo = photo.to_str().unwrap();
    let text: Vec<u32> = (0..30).map(|i| 3 + i * 5).collect();
    let request = |split: bool, n: usize| {
        let ids = prompt_ids(image, n);
        json!({"images": [photo], "do_image_splitting": split, "n_tokens": ids.len(), "input_ids": ids})
    };
    let inputs = dir.join("bench_inputs.json");
    std::fs::write(
        &inputs,
        json!({"requests": {
            TEXT_REQUEST: {"images": [], "do_image_splitting": false, "input_ids": text, "n_tokens": 30},
            "photo_640x480_nosplit": request(false, tokens[0]),
            "photo_640x480_split": request(true, tokens[1]),
        }})
        .to_string(),
    )
    .unwrap();
    BenchOptions {
        model,
        inputs: Some(inputs),
        warmup: 0,
        repeat: 1,
        image_warmup: None,
        image_repeat: None,
        decode_tokens: 2,
        skip: vec!["photo_980x980_nosplit".into(), "photo_980x980_split".into()],
        machine: false,
        json: Some(dir.join("out.json")),
        kernels: KernelChoice::Fused,
        weight_layout: crate::model::CpuWeightLayout::Panels,
        quant: None,
        command: vec!["idefics".into(), "bench".into()],
    }
}

/// Runs the image requests on `model` whose processor makes `frames` = [unsplit, split] frames of the 120x80
/// photo, `seq` `<image>` tokens each; checks the phases, frame and token counts, and that the TTFT FLOPs are
/// the vision FLOPs plus the prefill's. Returns the report and the loaded model.
fn run_images(model: &str, image: u32, seq: usize, frames: [usize; 2]) -> (Value, BenchModel) {
    let model = fixture(model);
    let dir = tempfile::tempdir().unwrap();
    let options = image_run_options(model.clone(), dir.path(), image, frames.map(|f| f * seq));
    let report = run(&options, &mut |_| {}).unwrap();
    let what: Vec<&str> = report.rows.iter().map(|r| r.what.as_str()).collect();
    assert_eq!(
        what,
        [
            "prefill 512 text tokens",
            "decode 2 tokens (ctx 30)",
            "preprocess photo_640x480_nosplit",
            "vision+connector photo_640x480_nosplit",
            "preprocess photo_640x480_split",
            "vision+connector photo_640x480_split",
            "TTFT photo_640x480_nosplit",
            "TTFT photo_640x480_split",
            "peak RSS"
        ]
    );
    let out: Value =
        serde_json::from_str(&std::fs::read_to_string(&report.json_path).unwrap()).unwrap();
    assert_eq!(out["complete"], true);
    let loaded = BenchModel::load(&model, &LoadOptions::default()).unwrap();
    for (key, f) in [
        ("photo_640x480_nosplit", frames[0]),
        ("photo_640x480_split", frames[1]),
    ] {
        let v = &out["results"]["vision"][key];
        assert_eq!(v["frames"], f, "{key}");
        assert_eq!(v["image_tokens"], f * seq, "{key}");
        assert_eq!(v["pixel_values_shape"][1], f, "{key}");
        let vision_flops = v["flops"].as_f64().unwrap();
        assert!(vision_flops > 0.0, "{key}");
        let t = &out["results"]["ttft"][key];
        assert_eq!(t["image_tokens"], f * seq, "{key}");
        let n_tokens = t["prompt_tokens"].as_u64().unwrap() as usize;
        let prefill = prefill_flops(loaded.text_config(), 0, n_tokens, 1);
        let ttft_flops = t["flops"].as_f64().unwrap();
        assert!(
            (ttft_flops - vision_flops - prefill).abs() <= 1e-9 * ttft_flops,
            "{key}: {ttft_flops} vs {vision_flops} + {prefill}"
        );
    }
    (out, loaded)
}

/// SmolVLM (image 32, patch 4, r = 4: 4 tokens a tile; longest edge 64, tiles of 32): the 120x80 photo becomes
/// 64x42, then 64x64 for the encoder: 2x2 tiles + the global image. Every tile runs all 8x8 patches.
#[test]
fn smolvlm_tiles_and_image_tokens_follow_the_processor() {
    let (out, model) = run_images("idefics3/e2e/smolvlm_tied", 459, 4, [1, 5]);
    assert_eq!(out["model_type"], "smolvlm");
    let split = &out["results"]["vision"]["photo_640x480_split"];
    assert_eq!(split["pixel_values_shape"], json!([1, 5, 3, 32, 32]));
    assert_eq!(split["valid_patches_total"], 5 * 64);
    assert_eq!(split["flops"], model.vision_flops(&[64; 5]));
    assert_eq!(
        model.vision_flops(&[64; 5]),
        5.0 * crate::bench::pixel_shuffle_vision_flops(
            match &model.model {
                crate::model::VlmModel::Idefics3(m) => m.config(),
                _ => panic!("not an Idefics3 model"),
            },
            &[64]
        )
    );
}

/// Idefics3 (image 24, patch 4, r = 2: 9 tokens a tile; longest edge 48, tiles of 24): 120x80 -> 48x32 -> 48x48,
/// 2x2 tiles + the global image.
#[test]
fn idefics3_tiles_and_image_tokens_follow_the_processor() {
    let (out, _) = run_images("idefics3/e2e/idefics3_llama3", 459, 9, [1, 5]);
    assert_eq!(out["model_type"], "idefics3");
    let split = &out["results"]["vision"]["photo_640x480_split"];
    assert_eq!(split["pixel_values_shape"], json!([1, 5, 3, 24, 24]));
    assert_eq!(split["valid_patches_total"], 5 * 36);
}

/// Idefics2 (perceiver with 6 latents): 4 crops + the whole image when split, each of 6 tokens.
#[test]
fn idefics2_images_give_the_perceiver_latents() {
    let (out, _) = run_images("e2e/tiny-chat", 321, 6, [1, 5]);
    assert_eq!(out["model_type"], "idefics2");
}

/// A prompt whose `<image>` count does not match the processor's frames is refused before the model runs, with
/// the counts in the message.
#[test]
fn a_request_with_the_wrong_image_token_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = image_run_options(
        fixture("idefics3/e2e/smolvlm_tied"),
        dir.path(),
        459,
        [4, 16],
    );
    let err = run(&options, &mut |_| {}).unwrap_err().to_string();
    assert!(
        err.contains("\"photo_640x480_split\" has 16 <image> tokens")
            && err.contains("5 frames x 4 tokens = 20"),
        "{err}"
    );
}
