//! Idefics2 processing: files -> pixel_values, pixel_attention_mask and input_ids, as transformers computes them.

pub mod chat_template;
pub mod image;
pub mod processor_config;
pub mod prompt;
pub mod tokenizer;
pub mod tokenizer_train;

pub use self::image::{
    decode_image, decode_image_file, resize, DecodeLimits, Idefics2ImageProcessor,
    Idefics2ImageProcessorConfig, ImageBatch, ImageError, ResampleFilter, RgbImage,
};
pub use chat_template::{ChatMessage, ChatTemplate, ContentPart, MessageContent, RenderedChat};
pub use processor_config::ProcessorConfig;
pub use prompt::{expand_image_tokens, EncodedPrompt, PromptError, PromptProcessor};
pub use tokenizer::{Piece, SpecialTokenIds, TextTokenizer, TokenizerConfig};
