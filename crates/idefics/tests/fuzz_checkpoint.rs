//! Fuzzes checkpoint loading, on the shared harness (tests/fuzz/harness.rs): the safetensors headers, the shard
//! index and config.json of the tiny Idefics2 / Idefics3 / SmolVLM checkpoints under tests/fixtures, mutated one
//! file at a time, through the public entry points only: `Checkpoint::open` (then every tensor read),
//! `VlmModel::load` (config parsing of either family, shapes, tied weights), and for a checkpoint that still
//! loads, a 3-token prefill and one decoding step (config values such as rope settings only act there).
//! A failure is a panic, a run over 2 s, or a peak of live heap over 256 MiB (the fixtures are < 1 MB).
//!
//! Structure-aware mutations: config.json and the index are edited as JSON (interesting numbers, deleted and
//! grafted keys); a safetensors file has its JSON header edited (its length prefix usually kept right) or its
//! bytes mutated (truncation included).
//!
//! `cargo test -p idefics --test fuzz_checkpoint` runs a short bounded pass (CI). For a long run:
//! `IDEFICS_FUZZ_SECS=600 IDEFICS_FUZZ_SEED=1 cargo test -p idefics --test fuzz_checkpoint -- --nocapture`
//! A failing input is saved as one file: the line `idefics-fuzz-checkpoint <base> <file>` then the mutated
//! bytes; commit it under tests/fixtures/fuzz_regressions/checkpoint/, which this test replays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use idefics::model::{DecodeModel, ModelInputs};
use idefics::weights::Checkpoint;
use idefics::{LoadOptions, VlmModel};
use serde_json::Value;

#[path = "../../../tests/fuzz/harness.rs"]
mod harness;

#[global_allocator]
static GLOBAL: harness::CountingAlloc = harness::CountingAlloc;

/// The tiny checkpoints: Idefics2 (single file and 6 shards), Idefics3 (llama3 rope) and SmolVLM (tied).
const BASES: &[&str] = &[
    "idefics2/cfg_a/model",
    "idefics2/cfg_b/model",
    "idefics2/cfg_c/model",
    "idefics2/cfg_d/model",
    "idefics3/idefics3_llama3/model",
    "idefics3/smolvlm_tied/model",
];

const MAGIC: &str = "idefics-fuzz-checkpoint";

/// Tokens for text-level edits of JSON files.
const JSON_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "\"F16\"",
    "\"BF16\"",
    "\"I64\"",
    "\"BOOL\"",
    "\"F8_E4M3\"",
    "\"dtype\":",
    "\"shape\":",
    "\"data_offsets\":",
    "\"__metadata__\":",
    "\"weight_map\":",
    "\"model_type\":",
    "\"idefics2\"",
    "\"idefics3\"",
    "\"smolvlm\"",
    "\"../config.json\"",
    "\"/etc/passwd\"",
    "\"..\"",
    "\"\"",
];

#[derive(Clone)]
struct Case {
    base: usize,
    file: String,
    bytes: Vec<u8>,
}

fn to_bytes(c: &Case) -> Vec<u8> {
    let mut out = format!("{MAGIC} {} {}\n", BASES[c.base], c.file).into_bytes();
    out.extend_from_slice(&c.bytes);
    out
}

fn from_bytes(bytes: &[u8]) -> Option<Case> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[..nl]).ok()?;
    let mut words = line.split(' ');
    (words.next()? == MAGIC).then_some(())?;
    let base_name = words.next()?;
    let base = BASES.iter().position(|b| *b == base_name)?;
    Some(Case {
        base,
        file: words.next()?.to_string(),
        bytes: bytes[nl + 1..].to_vec(),
    })
}

/// The files of a base the fuzzer mutates.
fn mutable(name: &str) -> bool {
    name == "config.json" || name.ends_with(".safetensors") || name.ends_with(".index.json")
}

fn seeds() -> Vec<(String, Case)> {
    let mut seeds = Vec::new();
    for (base, dir) in BASES.iter().enumerate() {
        let mut names: Vec<String> = std::fs::read_dir(harness::fixtures().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| mutable(n))
            .collect();
        names.sort();
        for file in names {
            let bytes = std::fs::read(harness::fixtures().join(dir).join(&file)).unwrap();
            seeds.push((format!("{dir}/{file}"), Case { base, file, bytes }));
        }
    }
    for (name, bytes) in harness::files_in("fuzz_regressions/checkpoint", 4 << 20) {
        let case =
            from_bytes(&bytes).unwrap_or_else(|| panic!("{name}: not a saved checkpoint case"));
        seeds.push((name, case));
    }
    seeds
}

/// `(header JSON, data)` of a safetensors file, when its length prefix is sane.
fn split_safetensors(bytes: &[u8]) -> Option<(Value, &[u8])> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    Some((serde_json::from_slice(header).ok()?, &bytes[8 + len..]))
}

struct Donors {
    /// Parsed JSON documents of each kind: configs, indexes, safetensors headers.
    configs: Vec<Value>,
    indexes: Vec<Value>,
    headers: Vec<Value>,
}

fn mutate(rng: &mut harness::Rng, parent: &Case, donors: &Donors) -> Case {
    let mut case = parent.clone();
    let json_kind = if case.file.ends_with(".safetensors") {
        None
    } else if case.file.ends_with(".index.json") {
        Some(&donors.indexes)
    } else {
        Some(&donors.configs)
    };
    match json_kind {
        Some(kind) => match serde_json::from_slice::<Value>(&case.bytes) {
            Ok(mut v) if !rng.chance(6) => {
                let refs: Vec<&Value> = kind.iter().collect();
                harness::mutate_json(rng, &mut v, &refs, JSON_TOKENS);
                case.bytes = serde_json::to_vec(&v).unwrap();
            }
            _ => {
                let text = String::from_utf8_lossy(&case.bytes).into_owned();
                case.bytes = harness::mutate_text(rng, &[], JSON_TOKENS, &text).into_bytes();
            }
        },
        None => match split_safetensors(&case.bytes) {
            Some((mut header, data)) if rng.below(5) < 3 => {
                let refs: Vec<&Value> = donors.headers.iter().collect();
                harness::mutate_json(rng, &mut header, &refs, JSON_TOKENS);
                let header = serde_json::to_vec(&header).unwrap();
                let mut len = header.len() as u64;
                if rng.chance(10) {
                    len = [0, 1, len - 1, len + 1, u64::MAX, 100_000_001][rng.below(6)];
                }
                let mut out = len.to_le_bytes().to_vec();
                out.extend_from_slice(&header);
                out.extend_from_slice(data);
                case.bytes = out;
            }
            _ => case.bytes = harness::mutate_bytes(rng, &[], &case.bytes),
        },
    }
    case
}

/// A scratch copy of every base, with the file under test swapped in and restored after the run.
struct Scratch {
    _dir: tempfile::TempDir,
    bases: Vec<PathBuf>,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut bases = Vec::new();
        for (i, base) in BASES.iter().enumerate() {
            let to = dir.path().join(format!("base{i}"));
            std::fs::create_dir(&to).unwrap();
            for entry in std::fs::read_dir(harness::fixtures().join(base)).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
            bases.push(to);
        }
        Self { _dir: dir, bases }
    }
}

/// Every tensor read, then the model built and run for a few tokens; `Ok(true)` when the model loaded.
fn exercise(dir: &Path) -> bool {
    if let Ok(ck) = Checkpoint::open(dir) {
        let names: Vec<String> = ck.names().map(str::to_string).collect();
        let _ = ck.bytes_as(DType::F32);
        for name in &names {
            let _ = ck.info(name);
            let _ = ck.load(name, DType::F32, &Device::Cpu);
        }
    }
    let Ok(model) = VlmModel::load(dir, &LoadOptions::default()) else {
        return false;
    };
    let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    let inputs = ModelInputs {
        input_ids: Some(ids),
        ..Default::default()
    };
    let mut cache = DecodeModel::new_cache(&model);
    if DecodeModel::forward_last(&model, &inputs, &mut cache).is_ok() {
        let _ = DecodeModel::decode_step(&model, &[4], &mut cache);
    }
    true
}

fn run_one(case: &Case, scratch: &Scratch) -> Result<bool, String> {
    let dir = &scratch.bases[case.base];
    let path = dir.join(&case.file);
    let original = std::fs::read(harness::fixtures().join(BASES[case.base]).join(&case.file))
        .map_err(|e| format!("{}: {e}", case.file))?;
    std::fs::write(&path, &case.bytes).unwrap();
    let loaded = std::panic::catch_unwind(|| exercise(dir));
    std::fs::write(&path, original).unwrap();
    match loaded {
        Ok(loaded) => Ok(loaded),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[test]
fn fuzz_checkpoint_loading() {
    let seeds = seeds();
    let scratch = Scratch::new();
    let of_kind = |pred: &dyn Fn(&str) -> bool| -> Vec<Value> {
        seeds
            .iter()
            .filter(|(_, c)| pred(&c.file))
            .filter_map(|(_, c)| serde_json::from_slice(&c.bytes).ok())
            .collect()
    };
    let donors = Donors {
        configs: of_kind(&|f| f == "config.json"),
        indexes: of_kind(&|f| f.ends_with(".index.json")),
        headers: seeds
            .iter()
            .filter(|(_, c)| c.file.ends_with(".safetensors"))
            .filter_map(|(_, c)| split_safetensors(&c.bytes).map(|(h, _)| h))
            .collect(),
    };
    assert!(donors.configs.len() >= BASES.len() && !donors.indexes.is_empty());
    let settings = harness::Settings {
        name: "checkpoint",
        bounded_execs: 600,
        hang: Duration::from_secs(2),
        max_extra_bytes: 256 << 20,
        default_seed: 0x5AFE_7E45,
    };
    let stats = harness::fuzz(
        &settings,
        &seeds,
        |rng, parent| mutate(rng, parent, &donors),
        |case| run_one(case, &scratch),
        to_bytes,
    );
    // Every seed is a loadable checkpoint.
    assert!(stats.accepted >= BASES.len() as u64, "{stats:?}");
}
