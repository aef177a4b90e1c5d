//! Parity of the Idefics3 / SmolVLM model with transformers 5.24 on the committed fixtures
//! (tests/fixtures/idefics3/<case>/, written by tools/reference/make_idefics3_fixtures.py): logits on real tokens,
//! vision tower output on the whole padded grid, connector output, rope frequencies, greedy generation with the KV
//! cache; plus the training-readiness of every parameter. Tolerance 1e-4 * max(1, max|ref|).

mod common;

use candle_core::{DType, IndexOp, Tensor, Var};
use common::{case_inputs, load_st, mask_rows, masked_logit_diff, max_abs_diff, tolerance};
use idefics::generate::{FinishReason, GenerationConfig, GenerationRequest, Generator};
use idefics::model::{Idefics3ForConditionalGeneration, ModelFamily, VlmModel};
use idefics::nn::{Linear, ParamVisitor, RopeScaling, VisitParams};
use idefics::LoadOptions;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The kwargs the fixture script passed to generate() (meta.json `generate_kwargs`).
const MAX_NEW_TOKENS: usize = 8;
const EOS: [u32; 2] = [2, 322];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/idefics3")
}

/// `(case dir, input-set suffix)` for every input set of every case.
fn input_sets() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(root())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model/config.json").exists())
        .collect();
    cases.sort();
    for case in cases {
        let mut sets: Vec<String> = std::fs::read_dir(&case)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_prefix("inputs")
                    .and_then(|s| s.strip_suffix(".safetensors"))
                    .map(str::to_string)
            })
            .collect();
        sets.sort();
        for s in sets {
            out.push((case.clone(), s));
        }
    }
    assert!(
        out.len() >= 4,
        "expected fixture input sets under {}",
        root().display()
    );
    out
}

fn load(case: &Path) -> Idefics3ForConditionalGeneration {
    Idefics3ForConditionalGeneration::load(&case.join("model"), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

fn name_of(case: &Path, set: &str) -> String {
    format!("{}{set}", case.file_name().unwrap().to_string_lossy())
}

#[test]
fn logits_match_transformers() {
    let mut failures = Vec::new();
    for (case, set) in input_sets() {
        let name = name_of(&case, &set);
        let model = load(&case);
        let inputs = load_st(&case.join(format!("inputs{set}.safetensors")));
        let expected = load_st(&case.join(format!("expected{set}.safetensors")));
        let mask = mask_rows(&inputs["attention_mask"]);
        for with_positions in [true, false] {
            let logits = model
                .forward(&case_inputs(&inputs, with_positions), None)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                logits.dims(),
                expected["logits"].dims(),
                "{name}: logits shape"
            );
            let (diff, ref_max) = masked_logit_diff(&logits, &expected["logits"], &mask);
            let tol = 1e-4 * ref_max.max(1.0);
            println!(
                "{name} (explicit position_ids: {with_positions}): max|ours - ref| = {diff:.3e} (tol {tol:.3e}, \
                 max|ref| {ref_max:.3})"
            );
            if diff > tol {
                failures.push(format!("{name}: logits differ by {diff:e} > {tol:e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn vision_tower_and_connector_match_transformers() {
    let mut checked = 0;
    for (case, set) in input_sets() {
        let name = name_of(&case, &set);
        let inputs = load_st(&case.join(format!("inputs{set}.safetensors")));
        let Some(pv) = inputs.get("pixel_values") else {
            continue;
        };
        let expected = load_st(&case.join(format!("expected{set}.safetensors")));
        let model = load(&case);
        let feats = model
            .image_features(pv, inputs.get("pixel_attention_mask"), true)
            .unwrap();
        // The whole padded grid, padded patches included: the pixel shuffle consumes them.
        let vision = feats.vision_hidden_states.as_ref().unwrap();
        let reference = &expected["vision_hidden_states"];
        let diff = max_abs_diff(vision, reference);
        let tol = tolerance(reference);
        println!("{name}: vision max diff {diff:.3e} (tol {tol:.3e})");
        assert!(
            diff <= tol,
            "{name}: vision hidden states differ by {diff:e} > {tol:e}"
        );
        let reference = &expected["connector_output"];
        let diff = max_abs_diff(&feats.features, reference);
        let tol = tolerance(reference);
        println!("{name}: connector max diff {diff:.3e} (tol {tol:.3e})");
        assert!(
            diff <= tol,
            "{name}: connector output differs by {diff:e} > {tol:e}"
        );
        checked += 1;
    }
    assert!(checked >= 3);
}

#[test]
fn any_pixel_rule_and_smolvlm_padding_rule() {
    // idefics3_llama3: image 1 of sample 0 is 17x21 px in a 26x26 batch image, patch 4: 5x6 patches have at least
    // one valid pixel (4x5 are entirely valid). Sample 1's second slot is padding and is dropped.
    let case = root().join("idefics3_llama3");
    let inputs = load_st(&case.join("inputs.safetensors"));
    let model = load(&case);
    let feats = model
        .image_features(
            &inputs["pixel_values"],
            inputs.get("pixel_attention_mask"),
            false,
        )
        .unwrap();
    assert_eq!(feats.image_index, vec![(0, 0), (0, 1), (1, 0)]);
    let grid = &feats.patch_valid[1];
    assert_eq!(grid.iter().filter(|r| r[0]).count(), 5);
    assert_eq!(grid[0].iter().filter(|&&v| v).count(), 6);
    // smolvlm_tied "allpad": the only image is all zeros; SmolVLM keeps it.
    let case = root().join("smolvlm_tied");
    let inputs = load_st(&case.join("inputs_allpad.safetensors"));
    let model = load(&case);
    let feats = model
        .image_features(
            &inputs["pixel_values"],
            inputs.get("pixel_attention_mask"),
            false,
        )
        .unwrap();
    assert_eq!(feats.image_index, vec![(0, 0)]);
    assert_eq!(feats.features.dims(), &[1, 4, 40]);
}

#[test]
fn rope_frequencies_match_transformers() {
    for (case, set) in input_sets() {
        let expected = load_st(&case.join(format!("expected{set}.safetensors")));
        let model = load(&case);
        let cfg = model.config();
        let ours = cfg
            .decoder
            .rope_scaling
            .inv_freq(cfg.text_config.rope_theta, cfg.text_config.head_dim);
        let theirs: Vec<f32> = expected["rope_inv_freq"].to_vec1().unwrap();
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let rel = ((a - b) / b).abs();
            assert!(
                rel <= 2.4e-7,
                "{}: inv_freq[{i}] {a} vs {b}",
                name_of(&case, &set)
            );
        }
        let want_llama3 = case.ends_with("idefics3_llama3");
        match &cfg.decoder.rope_scaling {
            RopeScaling::Llama3 { .. } => assert!(want_llama3),
            RopeScaling::Linear { factor } => assert!(!want_llama3 && *factor == 2.0),
            other => panic!("unexpected rope scaling {other:?}"),
        }
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    // The crate's decoding loop (prefill once with the images, then one token per step from the KV cache) with
    // generate()'s settings: greedy, bad_words_ids [[320], [321]], eos [2, 322], pad 0.
    let generation_config = GenerationConfig {
        eos_token_ids: EOS.to_vec(),
        bad_words_ids: vec![vec![320], vec![321]],
        pad_token_id: Some(0),
        max_new_tokens: None,
    };
    for (case, set) in input_sets() {
        let name = name_of(&case, &set);
        let model = VlmModel::load(&case.join("model"), &LoadOptions::default()).unwrap();
        let inputs = load_st(&case.join(format!("inputs{set}.safetensors")));
        let expected = load_st(&case.join(format!("expected{set}.safetensors")));
        let ids: Vec<Vec<i64>> = inputs["input_ids"].to_vec2().unwrap();
        let mask = mask_rows(&inputs["attention_mask"]);
        let prompt_ids: Vec<Vec<u32>> = ids
            .iter()
            .zip(&mask)
            .map(|(row, m)| {
                row.iter()
                    .zip(m)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&t, _)| t as u32)
                    .collect()
            })
            .collect();
        let generator = Generator {
            model: &model,
            generation_config: &generation_config,
            extra_eos_token_ids: vec![],
            tokenizer: None,
        };
        let requests = vec![
            GenerationRequest {
                max_new_tokens: MAX_NEW_TOKENS,
                ..Default::default()
            };
            ids.len()
        ];
        let out = generator
            .generate(
                &case_inputs(&inputs, false),
                &prompt_ids,
                &requests,
                |_, _| true,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let reference: Vec<Vec<i64>> = expected["generated_ids"].to_vec2().unwrap();
        let prompt_len = ids[0].len();
        for (row, (ours, theirs)) in out.iter().zip(&reference).enumerate() {
            let new: Vec<u32> = theirs[prompt_len..].iter().map(|&t| t as u32).collect();
            let (want, want_reason) = match new.iter().position(|t| EOS.contains(t)) {
                Some(end) => (new[..end].to_vec(), FinishReason::Stop),
                None => (new.clone(), FinishReason::Length),
            };
            assert_eq!(
                ours.token_ids, want,
                "{name} row {row}: tokens differ from transformers"
            );
            assert_eq!(ours.finish_reason, want_reason, "{name} row {row}");
            println!(
                "{name} row {row}: {:?} ({:?}) as transformers",
                ours.token_ids, ours.finish_reason
            );
        }
    }
}

#[test]
fn one_handle_loads_every_family() {
    let idefics2 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/idefics2/cfg_a/model");
    let m = VlmModel::load(&idefics2, &LoadOptions::default()).unwrap();
    assert_eq!(m.family(), ModelFamily::Idefics2);
    let m = VlmModel::load(
        &root().join("idefics3_llama3/model"),
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(m.family(), ModelFamily::Idefics3);
    assert_eq!(m.image_seq_len(), 9);
    let m = VlmModel::load(&root().join("smolvlm_tied/model"), &LoadOptions::default()).unwrap();
    assert_eq!(m.family(), ModelFamily::SmolVlm);
    assert_eq!(m.image_seq_len(), 4);
    // The tied head is the embedding matrix, and the checkpoint does not store it.
    let VlmModel::Idefics3(inner) = &m else {
        panic!("not an Idefics3 handle")
    };
    assert!(inner.is_tied());
}

#[test]
fn wrong_image_token_count_is_an_error_naming_both_counts() {
    let case = root().join("idefics3_llama3");
    let model = load(&case);
    let inputs = load_st(&case.join("inputs.safetensors"));
    let mut bad = case_inputs(&inputs, false);
    // Drop the last image slot of sample 0: 27 <image> tokens remain in the prompt for 18 feature rows.
    let pv = inputs["pixel_values"].i((.., 0..1)).unwrap();
    let pm = inputs["pixel_attention_mask"].i((.., 0..1)).unwrap();
    bad.pixel_values = Some(pv);
    bad.pixel_attention_mask = Some(pm);
    let err = model.forward(&bad, None).unwrap_err().to_string();
    assert!(
        err.contains("27 <image> tokens") && err.contains("18 feature rows"),
        "{err}"
    );
}

/// Replaces every parameter by a `Var` (a tied head keeps the embedding's `Var`) and remembers them by name.
#[derive(Default)]
struct MakeTrainable {
    vars: Vec<(String, Var)>,
    seen: BTreeSet<String>,
}

impl MakeTrainable {
    fn var(&mut self, name: String, t: &Tensor) -> candle_core::Result<Tensor> {
        let v = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
        let out = v.as_tensor().clone();
        self.seen.insert(name.clone());
        self.vars.push((name, v));
        Ok(out)
    }
}

impl ParamVisitor for MakeTrainable {
    fn linear(&mut self, path: &str, layer: &mut Linear) -> candle_core::Result<()> {
        if layer.weight()?.is_variable() {
            // The tied head: already the embedding's Var.
            self.seen.insert(format!("{path}.weight"));
            return Ok(());
        }
        let w = self.var(format!("{path}.weight"), layer.weight()?)?;
        let b = match layer.bias().cloned() {
            Some(b) => Some(self.var(format!("{path}.bias"), &b)?),
            None => None,
        };
        layer.set_dense(w, b);
        Ok(())
    }
    fn tensor(&mut self, name: &str, tensor: &mut Tensor) -> candle_core::Result<()> {
        *tensor = self.var(name.to_string(), tensor)?;
        Ok(())
    }
}

#[test]
fn every_parameter_is_visited_and_gets_a_gradient() {
    for case in ["idefics3_llama3", "smolvlm_tied"] {
        let case = root().join(case);
        let mut model = load(&case);
        let mut visitor = MakeTrainable::default();
        model.visit_params("", &mut visitor).unwrap();
        // Every stored tensor is visited under its checkpoint name (plus the tied head, which is not stored).
        let st = load_st(&case.join("model/model.safetensors"));
        let stored: BTreeSet<String> = st.keys().cloned().collect();
        let mut visited = visitor.seen.clone();
        if model.is_tied() {
            assert!(visited.remove("lm_head.weight"));
        }
        // The patch embedding is stored as a conv kernel under the same name.
        assert_eq!(visited, stored, "{}", case.display());

        let inputs = load_st(&case.join("inputs.safetensors"));
        let logits = model.forward(&case_inputs(&inputs, false), None).unwrap();
        let loss = logits.sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &visitor.vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
        println!(
            "{}: {} parameters, all with a gradient",
            case.display(),
            visitor.vars.len()
        );
    }
}

/// A copy of a fixture checkpoint with its tensors edited, in a fresh temporary directory.
fn edited_checkpoint(
    case: &str,
    tag: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> PathBuf {
    let src = root().join(case).join("model");
    let dir = std::env::temp_dir().join(format!("idefics3-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = load_st(&src.join("model.safetensors"));
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn loading_names_missing_and_unexpected_tensors() {
    let opts = LoadOptions::default();
    let missing = "model.connector.modality_projection.proj.weight";
    let dir = edited_checkpoint("idefics3_llama3", "missing", |t| {
        t.remove(missing);
    });
    let err = Idefics3ForConditionalGeneration::load(&dir, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains(missing), "{err}");
    let dir = edited_checkpoint("idefics3_llama3", "unexpected", |t| {
        let extra = t["lm_head.weight"].clone();
        t.insert("model.connector.extra.weight".into(), extra);
    });
    let err = Idefics3ForConditionalGeneration::load(&dir, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected tensor model.connector.extra.weight"),
        "{err}"
    );
    // The bias flags come from config.json: a checkpoint without the biases it announces is refused by name.
    let dir = edited_checkpoint("idefics3_llama3", "nobias", |t| {
        t.remove("model.text_model.layers.1.mlp.down_proj.bias");
    });
    let err = Idefics3ForConditionalGeneration::load(&dir, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.text_model.layers.1.mlp.down_proj.bias"),
        "{err}"
    );
}

#[test]
fn a_stored_head_that_differs_from_the_embeddings_is_not_tied() {
    // transformers (PreTrainedModel.tie_weights) keeps a stored lm_head.weight that differs from the embeddings,
    // even with tie_word_embeddings true; an identical one is tied.
    let opts = LoadOptions::default();
    let dir = edited_checkpoint("smolvlm_tied", "ownhead", |t| {
        let e = t["model.text_model.embed_tokens.weight"].clone();
        t.insert("lm_head.weight".into(), (e * 0.5).unwrap());
    });
    let m = Idefics3ForConditionalGeneration::load(&dir, &opts).unwrap();
    assert!(!m.is_tied());
    let e = m.text_model().embed_tokens().dense().unwrap();
    let half = (e * 0.5).unwrap();
    assert_eq!(max_abs_diff(m.lm_head().weight().unwrap(), &half), 0.0);
    let dir = edited_checkpoint("smolvlm_tied", "samehead", |t| {
        let e = t["model.text_model.embed_tokens.weight"].clone();
        t.insert("lm_head.weight".into(), e);
    });
    assert!(Idefics3ForConditionalGeneration::load(&dir, &opts)
        .unwrap()
        .is_tied());
}

/// A realistic-shape checkpoint (bench_config/make_smolvlm_bench_checkpoints.py, then
/// tools/reference/make_idefics3_big_reference.py; not committed):
/// `IDEFICS3_BIG_CKPT=/work/bench-smolvlm-256m cargo test -p idefics --test idefics3_parity -- --ignored --nocapture`.
#[test]
#[ignore = "needs a generated realistic-shape checkpoint (tools/reference/make_idefics3_big_reference.py)"]
fn realistic_shape_checkpoint_matches_transformers() {
    let dir = PathBuf::from(
        std::env::var("IDEFICS3_BIG_CKPT").unwrap_or("/work/bench-smolvlm-256m".into()),
    );
    let t0 = std::time::Instant::now();
    let model = VlmModel::load(&dir, &LoadOptions::default()).unwrap();
    let VlmModel::Idefics3(inner) = &model else {
        panic!("{}: not an Idefics3 / SmolVLM checkpoint", dir.display())
    };
    let load_s = t0.elapsed().as_secs_f64();
    let inputs = load_st(&dir.join("parity_inputs.safetensors"));
    let expected = load_st(&dir.join("parity_expected.safetensors"));
    let t0 = std::time::Instant::now();
    let logits = model.forward(&case_inputs(&inputs, false), None).unwrap();
    let forward_s = t0.elapsed().as_secs_f64();
    let mask = mask_rows(&inputs["attention_mask"]);
    let (diff, ref_max) = masked_logit_diff(&logits, &expected["logits"], &mask);
    let tol = 1e-4 * ref_max.max(1.0);
    let feats = inner
        .image_features(
            &inputs["pixel_values"],
            inputs.get("pixel_attention_mask"),
            false,
        )
        .unwrap();
    let cdiff = max_abs_diff(&feats.features, &expected["connector_output"]);
    let ctol = tolerance(&expected["connector_output"]);
    println!(
        "{}: load {load_s:.1}s, forward {forward_s:.1}s; logits max diff {diff:.3e} (tol {tol:.3e}, max|ref| \
         {ref_max:.3}); connector max diff {cdiff:.3e} (tol {ctol:.3e})",
        dir.display()
    );
    assert!(cdiff <= ctol, "connector differs by {cdiff:e} > {ctol:e}");
    assert!(diff <= tol, "logits differ by {diff:e} > {tol:e}");
}
