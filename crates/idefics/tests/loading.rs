//! Bad checkpoints give one clear error naming the problem (never a panic); good ones load from every stored
//! dtype and from shards.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use idefics::{Idefics2ForConditionalGeneration, LoadOptions};
use std::collections::HashMap;
use std::path::Path;

/// A writable copy of fixture case cfg_a's model directory (single f32 file).
fn copy_model() -> tempfile::TempDir {
    let src = fixtures_root().join("cfg_a/model");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match Idefics2ForConditionalGeneration::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "error should be one line: {msg}");
            msg
        }
    }
}

fn rewrite(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

const VICTIM: &str = "model.text_model.layers.0.self_attn.k_proj.weight";

#[test]
fn truncated_file_is_reported() {
    let dir = copy_model();
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 100).unwrap();
    let msg = load_err(dir.path());
    assert!(
        msg.contains("truncated") && msg.contains("model.safetensors"),
        "{msg}"
    );
    // Cut inside the header too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(20)
        .unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model();
    rewrite(dir.path(), |t| {
        t.remove(VICTIM);
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("missing tensor") && msg.contains(VICTIM),
        "{msg}"
    );
}

#[test]
fn integer_weight_is_rejected() {
    let dir = copy_model();
    rewrite(dir.path(), |t| {
        let w = t[VICTIM].to_dtype(DType::I64).unwrap();
        t.insert(VICTIM.into(), w);
    });
    let msg = load_err(dir.path());
    assert!(msg.contains(VICTIM) && msg.contains("I64"), "{msg}");
}

#[test]
fn misshaped_tensor_is_named() {
    let dir = copy_model();
    rewrite(dir.path(), |t| {
        let w = t[VICTIM].narrow(0, 0, 1).unwrap();
        t.insert(VICTIM.into(), w);
    });
    let msg = load_err(dir.path());
    assert!(msg.contains(VICTIM) && msg.contains("shape"), "{msg}");
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = copy_model();
    rewrite(dir.path(), |t| {
        t.insert(
            "model.extra_head.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = load_err(dir.path());
    assert!(
        msg.contains("unexpected tensor model.extra_head.weight"),
        "{msg}"
    );
}

#[test]
fn config_of_another_model_is_rejected() {
    let dir = copy_model();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"idefics2\"", "\"llava\"");
    std::fs::write(&cfg, text).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("llava") && msg.contains("model_type"), "{msg}");
}

#[test]
fn missing_files_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("config.json"), "{msg}");
    std::fs::copy(
        fixtures_root().join("cfg_a/model/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn missing_shard_is_reported() {
    let src = fixtures_root().join("cfg_c/model");
    let dir = tempfile::tempdir().unwrap();
    let mut shards = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".safetensors") {
            shards.push(name.clone());
        }
        std::fs::copy(e.path(), dir.path().join(&name)).unwrap();
    }
    assert!(shards.len() > 1, "cfg_c should be sharded");
    shards.sort();
    std::fs::remove_file(dir.path().join(&shards[0])).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains(&shards[0]), "{msg}");
}

/// bf16 (cfg_c, sharded) and f16 (cfg_d) stored weights load as f32 and equal the stored values exactly.
#[test]
fn half_precision_weights_are_converted() {
    for case in ["cfg_c", "cfg_d"] {
        let dir = fixtures_root().join(case).join("model");
        let ck = idefics::weights::Checkpoint::open(&dir).unwrap();
        let name = "model.text_model.embed_tokens.weight";
        let (dtype, _) = ck.info(name).unwrap();
        assert!(
            matches!(dtype, DType::BF16 | DType::F16),
            "{case}: stored as {dtype:?}"
        );
        let t = ck.load(name, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        let back = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(max_abs_diff(&t, &back), 0.0);
        assert!(max_abs(&t) > 0.0);
        Idefics2ForConditionalGeneration::load(&dir, &LoadOptions::default()).unwrap();
    }
}

/// Every stored float dtype reads into f32 exactly as candle converts it (bit for bit, specials included), across
/// the loader's read chunks (a tensor of more than a million elements) and for a block of rows in the middle.
#[test]
fn stored_dtypes_convert_like_candle_across_read_chunks() {
    let (rows, cols) = (1031, 1024 + 3);
    let mut values: Vec<f32> = (0..rows * cols)
        .map(|i| (i as f32 * 0.618_034).sin() * 3.0e4_f32.powf((i % 7) as f32 / 7.0 - 0.5))
        .collect();
    let specials = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0e-41,
        -3.0e-39,
        65504.0,
        7.0e4,
        f32::MAX,
    ];
    for (i, v) in specials.iter().enumerate() {
        values[i * 104_729 % (rows * cols)] = *v;
    }
    let dense = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut stored = HashMap::new();
    for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
        stored.insert(format!("{dtype:?}"), dense.to_dtype(dtype).unwrap());
    }
    candle_core::safetensors::save(&stored, &path).unwrap();
    let ck = idefics::weights::Checkpoint::open(dir.path()).unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    };
    for (name, t) in &stored {
        let expected = t.to_dtype(DType::F32).unwrap();
        let loaded = ck.load(name, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(loaded.dims(), &[rows, cols], "{name}");
        assert!(bits(&loaded) == bits(&expected), "{name}: values differ");
        let (start, n) = (517, 300);
        let block = ck.load_rows_f32(name, start, n).unwrap();
        let expected_block = bits(&expected.narrow(0, start, n).unwrap());
        let block_bits: Vec<u32> = block.iter().map(|x| x.to_bits()).collect();
        assert!(block_bits == expected_block, "{name}: rows differ");
    }
    let err = ck
        .load_rows_f32("F32", rows - 2, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rows"), "{err}");
}
