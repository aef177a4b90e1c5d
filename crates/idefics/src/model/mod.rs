//! The Idefics2 network: vision tower -> connector -> text decoder, composed in [`idefics2`].

pub mod component;
pub mod connector;
pub mod idefics2;
pub mod text;
pub mod vision;

pub use component::Component;
pub use connector::{Connector, PerceiverResampler};
pub use idefics2::{Idefics2ForConditionalGeneration, ImageFeatures, LoadOptions, ModelInputs};
pub use text::{KvCache, TextModel};
pub use vision::{PositionIdRule, VisionTransformer};
