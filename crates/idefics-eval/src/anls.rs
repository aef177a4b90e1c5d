//! ANLS, Average Normalized Levenshtein Similarity (DocVQA, InfographicVQA, ST-VQA), threshold 0.5.
//!
//! The Robust Reading Competition scores these on its server; its script is not published as a
//! repository. We follow the public port of the RRC InfographicVQA script, the `anls` package
//! (shunk031/ANLS, `anls.metrics.score.anls_score`): prediction and each answer are normalised with
//! `" ".join(s.strip().lower().split())` (case-insensitive, whitespace runs collapsed), the normalised
//! Levenshtein distance is `lev / max(len)` over Unicode code points, a pair scores `1 - NL` when
//! `NL < threshold` and 0 otherwise (the denominator is the length of the *uppercased* strings, a
//! quirk of the RRC script) (so `NL == 0.5` scores 0), and the question scores the max over its
//! answers. [`AnlsNormalization::Pix2Struct`] is the variant in google-research/pix2struct `metrics.py`
//! (`anls_metric` with `normalize_fn=lower`: lowercase only, whitespace kept).

use crate::pytext::{py_split, py_strip};

/// The threshold the DocVQA / InfographicVQA benchmarks use.
pub const ANLS_THRESHOLD: f64 = 0.5;

/// How strings are normalised before the edit distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnlsNormalization {
    /// RRC / `anls` package: strip, lowercase, collapse whitespace.
    #[default]
    Rrc,
    /// pix2struct: lowercase only.
    Pix2Struct,
}

fn normalize(text: &str, how: AnlsNormalization) -> Vec<char> {
    match how {
        AnlsNormalization::Rrc => {
            let lower = py_strip(text).to_lowercase();
            py_split(&lower)
                .collect::<Vec<_>>()
                .join(" ")
                .chars()
                .collect()
        }
        AnlsNormalization::Pix2Struct => text.to_lowercase().chars().collect(),
    }
}

/// Levenshtein distance over characters (unit costs), two-row dynamic programme.
pub fn levenshtein(a: &[char], b: &[char]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Similarity of one prediction/answer pair: `1 - NL` if `NL < threshold`, else 0.
fn pair_score(pred: &[char], gt: &[char], threshold: f64, how: AnlsNormalization) -> f64 {
    let longest = match how {
        // The RRC port divides by `max(len(s1.upper()), len(s2.upper()))`: uppercasing can lengthen a
        // string (`ß` -> `SS`), so the denominator is the uppercased length.
        AnlsNormalization::Rrc => upper_len(pred).max(upper_len(gt)),
        AnlsNormalization::Pix2Struct => pred.len().max(gt.len()),
    };
    if longest == 0 {
        // Both empty: the `anls` package defines NL = 0 (pix2struct would divide by zero).
        return 1.0;
    }
    let nl = levenshtein(pred, gt) as f64 / longest as f64;
    if nl < threshold {
        1.0 - nl
    } else {
        0.0
    }
}

fn upper_len(s: &[char]) -> usize {
    s.iter().map(|c| c.to_uppercase().count()).sum()
}

/// ANLS of one question: the best pair score over its answers, in [0, 1]. No answers gives 0.
pub fn anls(prediction: &str, answers: &[String], threshold: f64, how: AnlsNormalization) -> f64 {
    let pred = normalize(prediction, how);
    answers
        .iter()
        .map(|gt| pair_score(&pred, &normalize(gt, how), threshold, how))
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn levenshtein_known_values() {
        assert_eq!(levenshtein(&chars("kitten"), &chars("sitting")), 3);
        assert_eq!(levenshtein(&chars(""), &chars("abc")), 3);
        assert_eq!(levenshtein(&chars("été"), &chars("ete")), 2);
    }

    #[test]
    fn threshold_is_strict() {
        let gts = vec!["ab".to_string()];
        // NL = 1/2 exactly: not below the threshold, so 0.
        assert_eq!(
            anls("ax", &gts, ANLS_THRESHOLD, AnlsNormalization::Rrc),
            0.0
        );
        let gts = vec!["abcd".to_string()];
        assert_eq!(
            anls("ABCx", &gts, ANLS_THRESHOLD, AnlsNormalization::Rrc),
            0.75
        );
    }

    #[test]
    fn whitespace_handling_differs_between_variants() {
        let gts = vec!["new  york".to_string()];
        assert_eq!(anls(" New York ", &gts, 0.5, AnlsNormalization::Rrc), 1.0);
        let p = anls(" New York ", &gts, 0.5, AnlsNormalization::Pix2Struct);
        assert!((p - (1.0 - 3.0 / 10.0)).abs() < 1e-12, "{p}");
    }
}
