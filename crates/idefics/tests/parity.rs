//! Parity with transformers 5.24 on every committed fixture case (tests/fixtures/idefics2/<case>/): logits on real
//! tokens, vision hidden states on valid patches, connector output; tolerance 1e-4 * max(1, max|ref|).

mod common;

use candle_core::{DType, IndexOp};
use common::*;

#[test]
fn logits_match_transformers_on_every_case() {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let model = load_model(&case);
        let inputs = load_st(&case.join("inputs.safetensors"));
        let expected = load_st(&case.join("expected.safetensors"));
        let mask = mask_rows(&inputs["attention_mask"]);
        let reference = &expected["logits"];
        // Noise floor of transformers itself: its f32 logits vs its f64 logits.
        let noise = expected
            .get("logits_f64")
            .map(|f64s| masked_logit_diff(reference, f64s, &mask).0);
        for with_positions in [true, false] {
            let logits = model
                .forward(&case_inputs(&inputs, with_positions), None)
                .unwrap();
            assert_eq!(logits.dims(), reference.dims(), "{name}: logits shape");
            let (diff, ref_max) = masked_logit_diff(&logits, reference, &mask);
            let tol = 1e-4 * ref_max.max(1.0);
            let vs64 = expected
                .get("logits_f64")
                .map(|f64s| masked_logit_diff(&logits, f64s, &mask).0);
            println!(
                "{name} (explicit position_ids: {with_positions}): max|ours - ref| = {diff:.3e} (tol {tol:.3e}, \
                 max|ref| {ref_max:.3}); transformers f32 vs f64 = {noise:?}; ours vs f64 = {vs64:?}"
            );
            if diff > tol {
                failures.push(format!(
                    "{name}: logits differ by {diff:e} > {tol:e} (noise floor {noise:?})"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn vision_and_connector_match_transformers() {
    let mut failures = Vec::new();
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let inputs = load_st(&case.join("inputs.safetensors"));
        let Some(pixel_values) = inputs.get("pixel_values") else {
            continue;
        };
        let model = load_model(&case);
        let expected = load_st(&case.join("expected.safetensors"));
        let feats = model
            .image_features(pixel_values, inputs.get("pixel_attention_mask"))
            .unwrap();

        // Vision: the reference is laid out on the batch-max patch grid; ours holds valid patches only.
        let ref_vision = &expected["vision_hidden_states"];
        let ref_patch_mask: Vec<Vec<Vec<u8>>> = expected["patch_attention_mask"]
            .to_dtype(DType::U8)
            .unwrap()
            .to_vec3()
            .unwrap();
        assert_eq!(
            feats.vision_hidden_states.len(),
            ref_patch_mask.len(),
            "{name}: number of real images"
        );
        let mut worst = 0f32;
        let mut ref_max = 0f32;
        for (i, ours) in feats.vision_hidden_states.iter().enumerate() {
            let grid = &ref_patch_mask[i];
            let gw = grid[0].len();
            let nb_h = grid.iter().filter(|r| r[0] == 1).count();
            let nb_w = grid[0].iter().filter(|&&v| v == 1).count();
            assert_eq!(
                feats.patch_grids[i],
                (nb_h, nb_w),
                "{name}: valid patch grid of image {i}"
            );
            for r in 0..nb_h {
                let theirs = ref_vision.i((i, r * gw..r * gw + nb_w)).unwrap();
                let mine = ours.i(r * nb_w..(r + 1) * nb_w).unwrap();
                worst = worst.max(max_abs_diff(&mine, &theirs));
                ref_max = ref_max.max(max_abs(&theirs));
            }
        }
        let tol = 1e-4 * ref_max.max(1.0);
        println!("{name}: vision max diff {worst:.3e} (tol {tol:.3e})");
        if worst > tol {
            failures.push(format!(
                "{name}: vision hidden states differ by {worst:e} > {tol:e}"
            ));
        }

        let ref_conn = &expected["connector_output"];
        let diff = max_abs_diff(&feats.features, ref_conn);
        let tol = tolerance(ref_conn);
        println!("{name}: connector max diff {diff:.3e} (tol {tol:.3e})");
        if diff > tol {
            failures.push(format!(
                "{name}: connector output differs by {diff:e} > {tol:e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The ~1.2 GB realistic-shape checkpoint of tools/reference/make_big_checkpoint.py (not committed):
/// `IDEFICS_BIG_CKPT=/work/bigckpt cargo test -p idefics --test parity -- --ignored --nocapture`.
#[test]
#[ignore = "needs the generated big checkpoint (tools/reference/make_big_checkpoint.py)"]
fn big_checkpoint_matches_transformers() {
    let root = std::path::PathBuf::from(
        std::env::var("IDEFICS_BIG_CKPT").unwrap_or("/work/bigckpt".into()),
    );
    let model = load_model(&root);
    let inputs = load_st(&root.join("inputs.safetensors"));
    let expected = load_st(&root.join("expected.safetensors"));
    let t0 = std::time::Instant::now();
    let logits = model.forward(&case_inputs(&inputs, false), None).unwrap();
    let (diff, ref_max) = masked_logit_diff(
        &logits,
        &expected["logits"],
        &mask_rows(&inputs["attention_mask"]),
    );
    let tol = 1e-4 * ref_max.max(1.0);
    println!(
        "big: forward {:.1}s, logits max diff {diff:.3e} (tol {tol:.3e}, max|ref| {ref_max:.3})",
        t0.elapsed().as_secs_f64()
    );
    let feats = model
        .image_features(&inputs["pixel_values"], inputs.get("pixel_attention_mask"))
        .unwrap();
    let cdiff = max_abs_diff(&feats.features, &expected["connector_output"]);
    println!(
        "big: connector max diff {cdiff:.3e} (tol {:.3e})",
        tolerance(&expected["connector_output"])
    );
    assert!(cdiff <= tolerance(&expected["connector_output"]));
    assert!(
        diff <= tol,
        "big checkpoint logits differ by {diff:e} > {tol:e}"
    );
}
