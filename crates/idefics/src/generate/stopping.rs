//! Stop strings honoured across token boundaries, and streaming that never shows a stop string's beginning.

/// Watches the generated text for user stop strings.
///
/// Text is released only when it can no longer turn into a stop string: a suffix that is a prefix of some stop
/// string is held back until the next token decides it. The stop string itself is never released (it is trimmed,
/// as OpenAI's API and transformers' `stop_strings` do).
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    text: String,
    released: usize,
    stopped: bool,
}

impl StopStrings {
    /// Empty stop strings are ignored (they would stop before the first token).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
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
        // Only the tail can contain a new match: start early enough to catch a stop spanning the boundary.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut search_from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(search_from) {
            search_from -= 1;
        }
        self.text.push_str(delta);
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|p| p + search_from)
            })
            .min();
        if let Some(end) = earliest {
            self.text.truncate(end);
            self.stopped = true;
            return (self.release_up_to(end), true);
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

    /// Length of the longest suffix of the text that is a proper prefix of a stop string.
    fn held_back_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            for (len, _) in stop.char_indices().skip(1) {
                if len > best && self.text.ends_with(&stop[..len]) {
                    best = len;
                }
            }
        }
        best
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
    fn nothing_is_held_back_without_a_possible_prefix() {
        let mut m = StopStrings::new(vec!["END".to_string()]);
        assert_eq!(m.push("abc"), ("abc".into(), false));
        assert_eq!(m.push("xE"), ("x".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("D and more"), ("".into(), true));
        assert_eq!(m.finish(), "");
    }
}
