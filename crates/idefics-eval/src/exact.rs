//! Exact match, for benchmarks with one short answer per question (e.g. GQA-style sets, or any JSONL task
//! that names this metric).
//!
//! Two normalisations, named explicitly in the predictions file so a score never depends on a hidden
//! default:
//! - [`ExactNormalization::None`]: `prediction == answer` on the raw strings, as pix2struct `metrics.py`
//!   (`exact_match` via `aggregate_metrics`, max over answers);
//! - [`ExactNormalization::Vqa`]: both sides through the official VQA answer normalisation
//!   ([`crate::vqa::normalize_answer`]: whitespace, punctuation, number words, articles, contractions) and
//!   then compared. This follows our reading of the Idefics2 evaluation code (huggingface/m4): exact
//!   match for questions with a single ground truth, with its replica of the official normalisation
//!   (`VQANormalizationGtVisionLab`) applied to prediction and answer alike. Not checked against m4 itself.
//! - [`ExactNormalization::Loose`]: our own, for the synthetic set (`idefics data synth`), whose answers are
//!   one word, number (`12.50`), name, yes/no or option letter: trim, lower-case, collapse whitespace and
//!   drop punctuation and quotes around the answer (`"Red."` = `red`). Not the VQA normalisation: it deletes
//!   articles, so the option letter `A` would normalise to nothing and match any empty answer.

use crate::vqa::normalize_answer;

/// How both strings are normalised before comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExactNormalization {
    /// Compare raw strings.
    None,
    /// Official VQA normalisation on both sides.
    #[default]
    Vqa,
    /// Trim, lower-case, collapse whitespace, strip surrounding punctuation and quotes.
    Loose,
}

/// The [`ExactNormalization::Loose`] form of an answer.
pub fn loose_normalize(s: &str) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    let joined = words.join(" ").to_lowercase();
    joined
        .trim_matches(|c: char| {
            (c.is_ascii_punctuation() && c != '$' && c != '%') || c.is_whitespace()
        })
        .to_string()
}

/// 1 if the prediction equals any answer after normalisation, else 0.
pub fn exact_match(prediction: &str, answers: &[String], how: ExactNormalization) -> f64 {
    let hit = match how {
        ExactNormalization::None => answers.iter().any(|a| a == prediction),
        ExactNormalization::Loose => {
            let pred = loose_normalize(prediction);
            answers.iter().any(|a| loose_normalize(a) == pred)
        }
        ExactNormalization::Vqa => {
            let pred = normalize_answer(prediction);
            answers.iter().any(|a| normalize_answer(a) == pred)
        }
    };
    if hit {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisations() {
        let gts = vec!["2".to_string()];
        assert_eq!(exact_match("Two.", &gts, ExactNormalization::Vqa), 1.0);
        assert_eq!(exact_match("Two.", &gts, ExactNormalization::None), 0.0);
        assert_eq!(exact_match("2", &gts, ExactNormalization::None), 1.0);
        let letter = vec!["A".to_string()];
        assert_eq!(exact_match(" a.", &letter, ExactNormalization::Loose), 1.0);
        assert_eq!(exact_match("", &letter, ExactNormalization::Loose), 0.0);
        assert_eq!(exact_match("B", &letter, ExactNormalization::Loose), 0.0);
        // The VQA normalisation drops the article-like letter: why synth answers need their own rule.
        assert_eq!(exact_match("", &letter, ExactNormalization::Vqa), 1.0);
        let money = vec!["12.50".to_string()];
        assert_eq!(
            exact_match("12.50.", &money, ExactNormalization::Loose),
            1.0
        );
        assert_eq!(exact_match("12.5", &money, ExactNormalization::Loose), 0.0);
        let name = vec!["Alice Smith".to_string()];
        assert_eq!(
            exact_match("\"alice  smith\"", &name, ExactNormalization::Loose),
            1.0
        );
    }
}
