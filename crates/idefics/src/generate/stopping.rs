//! Stop strings honoured across token boundaries, and streaming that never shows a stop string's beginning.

/// Watches the generated text for user stop strings.
///
/// Text is released only when it can no longer turn into a stop string: a suffix that is a prefix of some stop
/// string is held back until the next token decides it. The stop string itself is never released (it is trimmed,
/// as OpenAI's API and transformers' `stop_strings` do). When several stop strings complete in the same text,
/// the one that ends first wins.
///
/// Matching is incremental (one Knuth-Morris-Pratt automaton per stop string, fed each new byte once), so the
/// cost of a token is proportional to its own length, whatever the length of the stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<Matcher>,
    text: String,
    released: usize,
    stopped: bool,
}

/// A stop string's failure table and how much of it the text currently ends with.
#[derive(Debug, Clone)]
struct Matcher {
    pattern: Vec<u8>,
    /// `fail[i]`: length of the longest proper border of `pattern[..=i]`.
    fail: Vec<usize>,
    /// Length of the longest suffix of the text that is a prefix of `pattern` (always < its length).
    state: usize,
}

impl Matcher {
    fn new(pattern: &str) -> Self {
        let p = pattern.as_bytes().to_vec();
        let mut fail = vec![0; p.len()];
        let mut k = 0;
        for i in 1..p.len() {
            while k > 0 && p[i] != p[k] {
                k = fail[k - 1];
            }
            if p[i] == p[k] {
                k += 1;
            }
            fail[i] = k;
        }
        Self {
            pattern: p,
            fail,
            state: 0,
        }
    }

    /// Feeds one byte; true when the whole pattern now ends the text.
    fn step(&mut self, b: u8) -> bool {
        let mut k = self.state;
        while k > 0 && self.pattern[k] != b {
            k = self.fail[k - 1];
        }
        if self.pattern[k] == b {
            k += 1;
        }
        if k == self.pattern.len() {
            // Keep the automaton valid (not needed after a stop, but cheap).
            self.state = self.fail[k - 1];
            return true;
        }
        self.state = k;
        false
    }
}

impl StopStrings {
    /// Empty stop strings are ignored (they would stop before the first token).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        let stops = stops
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| Matcher::new(&s))
            .collect();
        Self {
            stops,
            ..Default::default()
        }
    }

    /// Appends newly decoded text; returns the text that can be shown now and whether a stop string was reached.
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        let base = self.text.len();
        self.text.push_str(delta);
        for (offset, &b) in delta.as_bytes().iter().enumerate() {
            let end = base + offset + 1;
            let mut matched_start = None;
            for m in &mut self.stops {
                if m.step(b) {
                    let start = end - m.pattern.len();
                    matched_start = Some(matched_start.map_or(start, |s: usize| s.min(start)));
                }
            }
            if let Some(start) = matched_start {
                self.text.truncate(start);
                self.stopped = true;
                return (self.release_up_to(start), true);
            }
        }
        let safe_end = self.text.len() - self.held_back_len();
        (self.release_up_to(safe_end), false)
    }

    /// Releases whatever was held back (generation ended for another reason).
    pub fn finish(&mut self) -> String {
        self.release_up_to(self.text.len())
    }

    /// The whole text so far, cut before the stop string if one was reached.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn release_up_to(&mut self, end: usize) -> String {
        let start = self.released.min(end);
        self.released = end.max(self.released);
        self.text[start..end].to_string()
    }

    /// Length of the longest suffix of the text that is a proper prefix of a stop string: the automata's states.
    /// Such a suffix starts where a stop string starts, so on a character boundary.
    fn held_back_len(&self) -> usize {
        self.stops.iter().map(|m| m.state).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (Vec<String>, String, bool) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()));
        let mut out = Vec::new();
        let mut stopped = false;
        for d in deltas {
            let (text, stop) = s.push(d);
            out.push(text);
            if stop {
                stopped = true;
                break;
            }
        }
        if !stopped {
            out.push(s.finish());
        }
        (out, s.text().to_string(), stopped)
    }

    #[test]
    fn stop_string_split_across_tokens_is_trimmed_and_never_shown() {
        let (out, text, stopped) = run(&["END"], &["Hello E", "N", "D more"]);
        assert!(stopped);
        assert_eq!(text, "Hello ");
        assert_eq!(out.concat(), "Hello ");
        assert_eq!(out[0], "Hello ", "the 'E' must be held back");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_diverges() {
        let (out, text, stopped) = run(&["END"], &["a E", "x", "!"]);
        assert!(!stopped);
        assert_eq!(text, "a Ex!");
        assert_eq!(out.concat(), "a Ex!");
        assert_eq!(out[0], "a ");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_unicode_is_safe() {
        let (_, text, stopped) = run(&["ü!", "xyz"], &["aaxyz ü!"]);
        assert!(stopped);
        assert_eq!(text, "aa");
        let (out, text, _) = run(&["éé"], &["é", "a"]);
        assert_eq!(text, "éa");
        assert_eq!(out.concat(), "éa");
    }

    #[test]
    fn no_stops_streams_everything() {
        let (out, text, stopped) = run(&[], &["a", "b"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a", "b", ""]);
        assert_eq!(text, "ab");
    }

    // The server's streaming cases (moved here when the server started using this matcher).
    fn run_concat(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopStrings::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_trimmed() {
        assert_eq!(
            run_concat(&["<STOP>"], &["hello <S", "TO", "P> tail"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn false_prefix_is_released_later() {
        assert_eq!(
            run_concat(&["<STOP>"], &["a <ST", "x b"]),
            ("a <STx b".into(), false)
        );
        // Held back at the end, released by flush.
        assert_eq!(run_concat(&["<STOP>"], &["a <ST"]), ("a <ST".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(
            run_concat(&["world", "lo w"], &["hel", "lo world"]),
            ("hel".into(), true)
        );
    }

    #[test]
    fn multibyte_text_is_split_on_char_boundaries() {
        assert_eq!(
            run_concat(&["é!"], &["café", "é", "!x"]),
            ("café".into(), true)
        );
        assert_eq!(
            run_concat(&["日本"], &["今日は日", "曜"]),
            ("今日は日曜".into(), false)
        );
    }

    #[test]
    fn cost_does_not_grow_with_the_stop_length() {
        // Four 1 MiB stop strings that the text keeps almost matching: the old matcher rescanned every prefix of
        // every stop string on each token (minutes here); the automata take one step per new byte.
        let long: Vec<String> = (0..4)
            .map(|i| format!("{}{}", "a".repeat(1 << 20), i))
            .collect();
        let mut m = StopStrings::new(long);
        let started = std::time::Instant::now();
        let mut shown = String::new();
        for _ in 0..20_000 {
            let (out, hit) = m.push("a");
            shown.push_str(&out);
            assert!(!hit);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        // Everything is a prefix of the stops: all of it is held back until decided.
        assert_eq!(shown, "");
        let (out, hit) = m.push("x");
        assert!(!hit);
        assert_eq!(out.len(), 20_001);
        // Overlapping prefixes: "aab" after "aa" must still be found (failure links).
        assert_eq!(
            run_concat(&["aab"], &["xaa", "aab tail"]),
            ("xaa".into(), true)
        );
    }

    #[test]
    fn nothing_is_held_back_without_a_possible_prefix() {
        let mut m = StopStrings::new(vec!["END".to_string()]);
        assert_eq!(m.push("abc"), ("abc".into(), false));
        assert_eq!(m.push("xE"), ("x".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("D and more"), ("".into(), true));
        assert_eq!(m.finish(), "");
    }
}
