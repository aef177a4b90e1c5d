//! The networks: vision tower -> connector -> text decoder. Idefics2 is composed in [`idefics2`], Idefics3 and
//! SmolVLM in [`idefics3`]; [`family::VlmModel`] holds either, chosen from config.json's `model_type`.

pub mod component;
pub mod connector;
pub mod family;
pub mod idefics2;
pub mod idefics3;
pub mod idefics3_config;
pub(crate) mod parts;
pub mod pixel_shuffle;
pub mod step;
pub mod text;
pub mod vision;

pub use component::Component;
pub use connector::{Connector, PerceiverResampler};
pub use family::{DecodeModel, ModelFamily, VlmModel};
pub use idefics2::{
    CpuWeightLayout, Idefics2ForConditionalGeneration, ImageFeatures, LoadOptions, ModelInputs,
};
pub use idefics3::{Idefics3ForConditionalGeneration, Idefics3ImageFeatures};
pub use idefics3_config::{Idefics3Config, Idefics3Family};
pub use text::{DecoderOptions, KvCache, TextModel};
pub use vision::{PatchRule, PositionIdRule, VisionTransformer};
