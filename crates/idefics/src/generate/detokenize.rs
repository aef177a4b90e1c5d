//! Turning a growing list of token ids into text deltas for streaming.

use tokenizers::Tokenizer;

/// Decodes tokens incrementally so that the deltas always add up to what a one-shot `decode` of all the tokens
/// gives (what transformers' `batch_decode` returns).
///
/// Each push decodes the whole answer again: answers are short (hundreds of tokens), decoding is microseconds,
/// and a windowed decode cannot stay consistent with byte-fallback tokens. A run of byte tokens (`<0x5E>`) is
/// held back until it ends, because the ByteFallback decoder turns the whole run into replacement characters when
/// any byte of it is invalid UTF-8 (a valid '^' followed by a stray 0x94 decodes as two U+FFFD).
/// Byte-level BPE tokenizers (GPT-2 style, as SmolVLM's) spell a multi-byte character across tokens without
/// marking them: a decode that ends inside a character ends with U+FFFD, which the next token may turn into the
/// character, so trailing U+FFFD are held back until a later token or the end of the answer.
pub struct IncrementalDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> IncrementalDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds one token; returns the new text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, tokenizers::Error> {
        self.ids.push(id);
        if is_byte_token(self.tokenizer.id_to_token(id).as_deref()) {
            return Ok(String::new());
        }
        let full = self.tokenizer.decode(&self.ids, true)?;
        Ok(self.release(full.trim_end_matches(char::REPLACEMENT_CHARACTER)))
    }

    /// Releases whatever is held back (the answer is complete).
    pub fn finish(&mut self) -> Result<String, tokenizers::Error> {
        let full = self.tokenizer.decode(&self.ids, true)?;
        Ok(self.release(&full))
    }

    fn release(&mut self, full: &str) -> String {
        // Earlier text can only change when a held-back replacement character resolved differently; what was
        // shown stays shown and we continue from the new end.
        let delta = if full.len() >= self.emitted && full.is_char_boundary(self.emitted) {
            full[self.emitted..].to_string()
        } else {
            String::new()
        };
        self.emitted = full.len();
        delta
    }
}

/// Byte-fallback tokens are spelled `<0xHH>`.
fn is_byte_token(token: Option<&str>) -> bool {
    token.is_some_and(|t| t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-level BPE tokenizer of tests/fixtures/idefics3/processor (GPT-2 style, as SmolVLM's): ids 143 and
    /// 157 are the single bytes 0xDE and 0xA1, which together spell U+07A1. The streamed deltas must add up to
    /// the one-shot decode, which transformers returns.
    #[test]
    fn character_split_across_byte_level_tokens_is_not_lost() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/idefics3/processor/tokenizer/tokenizer.json");
        let tokenizer = Tokenizer::from_file(path).unwrap();
        let ids = [143u32, 157, 97, 157];
        let mut decoder = IncrementalDecoder::new(&tokenizer);
        let mut streamed = String::new();
        for &id in &ids {
            streamed += &decoder.push(id).unwrap();
        }
        streamed += &decoder.finish().unwrap();
        let whole = tokenizer.decode(&ids, true).unwrap();
        assert!(whole.contains('\u{7a1}'), "{whole:?}");
        assert!(whole.ends_with(char::REPLACEMENT_CHARACTER), "{whole:?}");
        assert_eq!(streamed, whole);
    }
}
