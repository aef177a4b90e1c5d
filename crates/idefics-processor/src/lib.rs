//! Idefics2 / Idefics3 / SmolVLM processing: files -> pixel_values, pixel_attention_mask and input_ids, as
//! transformers computes them. [`family::FamilyProcessor`] picks the family from a checkpoint's `model_type`.

pub mod chat_template;
pub mod family;
pub mod idefics3_prompt;
pub mod image;
pub mod processor_config;
pub mod prompt;
mod template_output;
pub mod tokenizer;
pub mod tokenizer_train;
pub mod video;

pub use self::image::{
    decode_image, decode_image_file, resize, DecodeLimits, Idefics2ImageProcessor,
    Idefics2ImageProcessorConfig, Idefics3ImageBatch, Idefics3ImageProcessor,
    Idefics3ImageProcessorConfig, ImageBatch, ImageError, ResampleFilter, RgbImage, TileGrid,
};
pub use chat_template::{ChatMessage, ChatTemplate, ContentPart, MessageContent, RenderedChat};
pub use family::{
    FamilyProcessor, ModelFamily, ProcessedBatch, ProcessedInputs, ProcessorError, PromptRow,
    PromptText,
};
pub use idefics3_prompt::{
    EncodedIdefics3Prompt, Idefics3ProcessorConfig, Idefics3PromptProcessor,
};
pub use processor_config::ProcessorConfig;
pub use prompt::{expand_image_tokens, EncodedPrompt, PromptError, PromptProcessor};
pub use tokenizer::{Piece, SpecialTokenIds, TextTokenizer, TokenizerConfig};
pub use video::{VideoClip, VideoMetadata, VideoProcessorSettings};
