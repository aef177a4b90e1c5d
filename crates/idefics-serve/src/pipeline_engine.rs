//! The real engine: the Idefics2 pipeline (processor + model + generation loop) that `idefics ask` uses, behind
//! [`ChatEngine`].

use crate::engine::{
    BatchItem, ChatEngine, ChatPrompt, EngineError, EngineFinish, Flow, Generation, PromptTokens,
};
use idefics::generate::{FinishReason, GenerationRequest};
use idefics::pipeline::Pipeline;
use idefics::processor::{FamilyProcessor, PromptRow, PromptText, RgbImage};

/// Serves one loaded checkpoint.
pub struct PipelineEngine {
    pipeline: Pipeline,
    model_id: String,
    max_batch_size: usize,
    /// Upper bound on the text bytes one token stands for (see [`ChatEngine::max_bytes_per_token`]).
    max_bytes_per_token: Option<usize>,
}

impl PipelineEngine {
    pub fn new(pipeline: Pipeline, model_id: String, max_batch_size: usize) -> Self {
        // A token's text is at most its vocabulary string (SentencePiece's "▁" and byte-level BPE's "Ġ" are longer
        // than the space they stand for; byte-fallback "<0x41>" is 6 bytes for 1); the factor 4 covers
        // normalizers that shrink text (NFKC maps some 3-byte characters to 1 byte).
        let longest = pipeline
            .processor
            .tokenizer()
            .inner()
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max();
        Self {
            pipeline,
            model_id,
            max_batch_size: max_batch_size.max(1),
            max_bytes_per_token: longest.map(|l| 4 * l.max(1)),
        }
    }

    /// Generates for items that share one splitting flag.
    /// `Err` is a failure of the whole group (a request that cannot be prepared, the model); a row's own failure
    /// (e.g. sampling) is that row's `Err` only.
    fn generate_group(
        &self,
        items: &mut [&mut BatchItem],
        split: Option<bool>,
    ) -> Result<Vec<Result<Generation, EngineError>>, EngineError> {
        // The requests' messages and images are lent as they are: a failed batch may run them again.
        let rows: Vec<PromptRow<'_>> = items
            .iter()
            .map(|item| PromptRow {
                text: PromptText::Chat(&item.prompt.messages),
                images: &item.prompt.images,
            })
            .collect();
        let prepared = self
            .pipeline
            .prepare_rows(&rows, split)
            .map_err(engine_error)?;
        drop(rows);
        let requests: Vec<GenerationRequest> = items.iter().map(|i| i.params.clone()).collect();
        let out = self
            .pipeline
            .generate_rows(&prepared, &requests, |row, delta| {
                match items.get_mut(row) {
                    Some(item) => item.emit(delta) == Flow::Continue && !item.is_cancelled(),
                    None => false,
                }
            })
            .map_err(engine_error)?;
        Ok(out
            .into_iter()
            .map(|row| {
                let row = row.map_err(engine_error)?;
                Ok(Generation {
                    completion_tokens: row.token_ids.len(),
                    finish: match row.finish_reason {
                        FinishReason::Stop => EngineFinish::EndOfTurn,
                        FinishReason::Length => EngineFinish::MaxTokens,
                        FinishReason::Cancelled => EngineFinish::StoppedByCaller,
                    },
                })
            })
            .collect())
    }
}

/// A shared batch failed (one request's bad input, a sampling error, a model error): as the scheduler does for
/// panics, members that have not streamed anything yet are run again one by one, so only the culprit fails;
/// members whose text already went out cannot be rerun without sending it twice, so they end with the error.
fn isolate_failure(
    batch: &mut [BatchItem],
    members: &[usize],
    error: &EngineError,
    results: &mut [Option<Result<Generation, EngineError>>],
    mut run_alone: impl FnMut(&mut BatchItem) -> Result<Generation, EngineError>,
) {
    for &i in members {
        let item = &mut batch[i];
        results[i] = Some(if item.emitted_any {
            Err(EngineError::Internal(format!(
                "the batch failed after this answer started: {error}"
            )))
        } else if item.is_cancelled() {
            Ok(Generation {
                completion_tokens: 0,
                finish: EngineFinish::StoppedByCaller,
            })
        } else {
            run_alone(item)
        });
    }
}

/// Input problems are the client's (400); anything else is ours (500).
fn engine_error(e: idefics::Error) -> EngineError {
    match e {
        idefics::Error::Input(_) | idefics::Error::Prompt(_) | idefics::Error::Image(_) => {
            EngineError::BadInput(e.to_string())
        }
        other => EngineError::Internal(other.to_string()),
    }
}

impl ChatEngine for PipelineEngine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn context_length(&self) -> usize {
        self.pipeline.context_length()
    }

    fn image_token_cost(&self, width: u32, height: u32, split: Option<bool>) -> usize {
        self.pipeline
            .processor
            .image_token_cost(width as usize, height as usize, split)
    }

    fn count_prompt_tokens(&self, prompt: &ChatPrompt) -> Result<PromptTokens, EngineError> {
        // Counting needs the images' sizes, not their pixels: no copy of them here.
        let split = prompt.requested_split()?;
        let sizes = prompt.image_sizes();
        let encoded = self
            .pipeline
            .processor
            .chat_token_ids(&prompt.messages, true, &sizes, split)
            .map_err(|e| EngineError::BadInput(e.to_string()))?;
        let image_id = self.pipeline.processor.tokenizer().special_ids().image;
        let image_tokens = encoded.iter().filter(|&&t| t == image_id).count();
        Ok(PromptTokens {
            total: encoded.len(),
            image_tokens,
        })
    }

    fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    fn max_bytes_per_token(&self) -> Option<usize> {
        self.max_bytes_per_token
    }

    /// Eager attention's cost, the larger of the two stages: the vision encoder over every frame at once
    /// (`frames × (2 × heads × patches² + patches × (4 × hidden + 3 × intermediate))` f32 values: scores, their
    /// softmax, q/k/v/o and the MLP), then one text layer over the prompt (the same terms with tokens for patches).
    fn prefill_bytes(&self, prompt: &ChatPrompt, tokens: PromptTokens) -> u64 {
        const F32: u64 = 4;
        let stage = |n: u64, heads: usize, hidden: usize, inter: usize| -> u64 {
            n.saturating_mul(n)
                .saturating_mul(2 * heads as u64)
                .saturating_add(n.saturating_mul((4 * hidden + 3 * inter) as u64))
        };
        let t = self.pipeline.model.text_config();
        let text = stage(
            tokens.total as u64,
            t.num_attention_heads,
            t.hidden_size,
            t.intermediate_size,
        );
        let v = self.pipeline.model.vision_config();
        let split = prompt.requested_split().unwrap_or(None);
        let processor = &self.pipeline.processor;
        let per_frame = processor.image_seq_len().max(1);
        let frames: u64 = prompt
            .image_sizes()
            .iter()
            .map(|&(w, h)| (processor.image_token_cost(w, h, split) / per_frame) as u64)
            .sum();
        let side = (v.image_size / v.patch_size.max(1)) as u64;
        let vision = stage(
            side * side,
            v.num_attention_heads,
            v.hidden_size,
            v.intermediate_size,
        )
        .saturating_mul(frames);
        text.max(vision).saturating_mul(F32)
    }

    /// Without splitting, the processor's first step resizes the whole image to `target_size`; doing that step
    /// now gives the very same pixels later (the processor's resize to the size an image already has is a copy),
    /// so a 40-megapixel photo waits in the queue as at most `longest_edge`² pixels. With splitting the crops are
    /// cut from the original pixels, so the image is kept as it is.
    /// An image with a colour key (PNG `tRNS`) is kept as it is: the processor applies the key before resizing.
    fn reduce_image(&self, image: RgbImage, split: Option<bool>) -> RgbImage {
        // Idefics2 only: Idefics3 / SmolVLM resize twice (longest edge, then tile multiples), so their images
        // are kept as they are.
        let FamilyProcessor::Idefics2 {
            image: processor, ..
        } = &self.pipeline.processor
        else {
            return image;
        };
        let cfg = processor.config();
        if !cfg.do_resize
            || self.pipeline.processor.resolve_splitting(split)
            || image.transparent_color().is_some()
        {
            return image;
        }
        let (w, h) = (image.width(), image.height());
        let (th, tw) = processor.target_size(h, w);
        if th.saturating_mul(tw) >= h.saturating_mul(w) {
            return image;
        }
        idefics::processor::resize(&image, tw, th, cfg.resample).unwrap_or(image)
    }

    fn generate(&self, batch: &mut [BatchItem]) -> Vec<Result<Generation, EngineError>> {
        let mut results: Vec<Option<Result<Generation, EngineError>>> =
            (0..batch.len()).map(|_| None).collect();
        // Group by splitting flag; a request that cannot be converted fails alone.
        let mut groups: Vec<(Option<bool>, Vec<usize>)> = Vec::new();
        for (i, item) in batch.iter().enumerate() {
            if item.is_cancelled() {
                results[i] = Some(Ok(Generation {
                    completion_tokens: 0,
                    finish: EngineFinish::StoppedByCaller,
                }));
                continue;
            }
            match item.prompt.requested_split() {
                Ok(split) => match groups.iter_mut().find(|(s, _)| *s == split) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((split, vec![i])),
                },
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        for (split, members) in groups {
            let outcome = {
                let mut items: Vec<&mut BatchItem> = batch
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| members.contains(i))
                    .map(|(_, item)| item)
                    .collect();
                self.generate_group(&mut items, split)
            };
            match outcome {
                Ok(generations) => {
                    // A row that failed on its own (sampling, decoding) fails alone; the others are complete.
                    for (i, g) in members.iter().zip(generations) {
                        results[*i] = Some(g);
                    }
                }
                Err(e) if members.len() > 1 => {
                    isolate_failure(batch, &members, &e, &mut results, |item| {
                        self.generate_group(&mut [item], split)
                            .and_then(|mut g| g.remove(0))
                    });
                }
                Err(e) => {
                    for &i in &members {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(EngineError::Internal("item was not generated".into())))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_item;

    #[test]
    fn a_failed_batch_reruns_only_members_that_sent_nothing() {
        let (mut a, mut rx_a) = test_item("a");
        let (b, _rx_b) = test_item("b");
        let (c, _rx_c) = test_item("c");
        // `a` streamed text before the batch failed; `b` and `c` had not.
        assert_eq!(a.emit("hello "), Flow::Continue);
        let mut batch = vec![a, b, c];
        let mut results: Vec<Option<Result<Generation, EngineError>>> = vec![None, None, None];
        let mut reran = Vec::new();
        isolate_failure(
            &mut batch,
            &[0, 1, 2],
            &EngineError::BadInput("row 2: bad".into()),
            &mut results,
            |item| {
                reran.push(item.request_id.clone());
                if item.request_id == "c" {
                    return Err(EngineError::BadInput("bad".into()));
                }
                let _ = item.emit("fresh");
                Ok(Generation {
                    completion_tokens: 1,
                    finish: EngineFinish::EndOfTurn,
                })
            },
        );
        assert_eq!(
            reran,
            vec!["b", "c"],
            "a must not be rerun: its text was sent"
        );
        assert!(matches!(results[0], Some(Err(EngineError::Internal(_)))));
        assert!(matches!(results[1], Some(Ok(_))));
        assert!(matches!(results[2], Some(Err(EngineError::BadInput(_)))));
        // Nothing was sent to `a` twice.
        let mut sent = String::new();
        while let Ok(crate::engine::Event::Delta(t)) = rx_a.try_recv() {
            sent.push_str(&t);
        }
        assert_eq!(sent, "hello ");
    }
}

#[cfg(test)]
mod row_error_tests {
    use super::*;
    use crate::engine::{test_item, Event};
    use idefics::LoadOptions;
    use idefics_processor::{ChatMessage, ContentPart};

    fn engine() -> PipelineEngine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/e2e/tiny-chat");
        PipelineEngine::new(
            Pipeline::load(&dir, &LoadOptions::default()).unwrap(),
            "tiny".into(),
            4,
        )
    }

    fn item(
        id: &str,
        text: &str,
        temperature: f32,
    ) -> (BatchItem, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (mut item, rx) = test_item(id);
        item.prompt.messages = vec![ChatMessage::parts(
            "user",
            vec![ContentPart::Text { text: text.into() }],
        )];
        item.params.max_new_tokens = 6;
        item.params.sampling.temperature = Some(temperature);
        (item, rx)
    }

    fn streamed(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> String {
        let mut text = String::new();
        while let Ok(event) = rx.try_recv() {
            if let Event::Delta(t) = event {
                text.push_str(&t);
            }
        }
        text
    }

    /// The server validates temperatures, so a row error is injected here with a NaN the API would refuse: that
    /// row fails with a 400, the two others finish as they do alone, their text streamed once.
    #[test]
    fn a_row_error_fails_only_its_row() {
        let engine = engine();
        let (a, mut rx_a) = item("a", "Hello there", 0.0);
        let (b, mut rx_b) = item("b", "What is this?", f32::NAN);
        let (c, mut rx_c) = item("c", "Tell me more", 0.0);
        let mut batch = vec![a, b, c];
        let results = engine.generate(&mut batch);
        assert!(
            matches!(results[1], Err(EngineError::BadInput(_))),
            "{:?}",
            results[1]
        );
        assert!(streamed(&mut rx_b).is_empty());
        let (text_a, text_c) = (streamed(&mut rx_a), streamed(&mut rx_c));
        for (id, prompt, text, result) in [
            ("a", "Hello there", text_a, &results[0]),
            ("c", "Tell me more", text_c, &results[2]),
        ] {
            let (solo, mut rx) = item(id, prompt, 0.0);
            let mut solo_batch = vec![solo];
            let solo_result = engine.generate(&mut solo_batch).remove(0).unwrap();
            assert_eq!(result.as_ref().unwrap(), &solo_result, "{id}");
            assert_eq!(
                text,
                streamed(&mut rx),
                "{id}: streamed text differs from a solo run"
            );
            assert!(!text.is_empty(), "{id}");
        }
    }
}
