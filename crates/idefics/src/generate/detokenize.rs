//! Turning a growing list of token ids into text deltas for streaming.

use tokenizers::Tokenizer;

/// Decodes tokens incrementally. Byte-fallback tokens can end in the middle of a UTF-8 character: such text is
/// held back until the character is complete. The delta is computed against a short window of previous tokens, so
/// tokenizers that add a leading space (Metaspace) or merge across tokens still give the right text.
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<'a> IncrementalDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, tokenizers::Error> {
        self.ids.push(id);
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], true)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// The whole decoded text of every token pushed so far.
    pub fn text(&self) -> Result<String, tokenizers::Error> {
        self.tokenizer.decode(&self.ids, true)
    }
}
