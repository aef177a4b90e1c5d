//! Helpers shared by the CLI tests: the repository root, the `idefics` binary run as a user runs it, and
//! readers of the JSON it writes.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `idefics ARGS` in the test's working directory (the crate folder).
pub fn idefics(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idefics"))
        .args(args)
        .output()
        .expect("run idefics")
}

/// Runs `idefics ARGS` in `dir` and asserts that it succeeded, showing its stderr when not.
pub fn idefics_ok_in(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_idefics"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run idefics");
    assert!(
        out.status.success(),
        "idefics {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `idefics ARGS` and asserts that it succeeded.
pub fn idefics_ok(args: &[&str]) -> Output {
    idefics_ok_in(Path::new("."), args)
}

/// Runs `idefics eval --task synth --no-split` on `data` into `out` in `dir`, with `extra` arguments (the
/// bundled model unless they name one), and asserts that it succeeded.
pub fn eval_synth_in(dir: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec![
        "eval",
        "--task",
        "synth",
        "--data",
        data,
        "--no-split",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    idefics_ok_in(dir, &args)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The records of a JSON-lines file.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
