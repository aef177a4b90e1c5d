//! Idefics2 processing: files -> pixel_values, pixel_attention_mask and input_ids, as transformers computes them.

pub mod image;

pub use self::image::{
    decode_image, decode_image_file, resize, DecodeLimits, Idefics2ImageProcessor,
    Idefics2ImageProcessorConfig, ImageBatch, ImageError, ResampleFilter, RgbImage,
};
