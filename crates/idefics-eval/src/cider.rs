//! CIDEr-D for captioning, ported from the COCO caption evaluation code (tylin/coco-caption, packaged as
//! salaniz/pycocoevalcap, `cider/cider_scorer.py`), n = 4, sigma = 6.
//!
//! Input: already tokenised captions (space-separated tokens; see [`crate::ptb`] for the tokeniser).
//! Per image: each caption becomes tf-idf vectors of its 1..4-grams, with document frequencies counted over
//! the *references of the scored corpus* (one count per image) and `idf = log(#images) - log(max(1, df))`.
//! For each reference, per n: `sum_g min(hyp_g, ref_g) * ref_g / (|hyp| |ref|)` (the "D" clipping),
//! times the Gaussian length penalty `exp(-(l_hyp - l_ref)^2 / (2 sigma^2))`; mean over n, mean over
//! references, times 10. The corpus score is the mean over images.
//! Quirk kept: the "length" in the penalty is the number of *bigrams* (the official code counts term
//! frequencies where `n == 1` with n the 0-based n-gram order), i.e. words - 1, or 0 for a one-word caption.
//! Because document frequencies come from the scored corpus, a per-image score depends on the other images.

use std::collections::{HashMap, HashSet};

use crate::pytext::py_split;

/// The official defaults.
pub const CIDER_N: usize = 4;
pub const CIDER_SIGMA: f64 = 6.0;

/// n-gram counts of one caption, in first-occurrence order (as the Python dict iterates them).
struct NgramCounts<'a> {
    order: Vec<&'a [&'a str]>,
    counts: HashMap<&'a [&'a str], f64>,
}

fn precook<'a>(words: &'a [&'a str], n: usize) -> NgramCounts<'a> {
    let mut order = Vec::new();
    let mut counts: HashMap<&[&str], f64> = HashMap::new();
    for k in 1..=n {
        for gram in words.windows(k) {
            let entry = counts.entry(gram).or_insert_with(|| {
                order.push(gram);
                0.0
            });
            *entry += 1.0;
        }
    }
    NgramCounts { order, counts }
}

/// tf-idf vector per n-gram order, the vector norms, and the (bigram) length.
struct TfIdf<'a> {
    vec: Vec<HashMap<&'a [&'a str], f64>>,
    order: Vec<Vec<&'a [&'a str]>>,
    norm: Vec<f64>,
    length: f64,
}

/// `counts2vec`: tf-idf weights per n-gram order, their norms, and the bigram "length".
fn to_tfidf<'a>(
    counts: &NgramCounts<'a>,
    document_frequency: &HashMap<&[&str], f64>,
    ref_len: f64,
    n: usize,
) -> TfIdf<'a> {
    let mut vec = vec![HashMap::new(); n];
    let mut order = vec![Vec::new(); n];
    let mut norm = vec![0.0; n];
    let mut length = 0.0;
    for &gram in &counts.order {
        let term_freq = counts.counts.get(gram).copied().unwrap_or(0.0);
        // Unseen n-grams get df 1, i.e. idf = log(#images).
        let df = document_frequency
            .get(gram)
            .copied()
            .unwrap_or(0.0)
            .max(1.0)
            .ln();
        let k = gram.len() - 1;
        let value = term_freq * (ref_len - df);
        vec[k].insert(gram, value);
        order[k].push(gram);
        norm[k] += value * value;
        if k == 1 {
            length += term_freq;
        }
    }
    for v in &mut norm {
        *v = v.sqrt();
    }
    TfIdf {
        vec,
        order,
        norm,
        length,
    }
}

/// The CIDEr-D scores of a corpus: `(mean, per-image scores)`.
///
/// `candidates[i]` is the tokenised caption of image i, `references[i]` its tokenised references.
/// Returns `None` when the lengths differ or an image has no reference (the official code asserts).
pub fn cider_d(candidates: &[String], references: &[Vec<String>]) -> Option<(f64, Vec<f64>)> {
    cider_d_with(candidates, references, CIDER_N, CIDER_SIGMA)
}

/// [`cider_d`] with explicit n and sigma.
pub fn cider_d_with(
    candidates: &[String],
    references: &[Vec<String>],
    n: usize,
    sigma: f64,
) -> Option<(f64, Vec<f64>)> {
    if candidates.len() != references.len() || references.iter().any(Vec::is_empty) || n == 0 {
        return None;
    }
    if candidates.is_empty() {
        return Some((f64::NAN, Vec::new()));
    }
    let cand_words: Vec<Vec<&str>> = candidates.iter().map(|c| py_split(c).collect()).collect();
    let ref_words: Vec<Vec<Vec<&str>>> = references
        .iter()
        .map(|refs| refs.iter().map(|r| py_split(r).collect()).collect())
        .collect();
    let cand_counts: Vec<NgramCounts> = cand_words.iter().map(|w| precook(w, n)).collect();
    let ref_counts: Vec<Vec<NgramCounts>> = ref_words
        .iter()
        .map(|refs| refs.iter().map(|w| precook(w, n)).collect())
        .collect();

    // Document frequency: in how many images' reference sets each n-gram occurs.
    let mut document_frequency: HashMap<&[&str], f64> = HashMap::new();
    for refs in &ref_counts {
        let mut seen: HashSet<&[&str]> = HashSet::new();
        for r in refs {
            seen.extend(r.order.iter().copied());
        }
        for gram in seen {
            *document_frequency.entry(gram).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (references.len() as f64).ln();

    let sim = |hyp: &TfIdf<'_>, reference: &TfIdf<'_>| -> Vec<f64> {
        let delta = hyp.length - reference.length;
        (0..n)
            .map(|k| {
                let mut val = 0.0;
                for gram in &hyp.order[k] {
                    let h = hyp.vec[k].get(gram).copied().unwrap_or(0.0);
                    let r = reference.vec[k].get(gram).copied().unwrap_or(0.0);
                    val += h.min(r) * r;
                }
                if hyp.norm[k] != 0.0 && reference.norm[k] != 0.0 {
                    val /= hyp.norm[k] * reference.norm[k];
                }
                val * std::f64::consts::E.powf(-(delta * delta) / (2.0 * sigma * sigma))
            })
            .collect()
    };

    let scores: Vec<f64> = cand_counts
        .iter()
        .zip(&ref_counts)
        .map(|(cand, refs)| {
            let hyp = to_tfidf(cand, &document_frequency, ref_len, n);
            let mut score = vec![0.0; n];
            for r in refs {
                for (s, v) in score
                    .iter_mut()
                    .zip(sim(&hyp, &to_tfidf(r, &document_frequency, ref_len, n)))
                {
                    *s += v;
                }
            }
            let mean_over_n = score.iter().sum::<f64>() / n as f64;
            mean_over_n / refs.len() as f64 * 10.0
        })
        .collect();
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    Some((mean, scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn identical_caption_beats_unrelated_and_corpus_matters() {
        let references = refs(&[
            &["a cat on a mat", "a cat sitting on a mat"],
            &["two dogs play in the park"],
        ]);
        let (_, good) = cider_d(
            &["a cat on a mat".into(), "two dogs play in the park".into()],
            &references,
        )
        .unwrap();
        let (_, bad) = cider_d(
            &["red car parked".into(), "two dogs play in the park".into()],
            &references,
        )
        .unwrap();
        assert!(good[0] > 1.0 && bad[0] == 0.0, "{good:?} {bad:?}");
    }

    #[test]
    fn single_image_corpus_scores_zero() {
        // idf = log(1) - log(1) = 0 for every reference n-gram: all vectors vanish.
        let (mean, _) = cider_d(&["a cat".into()], &refs(&[&["a cat"]])).unwrap();
        assert_eq!(mean, 0.0);
    }

    #[test]
    fn mismatched_input_is_rejected() {
        assert!(cider_d(&["a".into()], &[]).is_none());
        assert!(cider_d(&["a".into()], &[vec![]]).is_none());
    }
}
