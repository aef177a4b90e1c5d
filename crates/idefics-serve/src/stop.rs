//! Stop strings matched across token boundaries, trimmed from the output.
//!
//! A stop string may arrive split over several decoded pieces ("<ST" + "OP>"), so text that could still turn
//! into a stop string is held back until the next piece decides it; the stop string itself and everything after
//! it are never sent (OpenAI semantics; mlx-vlm#1069 is the bug this avoids). Streaming and non-streaming
//! responses share this path, so their final text is identical.

/// Incremental matcher for up to a few stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released (a possible stop-string prefix).
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// `stops` must be non-empty strings (checked at request validation).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    /// Feed one decoded piece; returns the text that is safe to release and whether a stop string matched
    /// (in which case nothing after it is ever released).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = earliest {
            self.stopped = true;
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        let keep = self.held_back_len();
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Release what is still held back (generation ended without a stop string).
    pub fn flush(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn held_back_len(&self) -> usize {
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let p = &self.pending;
        // Walk suffixes from longest to shortest, on char boundaries only.
        for (start, _) in p.char_indices() {
            let suffix = &p[start..];
            if suffix.len() >= longest_stop {
                continue;
            }
            if self
                .stops
                .iter()
                .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            {
                return suffix.len();
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_trimmed() {
        assert_eq!(
            run(&["<STOP>"], &["hello <S", "TO", "P> tail"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn false_prefix_is_released_later() {
        assert_eq!(
            run(&["<STOP>"], &["a <ST", "x b"]),
            ("a <STx b".into(), false)
        );
        // Held back at the end, released by flush.
        assert_eq!(run(&["<STOP>"], &["a <ST"]), ("a <ST".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(
            run(&["world", "lo w"], &["hel", "lo world"]),
            ("hel".into(), true)
        );
    }

    #[test]
    fn multibyte_text_is_split_on_char_boundaries() {
        assert_eq!(run(&["é!"], &["café", "é", "!x"]), ("café".into(), true));
        assert_eq!(
            run(&["日本"], &["今日は日", "曜"]),
            ("今日は日曜".into(), false)
        );
    }

    #[test]
    fn nothing_is_held_back_without_a_possible_prefix() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc"), ("abc".into(), false));
        assert_eq!(m.push("xE"), ("x".into(), false));
        assert_eq!(m.push("N"), ("".into(), false));
        assert_eq!(m.push("D and more"), ("".into(), true));
        assert_eq!(m.flush(), "");
    }
}
