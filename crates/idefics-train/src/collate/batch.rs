//! Examples -> one padded batch of model inputs and labels.

use candle_core::{Device, Tensor};
use idefics::model::ModelInputs;
use idefics_processor::{FamilyProcessor, RgbImage};

use super::{invalid, Collator, TrainBatch, TrainExample};
use crate::loss::IGNORE_INDEX;
use crate::TrainError;

impl Collator {
    /// Pads a list of examples into a batch on `device` (right padding; pixel tensors padded to the most frames
    /// per row and the largest frame, as transformers' processor does).
    pub fn collate(
        &self,
        examples: &[TrainExample],
        device: &Device,
    ) -> Result<TrainBatch, TrainError> {
        if examples.is_empty() {
            return Err(invalid("cannot collate an empty batch"));
        }
        let width = examples
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0);
        let b = examples.len();
        let mut ids = Vec::with_capacity(b * width);
        let mut mask = Vec::with_capacity(b * width);
        let mut labels = Vec::with_capacity(b * width);
        for ex in examples {
            if ex.labels.len() != ex.input_ids.len() {
                return Err(invalid(format!(
                    "example has {} labels for {} tokens",
                    ex.labels.len(),
                    ex.input_ids.len()
                )));
            }
            let pad = width - ex.input_ids.len();
            ids.extend(
                ex.input_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(self.pad_id, pad)),
            );
            mask.extend(
                std::iter::repeat_n(1u32, ex.input_ids.len()).chain(std::iter::repeat_n(0, pad)),
            );
            labels.extend(
                ex.labels
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(IGNORE_INDEX, pad)),
            );
        }
        let (pixel_values, pixel_attention_mask) = if examples.iter().any(|e| !e.frames.is_empty())
        {
            let frames: Vec<Vec<RgbImage>> = examples.iter().map(|e| e.frames.clone()).collect();
            let packed = match &self.processor {
                FamilyProcessor::Idefics2 { image, .. } => image.pack(&frames),
                FamilyProcessor::Idefics3 { image, .. } => image.pack(&frames),
            }
            .map_err(invalid)?;
            let (values, pmask) = idefics::pipeline::image_tensors(&packed, device)?;
            (Some(values), Some(pmask))
        } else {
            (None, None)
        };
        Ok(TrainBatch {
            inputs: ModelInputs {
                input_ids: Some(Tensor::from_vec(ids, (b, width), device)?),
                attention_mask: Some(Tensor::from_vec(mask, (b, width), device)?),
                position_ids: None,
                pixel_values,
                pixel_attention_mask,
                inputs_embeds: None,
            },
            labels: Tensor::from_vec(labels, (b, width), device)?,
            n_label_tokens: examples.iter().map(TrainExample::n_label_tokens).sum(),
            n_tokens: examples.iter().map(|e| e.input_ids.len()).sum(),
        })
    }
}
