//! Quantized loading on the bundled model (trained, widths 256 / 768: every k-quant fits) and on a tied SmolVLM
//! fixture (odd widths: the block-32 / dense fallbacks): what gets quantized, how far the next-token distributions
//! move from f32, and that a saved quantized model loads back bit-identical.

use candle_core::{DType, Device, Tensor, D};
use idefics::quant::{QuantConfig, QuantType};
use idefics::{KvCache, LoadOptions, ModelInputs, VlmModel};
use std::path::{Path, PathBuf};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/idefics2-tiny")
}

fn smolvlm_tied() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/idefics3/smolvlm_tied/model")
}

fn load(dir: &Path, quant: Option<QuantConfig>) -> VlmModel {
    let opts = LoadOptions {
        quant,
        ..LoadOptions::default()
    };
    VlmModel::load(dir, &opts).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

/// A fixed text-only prompt: token ids spread over the vocabulary (no image tokens).
fn prompt(vocab: u32, image_id: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i * 37 + i * i * 11) % (vocab - 3))
        .map(|t| if t == image_id { t + 1 } else { t })
        .collect()
}

/// Logits `[L, V]` of every position of `ids` (one forward, no images).
fn logits(model: &VlmModel, ids: &[u32]) -> Tensor {
    let inputs = ModelInputs {
        input_ids: Some(
            Tensor::new(ids, &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        ),
        ..ModelInputs::default()
    };
    let mut cache: KvCache = model.new_cache();
    model
        .forward(&inputs, Some(&mut cache))
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// (mean KL(f32 || quant) over positions, max KL, top-1 agreement).
fn divergence(reference: &Tensor, quant: &Tensor) -> (f32, f32, f32) {
    let lp = candle_nn::ops::log_softmax(reference, D::Minus1).unwrap();
    let lq = candle_nn::ops::log_softmax(quant, D::Minus1).unwrap();
    let kl = (lp.exp().unwrap() * (&lp - &lq).unwrap())
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let a = reference
        .argmax(D::Minus1)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    let b = quant.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f32 / a.len() as f32;
    let mean = kl.iter().sum::<f32>() / kl.len() as f32;
    (mean, kl.iter().cloned().fold(0.0, f32::max), agree)
}

#[test]
fn every_type_quantizes_the_whole_text_model_and_stays_close_to_f32() {
    let dir = bundled();
    let dense = load(&dir, None);
    assert!(dense.quant_report().is_none());
    let ids = prompt(dense.vocab_size() as u32, dense.image_token_id(), 48);
    let reference = logits(&dense, &ids);
    // Bounds ~3x above what the types give here (mean KL 2.6e-4 / 7.0e-3 / 1.9e-2 / 3.6e-2, top-1 0.98 / 0.96 /
    // 0.94 / 0.83 for q8_0 / q6k / q5_0 / q4k on this 48-token prompt); a broken kernel or block layout gives
    // KL ~ 1 and chance agreement.
    for (ty, max_mean_kl, min_agree) in [
        (QuantType::Q8_0, 1e-3, 0.95),
        (QuantType::Q6K, 2e-2, 0.9),
        (QuantType::Q5_0, 5e-2, 0.85),
        (QuantType::Q4K, 0.1, 0.75),
        (QuantType::Bf16, 1e-4, 0.98),
    ] {
        let model = load(&dir, Some(QuantConfig::new(ty)));
        let report = model.quant_report().expect("quantized").clone();
        // 4 layers x 7 linears, the embeddings, the untied head.
        assert_eq!(
            report.quantized.values().sum::<usize>(),
            30,
            "{ty}: {report:?}"
        );
        assert!(report.kept_dense.is_empty(), "{ty}: {report:?}");
        let ratio = report.quantized_bytes as f64 / report.f32_bytes as f64;
        let bits = ty.bits_per_weight() / 32.0;
        // The head of a q4k model is q6k, so its ratio sits a little above 4.5 / 32.
        assert!(ratio >= bits * 0.999 && ratio < bits * 1.3, "{ty}: {ratio}");
        let got = logits(&model, &ids);
        let (mean, max, agree) = divergence(&reference, &got);
        assert!(
            mean < max_mean_kl && agree >= min_agree,
            "{ty}: mean KL {mean}, max KL {max}, top-1 agreement {agree}"
        );
    }
}

#[test]
fn a_saved_quantized_model_loads_bit_identical_and_refuses_another_type() {
    for ty in [QuantType::Q4K, QuantType::Q5_0, QuantType::Bf16] {
        save_and_reload(ty);
    }
}

fn save_and_reload(ty: QuantType) {
    let dir = bundled();
    let quant = QuantConfig::new(ty);
    let mut model = load(&dir, Some(quant));
    let ids = prompt(model.vocab_size() as u32, model.image_token_id(), 20);
    let want = logits(&model, &ids);
    let out = tempfile::tempdir().unwrap();
    model.save_quantized(quant, &dir, out.path()).unwrap();
    for f in [
        "model.gguf",
        "config.json",
        "tokenizer.json",
        "processor_config.json",
    ] {
        assert!(out.path().join(f).exists(), "{f} missing");
    }
    assert!(!out.path().join("model.safetensors").exists());
    let gguf = std::fs::metadata(out.path().join("model.gguf"))
        .unwrap()
        .len();
    let safetensors = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(gguf < safetensors, "{gguf} >= {safetensors}");

    let loaded = load(out.path(), None);
    assert_eq!(
        loaded.quant_report().map(|r| r.quantized.clone()),
        model.quant_report().map(|r| r.quantized.clone())
    );
    let got = logits(&loaded, &ids);
    let diff = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
    // Asking for the same quantization is fine; another one is refused with both named.
    load(out.path(), Some(quant));
    let err = VlmModel::load(
        out.path(),
        &LoadOptions {
            quant: Some(QuantConfig::new(QuantType::Q8_0)),
            ..LoadOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("quantized as {ty}")) && err.contains("as q8_0"),
        "{err}"
    );
}

#[test]
fn a_truncated_or_foreign_gguf_is_one_clear_error() {
    let dir = bundled();
    let quant = QuantConfig::new(QuantType::Q8_0);
    let mut model = load(&dir, Some(quant));
    let out = tempfile::tempdir().unwrap();
    model.save_quantized(quant, &dir, out.path()).unwrap();
    let path = out.path().join("model.gguf");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = VlmModel::load(out.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.gguf") && err.contains("remaining in file"),
        "{err}"
    );
    std::fs::write(&path, b"not a gguf file at all").unwrap();
    let err = VlmModel::load(out.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
    // A dense model cannot be "saved quantized".
    let mut dense = load(&dir, None);
    let err = dense
        .save_quantized(quant, &dir, out.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("without quantization"), "{err}");
}

#[test]
fn a_tied_smolvlm_shares_one_quantized_matrix_and_round_trips() {
    let dir = smolvlm_tied();
    let dense = load(&dir, None);
    assert!(dense.is_tied());
    let ids = prompt(dense.vocab_size() as u32, dense.image_token_id(), 16);
    let reference = logits(&dense, &ids);
    let quant = QuantConfig::new(QuantType::Q4K);
    let mut model = load(&dir, Some(quant));
    let report = model.quant_report().unwrap().clone();
    let hidden = model.text_config().hidden_size;
    // Widths here are not multiples of 256: every tensor falls back to q5_0 (llama.cpp's stand-in for q4k) when
    // its rows are a multiple of 32, and stays dense otherwise; nothing is q4k, nor q8_0 (the head is tied).
    assert!(!report.quantized.contains_key("q4k"), "{report:?}");
    assert!(!report.quantized.contains_key("q8_0"), "{report:?}");
    assert_eq!(
        report.kept_dense.is_empty(),
        hidden.is_multiple_of(32) && model.text_config().intermediate_size.is_multiple_of(32)
    );
    let got = logits(&model, &ids);
    let (mean, _, agree) = divergence(&reference, &got);
    assert!(mean < 1e-2 && agree >= 0.8, "KL {mean}, agreement {agree}");
    let out = tempfile::tempdir().unwrap();
    model.save_quantized(quant, &dir, out.path()).unwrap();
    let loaded = load(out.path(), None);
    assert!(loaded.is_tied());
    let again = logits(&loaded, &ids);
    let diff = (&again - &got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}
