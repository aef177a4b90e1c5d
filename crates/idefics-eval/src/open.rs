//! MMMU-style scoring of open (free-form) answers, ported from MMMU-Benchmark/MMMU
//! `mmmu/utils/eval_utils.py` (`parse_open_response`, `normalize_str`, `extract_numbers`, `eval_open`).
//! m4 (the Idefics2 evaluation code) scores MMMU open questions and MathVista this way.
//!
//! The response is cut into "key" sub-responses (the text after the last indicator word such as `is `,
//! `so `, `answer `, or `=` in the last line, the shortest one per line), numbers are extracted from them
//! with MMMU's three regular expressions, and each candidate is normalised (numbers -> float rounded to
//! 2 decimals, text -> lowercase). The answer is right when a text gold answer is a substring of a text
//! candidate, or a numeric gold answer equals a numeric candidate.
//! Quirks kept: the response is lowercased *before* the sentence split `\.\s(?=[A-Z])|\n`, so only
//! newlines split; an empty first candidate is replaced by the next indicator's even if longer; one-letter
//! text answers are padded with a space on either side. Known gap: `\d` is ASCII here (Python's is Unicode).

use crate::pytext::{py_float, py_strip};

/// A normalised candidate or gold answer.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenValue {
    Number(f64),
    Text(String),
}

/// `normalize_str`: a number (commas removed, rounded to 2 decimals) or lowercase text (a one-character
/// text becomes `" x"` and `"x "` to avoid trivial substring matches).
pub fn normalize_str(s: &str) -> Vec<OpenValue> {
    let s = py_strip(s);
    if let Some(v) = py_float(&s.replace(',', "")) {
        return vec![OpenValue::Number(py_round2(v))];
    }
    let lower = s.to_lowercase();
    if lower.chars().count() == 1 {
        vec![
            OpenValue::Text(format!(" {lower}")),
            OpenValue::Text(format!("{lower} ")),
        ]
    } else {
        vec![OpenValue::Text(lower)]
    }
}

/// Python's `round(v, 2)`: correctly rounded through the shortest decimal that rounds to the exact value
/// (ties to even on the exact binary value, as CPython's `round` does).
fn py_round2(v: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    // Rust's `{:.2}` rounds the exact binary value half-to-even, like CPython's float rounding.
    format!("{v:.2}").parse().unwrap_or(v)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Digits from `i`: the end index of the run.
fn digits_end(c: &[char], i: usize) -> usize {
    let mut j = i;
    while j < c.len() && c[j].is_ascii_digit() {
        j += 1;
    }
    j
}

/// `-?\b\d{1,3}(?:,\d{3})+\b` at `start`; returns the end.
fn match_commas(c: &[char], start: usize) -> Option<usize> {
    let body = if c.get(start) == Some(&'-') {
        start + 1
    } else {
        start
    };
    // \b before a digit: the previous character is not a word character.
    if !c.get(body).is_some_and(char::is_ascii_digit) || (body > 0 && is_word(c[body - 1])) {
        return None;
    }
    let run = digits_end(c, body) - body;
    for lead in (1..=run.min(3)).rev() {
        // Greedy groups, then fewer.
        let mut ends = Vec::new();
        let mut j = body + lead;
        while c.get(j) == Some(&',')
            && (1..=3).all(|k| c.get(j + k).is_some_and(char::is_ascii_digit))
        {
            j += 4;
            ends.push(j);
        }
        for &end in ends.iter().rev() {
            if c.get(end).is_none_or(|&n| !is_word(n)) {
                return Some(end);
            }
        }
    }
    None
}

/// `-?\d+(?:\.\d+)?[eE][+-]?\d+` at `start`.
fn match_scientific(c: &[char], start: usize) -> Option<usize> {
    let body = if c.get(start) == Some(&'-') {
        start + 1
    } else {
        start
    };
    let int_end = digits_end(c, body);
    if int_end == body {
        return None;
    }
    let mut mantissa_ends = Vec::new();
    if c.get(int_end) == Some(&'.') {
        let frac_end = digits_end(c, int_end + 1);
        if frac_end > int_end + 1 {
            mantissa_ends.push(frac_end);
        }
    }
    mantissa_ends.push(int_end);
    mantissa_ends.into_iter().find_map(|m| exponent_end(c, m))
}

/// `[eE][+-]?\d+` at `i`: its end.
fn exponent_end(c: &[char], i: usize) -> Option<usize> {
    if !matches!(c.get(i), Some('e' | 'E')) {
        return None;
    }
    let mut j = i + 1;
    if matches!(c.get(j), Some('+' | '-')) && c.get(j + 1).is_some_and(char::is_ascii_digit) {
        j += 1;
    }
    let end = digits_end(c, j);
    (end > j).then_some(end)
}

/// `-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])` at `start`.
fn match_simple(c: &[char], start: usize) -> Option<usize> {
    let body = if c.get(start) == Some(&'-') {
        start + 1
    } else {
        start
    };
    let lookaheads_ok =
        |end: usize| exponent_end(c, end).is_none() && !matches!(c.get(end), Some(',' | '0'..='9'));
    let int_end = digits_end(c, body);
    // \d+\.\d+
    if int_end > body && c.get(int_end) == Some(&'.') {
        let frac_end = digits_end(c, int_end + 1);
        if frac_end > int_end + 1 && lookaheads_ok(frac_end) {
            return Some(frac_end);
        }
    }
    // \.\d+
    if c.get(body) == Some(&'.') {
        let frac_end = digits_end(c, body + 1);
        if frac_end > body + 1 && lookaheads_ok(frac_end) {
            return Some(frac_end);
        }
    }
    // \d+\b (a shorter run would be followed by a digit: no boundary)
    if int_end > body && c.get(int_end).is_none_or(|&n| !is_word(n)) && lookaheads_ok(int_end) {
        return Some(int_end);
    }
    None
}

/// `re.findall` of one pattern: leftmost, non-overlapping matches.
fn find_all(c: &[char], matcher: fn(&[char], usize) -> Option<usize>) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match matcher(c, i) {
            Some(end) => {
                out.push(c[i..end].iter().collect());
                i = end;
            }
            None => i += 1,
        }
    }
    out
}

/// `extract_numbers`: numbers with thousands commas, then scientific, then simple ones.
pub fn extract_numbers(s: &str) -> Vec<String> {
    let c: Vec<char> = s.chars().collect();
    let mut all = find_all(&c, match_commas);
    all.extend(find_all(&c, match_scientific));
    all.extend(find_all(&c, match_simple));
    all
}

const INDICATORS: [&str; 8] = [
    "could be ",
    "so ",
    "is ",
    "thus ",
    "therefore ",
    "final ",
    "answer ",
    "result ",
];
const TRIVIAL: [&str; 7] = [":", ",", ".", "!", "?", ";", "'"];

/// `get_key_subresponses`.
fn key_subresponses(response: &str) -> Vec<String> {
    let response = py_strip(response).trim_matches('.').to_lowercase();
    let subs: Vec<&str> = response.split('\n').collect();
    let mut keys = Vec::new();
    for (index, resp) in subs.iter().enumerate() {
        let last = index + 1 == subs.len();
        let mut shortest: Option<String> = None;
        for indicator in INDICATORS.iter().copied().chain(last.then_some("=")) {
            if let Some(pos) = resp.rfind(indicator) {
                let tail = py_strip(&resp[pos + indicator.len()..]).to_string();
                // `if not shortest_key_response`: an empty string counts as "none yet".
                let replace = match &shortest {
                    None => true,
                    Some(s) if s.is_empty() => true,
                    Some(s) => tail.chars().count() < s.chars().count(),
                };
                if replace {
                    shortest = Some(tail);
                }
            }
        }
        if let Some(s) = shortest.filter(|s| !s.is_empty()) {
            if !TRIVIAL.contains(&py_strip(&s)) {
                keys.push(s);
            }
        }
    }
    if keys.is_empty() {
        vec![response]
    } else {
        keys
    }
}

/// `parse_open_response`: the normalised candidates of a free-form response (duplicates removed).
pub fn parse_open_response(response: &str) -> Vec<OpenValue> {
    let keys = key_subresponses(response);
    let mut raw: Vec<String> = keys.clone();
    for k in &keys {
        raw.extend(extract_numbers(k));
    }
    let mut out: Vec<OpenValue> = Vec::new();
    for v in raw.iter().flat_map(|r| normalize_str(r)) {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// `eval_open`: right when a text gold answer occurs in a text candidate or a numeric gold answer
/// equals a numeric candidate.
pub fn eval_open(gold: &[String], candidates: &[OpenValue]) -> bool {
    let gold: Vec<OpenValue> = gold.iter().flat_map(|g| normalize_str(g)).collect();
    candidates.iter().any(|cand| match cand {
        OpenValue::Text(p) => gold
            .iter()
            .any(|g| matches!(g, OpenValue::Text(t) if p.contains(t.as_str()))),
        OpenValue::Number(p) => gold
            .iter()
            .any(|g| matches!(g, OpenValue::Number(t) if t == p)),
    })
}

/// Score of one open question in [0, 1].
pub fn open_accuracy(response: &str, gold: &[String]) -> f64 {
    if eval_open(gold, &parse_open_response(response)) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_regex_quirks() {
        // The simple pattern also finds the last group of a comma number, and pieces of a scientific one
        // (outputs of the official `extract_numbers`).
        assert_eq!(extract_numbers("1,234 and 5"), ["1,234", "234", "5"]);
        assert_eq!(extract_numbers("x 123,456"), ["123,456", "456"]);
        assert_eq!(extract_numbers("-2.5e3 or 7"), ["-2.5e3", "-2", "3", "7"]);
        assert_eq!(extract_numbers("a12b"), Vec::<String>::new());
    }

    #[test]
    fn open_answers() {
        assert_eq!(
            open_accuracy("The answer is 3.14159", &["3.14".into()]),
            1.0
        );
        assert_eq!(
            open_accuracy("so the result is Paris.", &["paris".into()]),
            1.0
        );
        assert_eq!(open_accuracy("It is 12", &["13".into()]), 0.0);
    }
}
