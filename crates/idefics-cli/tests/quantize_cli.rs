//! `--quant` and `idefics quantize` as a user runs them on the bundled model: the quantized model answers the
//! README's question as the f32 model does, a saved quantized model loads from its directory, and bad input is
//! one clear line.

mod common;

use common::{idefics, idefics_ok_in, root};

const IMAGE: &str = "examples/images/basics_0000_0.png";
const QUESTION: &str = "What colour is the image? Answer with a single word or number.";

fn ask(extra: &[&str]) -> String {
    let mut args = vec!["ask", "--image", IMAGE];
    args.extend_from_slice(extra);
    args.push(QUESTION);
    let out = idefics_ok_in(&root(), &args);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn quantized_models_answer_like_the_f32_model() {
    let dense = ask(&[]);
    assert!(!dense.is_empty());
    for q in ["q8_0", "q5_0", "q6k", "q4k", "bf16"] {
        assert_eq!(ask(&["--quant", q]), dense, "--quant {q}");
    }
    // Vision tower and connector quantized too.
    assert_eq!(ask(&["--quant", "q8_0", "--quant-vision"]), dense);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4k");
    let out_s = out.to_str().unwrap();
    let saved = idefics_ok_in(&root(), &["quantize", "--quant", "q4k", "--out", out_s]);
    let log = String::from_utf8_lossy(&saved.stderr);
    assert!(
        log.contains("30 tensors quantized (29 q4k, 1 q6k)"),
        "{log}"
    );
    assert_eq!(ask(&["--model", out_s]), ask(&["--quant", "q4k"]));

    // Saving twice into one directory, or loading it as another type, is refused.
    let again = idefics(&["quantize", "--quant", "q4k", "--out", out_s]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a model.gguf"));
    let other = idefics(&["ask", "--model", out_s, "--quant", "q8_0", QUESTION]);
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && err.contains("quantized as q4k"),
        "{err}"
    );
}

#[test]
fn bad_quant_arguments_are_one_clear_error() {
    let out = idefics(&["ask", "--quant", "q3k", QUESTION]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("expected q8_0, q5_0, q4k, q6k or bf16"),
        "{err}"
    );
    let out = idefics(&["ask", "--quant-vision", QUESTION]);
    assert!(!out.status.success(), "--quant-vision needs --quant");
    let out = idefics(&["quantize", "--out", "/tmp/never-written"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--quant is required"),
        "{err}"
    );
}
