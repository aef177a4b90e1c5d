//! Multiple-choice accuracy with MMMU's answer-letter extraction, ported from MMMU-Benchmark/MMMU
//! `mmmu/utils/eval_utils.py` `parse_multi_choice_response` (the parser MMMU's own evaluation, and the
//! MMMU/MMBench/AI2D tasks of several harnesses, use). We follow MMMU exactly, with one documented
//! difference: when no candidate is found MMMU picks a *random* letter (`random.choice`, seeded 42 at
//! import, so the pick depends on call order); we return `None`, which scores as wrong.
//!
//! The parser, step by step:
//! 1. strip `, . ! ? ; : '` from both ends, one character kind after the other (so `"B,."` keeps its
//!    comma: `.` is stripped after `,`), then pad with one space on each side;
//! 2. candidates: every letter written `(X)`; if none, every letter written ` X ` (space-delimited);
//! 3. if still none and the response has more than 5 words, every option whose text occurs in the
//!    response (case-insensitive) — "content" candidates;
//! 4. one candidate: it; several: the one whose last occurrence is rightmost (ties: first in option order).

/// Extract the chosen letter from a free-form response.
///
/// `options` are `(letter, option text)` pairs in presentation order, e.g. `("A", "a cat")`.
pub fn parse_multi_choice_response(response: &str, options: &[(String, String)]) -> Option<String> {
    let mut response = response;
    for c in [',', '.', '!', '?', ';', ':', '\''] {
        response = response.trim_matches(c);
    }
    let response = format!(" {response} ");

    let bracketed: Vec<&String> = options
        .iter()
        .map(|(letter, _)| letter)
        .filter(|letter| response.contains(&format!("({letter})")))
        .collect();
    let (candidates, pattern): (Vec<&String>, fn(&str) -> String) = if !bracketed.is_empty() {
        (bracketed, |l| format!("({l})"))
    } else {
        let spaced = options
            .iter()
            .map(|(letter, _)| letter)
            .filter(|letter| response.contains(&format!(" {letter} ")))
            .collect();
        (spaced, |l| format!(" {l} "))
    };
    if !candidates.is_empty() {
        return last_occurring(&response, candidates.into_iter().map(|l| (l, pattern(l))));
    }

    if crate::pytext::py_split(&response).count() > 5 {
        let lower = response.to_lowercase();
        let content: Vec<(&String, String)> = options
            .iter()
            .map(|(letter, text)| (letter, text.to_lowercase()))
            .filter(|(_, text)| lower.contains(text.as_str()))
            .collect();
        return last_occurring(&lower, content.into_iter());
    }
    None
}

/// The candidate whose `needle` occurs last in `haystack` (`np.argmax` of `rfind`: first on ties).
fn last_occurring<'a>(
    haystack: &str,
    candidates: impl Iterator<Item = (&'a String, String)>,
) -> Option<String> {
    let mut best: Option<(Option<usize>, &String)> = None;
    for (letter, needle) in candidates {
        let at = haystack.rfind(&needle);
        // `rfind` gives -1 for "absent", which loses to any found position: Option's order matches.
        if best.is_none_or(|(best_at, _)| at > best_at) {
            best = Some((at, letter));
        }
    }
    best.map(|(_, letter)| letter.clone())
}

/// Letters `A`, `B`, ... for `n` options, as MMMU/MMBench label them.
pub fn option_letters(n: usize) -> Vec<String> {
    (0..n)
        .map(
            |i| match u8::try_from(i).ok().and_then(|i| b'A'.checked_add(i)) {
                Some(c) if c <= b'Z' => (c as char).to_string(),
                _ => format!("({i})"),
            },
        )
        .collect()
}

/// `(letter, text)` pairs for a list of option texts.
pub fn lettered_options(choices: &[String]) -> Vec<(String, String)> {
    option_letters(choices.len())
        .into_iter()
        .zip(choices.iter().cloned())
        .collect()
}

/// Accuracy of one multiple-choice response: 1 if the extracted letter equals one of the gold letters.
pub fn multiple_choice_accuracy(response: &str, choices: &[String], gold: &[String]) -> f64 {
    match parse_multi_choice_response(response, &lettered_options(choices)) {
        Some(letter) if gold.contains(&letter) => 1.0,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Vec<(String, String)> {
        lettered_options(&[
            "a cat".into(),
            "a dog".into(),
            "a bird".into(),
            "a fish".into(),
        ])
    }

    fn parse(r: &str) -> Option<String> {
        parse_multi_choice_response(r, &opts())
    }

    #[test]
    fn letter_forms() {
        assert_eq!(parse("B").as_deref(), Some("B"));
        assert_eq!(parse("(C) a bird").as_deref(), Some("C"));
        assert_eq!(parse("B.").as_deref(), Some("B"));
        assert_eq!(parse("B:").as_deref(), Some("B"));
        assert_eq!(parse("The answer is D").as_deref(), Some("D"));
        // Bracketed letters win over spaced ones, the last bracketed one wins among them.
        assert_eq!(parse("A or (B), not (C)").as_deref(), Some("C"));
    }

    #[test]
    fn strip_order_quirk() {
        // `,` is stripped before `.`: "B,." loses the period but keeps the comma, so " B, " has no " B ".
        assert_eq!(parse("B,."), None);
        assert_eq!(parse("B.,").as_deref(), Some("B"));
    }

    #[test]
    fn content_match_needs_more_than_five_words() {
        assert_eq!(parse("it is a dog"), None);
        assert_eq!(parse("I think it is a dog").as_deref(), Some("B"));
    }
}
