//! Python `str` semantics the official scorers rely on, so that our ports agree with them on odd input.
//!
//! The scorers are Python: `str.split()` / `str.strip()` use Python's notion of whitespace (which, unlike
//! Rust's `char::is_whitespace`, includes the ASCII separators U+001C..U+001F), and `float(s)` accepts
//! surrounding whitespace, underscores between digits, `inf` and `nan`.

/// Python's `str.isspace()` for one character (`Py_UNICODE_ISSPACE`).
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()` (no argument).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.split()` (no argument): split on runs of whitespace, no empty pieces.
pub fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `float(s)` for a `str`, `None` where Python raises `ValueError`.
///
/// Accepts what CPython accepts: surrounding whitespace, a sign, `inf`/`infinity`/`nan` in any case, decimal
/// numerals with single underscores between digits (PEP 515), `1.`, `.5`, exponents. Known gap: CPython also
/// maps non-ASCII decimal digits (e.g. Arabic-Indic) to ASCII first; we reject them.
pub fn py_float(s: &str) -> Option<f64> {
    let t = py_strip(s);
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return t.to_ascii_lowercase().parse::<f64>().ok();
    }
    if !is_decimal_literal(body) {
        return None;
    }
    let cleaned: String = t.chars().filter(|&c| c != '_').collect();
    cleaned.parse::<f64>().ok()
}

/// `digits ('.' digits?)? | '.' digits`, then an optional exponent; digit groups may contain single
/// underscores between digits.
fn is_decimal_literal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_digits = digit_part(b, &mut i);
    let mut frac_digits = false;
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_digits = digit_part(b, &mut i);
    }
    if !int_digits && !frac_digits {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digit_part(b, &mut i) {
            return false;
        }
    }
    i == b.len()
}

/// Consume `digit ('_'? digit)*` at `*i`; false (and `*i` unchanged past a dangling `_`) when none.
fn digit_part(b: &[u8], i: &mut usize) -> bool {
    if !b.get(*i).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    *i += 1;
    loop {
        match (b.get(*i), b.get(*i + 1)) {
            (Some(d), _) if d.is_ascii_digit() => *i += 1,
            (Some(b'_'), Some(d)) if d.is_ascii_digit() => *i += 2,
            _ => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_accepts_what_python_accepts() {
        assert_eq!(py_float(" 12 "), Some(12.0));
        assert_eq!(py_float("1_000.5"), Some(1000.5));
        assert_eq!(py_float("-.5"), Some(-0.5));
        assert_eq!(py_float("5."), Some(5.0));
        assert_eq!(py_float("1e3"), Some(1000.0));
        assert_eq!(py_float("+INF"), Some(f64::INFINITY));
        assert!(py_float("nan").is_some_and(f64::is_nan));
    }

    #[test]
    fn float_rejects_what_python_rejects() {
        for s in [
            "", ".", "1__0", "_1", "1_", "1,000", "12%", "1e", "e5", "0x10", "1 2", "infinit",
        ] {
            assert_eq!(py_float(s), None, "{s:?}");
        }
    }

    #[test]
    fn whitespace_is_pythons() {
        assert_eq!(py_split("a\u{1f}b  c").collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(py_strip("\u{a0} x \t"), "x");
    }
}
