//! Pre-training samples -> packing segments: image-text pairs and interleaved documents.

use idefics_data::{DocItem, ImageTextPair, InterleavedDocument};
use idefics_processor::{ModelFamily, Piece};

use super::{Collator, Segment, Skip, SkipReason};
use crate::rng::TrainRng;

impl Collator {
    /// An image-text pair -> one packing segment: `<fake><image>…<fake> caption</s>` (Idefics3 / SmolVLM: the
    /// unsplit block `<fake><global-img><image>…<fake>caption</s>`), caption and EOS labelled. With `text_only`,
    /// just the caption.
    pub fn encode_pair(
        &self,
        pair: &ImageTextPair,
        text_only: bool,
        rng: &mut TrainRng,
    ) -> Result<Segment, Skip> {
        let mut seg = Segment::default();
        let mut pieces = Vec::new();
        let mut grids = Vec::new();
        if !text_only {
            let (frames, grid) = self.image_frames(&pair.image, false, rng)?;
            seg.frames = frames;
            grids.push(grid);
            seg.n_images = 1;
            pieces.push(Piece::Token(self.special.image));
        }
        pieces.push(Piece::Text(pair.text.clone()));
        let ids = self
            .encode_pieces(&pieces, false, &grids, false)
            .map_err(|e| Skip::new(SkipReason::MalformedRow, e.to_string()))?;
        for id in ids {
            seg.push(id, !self.is_image_token(id));
        }
        if let Some(eos) = self.special.eos {
            seg.push(eos, true);
        }
        if seg.n_labels() == 0 {
            return Err(Skip::new(SkipReason::NoLabels, "empty caption"));
        }
        Ok(seg)
    }

    /// An interleaved document -> one segment per item (text paragraphs joined by a blank line, an EOS after the
    /// last); [`super::packing::document_windows`] cuts them into rows. With `text_only`, images are dropped.
    pub fn encode_document(
        &self,
        doc: &InterleavedDocument,
        text_only: bool,
        rng: &mut TrainRng,
    ) -> Result<Vec<Segment>, Skip> {
        let mut segs: Vec<Segment> = Vec::new();
        let mut prev_image: Option<bool> = None;
        for item in &doc.items {
            let mut seg = Segment::default();
            match item {
                DocItem::Image(_) if text_only => continue,
                DocItem::Image(src) => {
                    let (frames, grid) = self.image_frames(src, false, rng)?;
                    seg.frames = frames;
                    seg.n_images = 1;
                    if self.family() == ModelFamily::Idefics2 {
                        let n = self.image_seq_len();
                        seg.push(self.special.fake_image, false);
                        for _ in 0..n {
                            seg.push(self.special.image, false);
                        }
                        seg.push(self.special.fake_image, false);
                    } else {
                        let block = self
                            .encode_pieces(
                                &[Piece::Token(self.special.image)],
                                false,
                                &[grid],
                                false,
                            )
                            .map_err(|e| Skip::new(SkipReason::MalformedRow, e.to_string()))?;
                        for id in block {
                            seg.push(id, false);
                        }
                    }
                    prev_image = Some(true);
                }
                DocItem::Text(t) if t.trim().is_empty() => continue,
                DocItem::Text(t) => {
                    let text = match prev_image {
                        None => t.clone(),
                        // transformers 5.x's Idefics2 processor puts a space after a closing fake token before a
                        // word; Idefics3 / SmolVLM insert nothing (processing_idefics3.py).
                        Some(true)
                            if self.family() == ModelFamily::Idefics2
                                && !t.starts_with(char::is_whitespace) =>
                        {
                            format!(" {t}")
                        }
                        Some(true) => t.clone(),
                        Some(false) => format!("\n\n{t}"),
                    };
                    let ids = self
                        .encode_text(&text, prev_image.is_none())
                        .map_err(|e| Skip::new(SkipReason::MalformedRow, e.to_string()))?;
                    for id in ids {
                        seg.push(id, true);
                    }
                    prev_image = Some(false);
                }
            }
            segs.push(seg);
        }
        if let (Some(eos), Some(last)) = (self.special.eos, segs.last_mut()) {
            last.push(eos, true);
        }
        if segs.iter().all(|s| s.n_labels() == 0) {
            return Err(Skip::new(SkipReason::NoLabels, "document has no text"));
        }
        Ok(segs)
    }
}
