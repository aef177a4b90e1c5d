//! Helpers shared by the integration tests: fixture discovery, tensor loading and comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use idefics::{Idefics2ForConditionalGeneration, LoadOptions, ModelInputs};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// tests/fixtures/idefics2 at the workspace root.
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/idefics2")
}

/// Every case directory (one with model/config.json), sorted.
pub fn cases() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.join("model/config.json").exists());
    out.sort();
    assert!(
        !out.is_empty(),
        "no fixture cases under {}",
        fixtures_root().display()
    );
    out
}

pub fn load_st(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn load_model(case: &Path) -> Idefics2ForConditionalGeneration {
    Idefics2ForConditionalGeneration::load(&case.join("model"), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
}

/// Model inputs of a case; `with_positions` passes the fixture's explicit position_ids.
pub fn case_inputs(t: &HashMap<String, Tensor>, with_positions: bool) -> ModelInputs {
    ModelInputs {
        input_ids: t.get("input_ids").cloned(),
        attention_mask: t.get("attention_mask").cloned(),
        position_ids: if with_positions {
            t.get("position_ids").cloned()
        } else {
            None
        },
        pixel_values: t.get("pixel_values").cloned(),
        pixel_attention_mask: t.get("pixel_attention_mask").cloned(),
        inputs_embeds: None,
    }
}

pub fn mask_rows(t: &Tensor) -> Vec<Vec<i64>> {
    t.to_dtype(DType::I64).unwrap().to_vec2().unwrap()
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    max_abs(&(a - b).unwrap())
}

/// The project tolerance: `1e-4 * max(1, max|ref|)`.
pub fn tolerance(reference: &Tensor) -> f32 {
    1e-4 * max_abs(reference).max(1.0)
}

/// Max |a - b| over rows of `[B, L, V]` logits where `mask[b][l] == 1`, and max |b| there.
pub fn masked_logit_diff(ours: &Tensor, reference: &Tensor, mask: &[Vec<i64>]) -> (f32, f32) {
    let mut worst = 0f32;
    let mut ref_max = 0f32;
    for (bi, row) in mask.iter().enumerate() {
        for (li, &m) in row.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let o = ours.get(bi).unwrap().get(li).unwrap();
            let r = reference.get(bi).unwrap().get(li).unwrap();
            worst = worst.max(max_abs_diff(&o, &r));
            ref_max = ref_max.max(max_abs(&r));
        }
    }
    (worst, ref_max)
}
