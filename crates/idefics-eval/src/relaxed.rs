//! Relaxed accuracy (ChartQA, PlotQA-style), ported from google-research/pix2struct `metrics.py`
//! `relaxed_correctness`, the implementation the ChartQA numbers of pix2struct/MatCha/PaLI and most VLM
//! papers come from.
//!
//! Both strings go through Python's `float()` (a trailing `%` divides by 100). If the prediction parses and
//! the target parses to a *non-zero* number, the answer is right when `|pred - target| / |target| <= 0.05`.
//! Otherwise (either is not a number, or the target is 0) it is a case-insensitive exact string match.
//! Quirks kept: no stripping of the prediction other than what `float()` ignores, so `"12."` is a number
//! but `"12 "` vs target `"12"` works only numerically; `"1,000"` is not a number; a NaN never matches.

use crate::pytext::py_float;

/// The ChartQA tolerance.
pub const MAX_RELATIVE_CHANGE: f64 = 0.05;

/// pix2struct's `_to_float`: `float(text)`, or `float(text.rstrip('%')) / 100` when it ends with `%`.
fn to_float(text: &str) -> Option<f64> {
    match text.strip_suffix('%') {
        Some(_) => py_float(text.trim_end_matches('%')).map(|v| v / 100.0),
        None => py_float(text),
    }
}

/// Whether `prediction` is right for one `target`.
pub fn relaxed_correctness(target: &str, prediction: &str, max_relative_change: f64) -> bool {
    let prediction_float = to_float(prediction);
    let target_float = to_float(target);
    match (prediction_float, target_float) {
        // Python's `and target_float` is falsy for 0.0 (and -0.0); NaN is truthy.
        (Some(p), Some(t)) if t != 0.0 => (p - t).abs() / t.abs() <= max_relative_change,
        _ => prediction.to_lowercase() == target.to_lowercase(),
    }
}

/// Relaxed accuracy of one question: 1 if right for any of its targets (pix2struct takes the max).
pub fn relaxed_accuracy(prediction: &str, targets: &[String]) -> f64 {
    let right = targets
        .iter()
        .any(|t| relaxed_correctness(t, prediction, MAX_RELATIVE_CHANGE));
    if right {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_relative_to_the_target() {
        assert!(relaxed_correctness("100", "105", MAX_RELATIVE_CHANGE));
        assert!(!relaxed_correctness("100", "105.1", MAX_RELATIVE_CHANGE));
        assert!(relaxed_correctness("40%", "0.41", MAX_RELATIVE_CHANGE));
        assert!(!relaxed_correctness("40%", "41", MAX_RELATIVE_CHANGE));
    }

    #[test]
    fn zero_target_and_text_fall_back_to_string_match() {
        assert!(!relaxed_correctness("0", "0.0", MAX_RELATIVE_CHANGE));
        assert!(relaxed_correctness("0", "0", MAX_RELATIVE_CHANGE));
        assert!(relaxed_correctness("Yes", "yes", MAX_RELATIVE_CHANGE));
        assert!(!relaxed_correctness("1000", "1,000", MAX_RELATIVE_CHANGE));
    }
}
