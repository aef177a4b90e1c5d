//! The training collator on Idefics3 / SmolVLM checkpoints writes the inputs their processors write: the token ids
//! of a whole conversation equal `FamilyProcessor::process_chat` (checked against transformers by the processor's
//! own parity tests), with the tile grid blocks of each image, and only the answers are labelled.

use idefics_data::{ChatSample, ImageSource, Turn};
use idefics_processor::{
    decode_image_file, ChatMessage, ContentPart, DecodeLimits, FamilyProcessor, ModelFamily,
};
use idefics_train::collate::{CollateConfig, Collator};
use idefics_train::loss::IGNORE_INDEX;
use idefics_train::rng::TrainRng;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn e2e(case: &str) -> PathBuf {
    root().join("tests/fixtures/idefics3/e2e").join(case)
}

fn image(name: &str) -> PathBuf {
    root().join("tests/fixtures/images_e2e").join(name)
}

fn sample(images: &[&str]) -> ChatSample {
    ChatSample {
        images: images.iter().map(|n| ImageSource::Path(image(n))).collect(),
        turns: vec![
            Turn {
                user: "What is in the picture?".into(),
                assistant: "A red square on grass.".into(),
                source: String::new(),
            },
            Turn {
                user: "And the colour of the sky?".into(),
                assistant: "Blue, with clouds.".into(),
                source: String::new(),
            },
        ],
    }
}

/// The conversation as chat messages (images at the start of the first user turn).
fn messages(s: &ChatSample) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    for (k, t) in s.turns.iter().enumerate() {
        let mut parts = Vec::new();
        if k == 0 {
            parts.extend(s.images.iter().map(|_| ContentPart::Image {}));
        }
        parts.push(ContentPart::Text {
            text: t.user.clone(),
        });
        out.push(ChatMessage::parts("user", parts));
        out.push(ChatMessage::parts(
            "assistant",
            vec![ContentPart::Text {
                text: t.assistant.clone(),
            }],
        ));
    }
    out
}

fn check(case: &str, family: ModelFamily, images: &[&str], split: bool) {
    let dir = e2e(case);
    let config = CollateConfig {
        split_fraction: if split { 1.0 } else { 0.0 },
        max_seq_len: 4096,
        ..Default::default()
    };
    let collator = Collator::from_model_dir(&dir, config).unwrap();
    assert_eq!(collator.family(), family);
    assert_eq!(collator.collapsing_fake_image_id(), None);
    let s = sample(images);
    let mut rng = TrainRng::seed_from_u64(3);
    let ex = collator.encode_chat(&s, false, &mut rng).unwrap();
    assert_eq!(ex.split, split && !images.is_empty());

    let processor = FamilyProcessor::from_dir(&dir).unwrap();
    let decoded: Vec<_> = images
        .iter()
        .map(|n| decode_image_file(&image(n), &DecodeLimits::default()).unwrap())
        .collect();
    let reference = processor
        .process_chat(&messages(&s), false, &decoded, Some(split))
        .unwrap();
    assert_eq!(
        ex.input_ids, reference.input_ids,
        "{case} split={split}: collator ids differ from the processor's"
    );
    assert_eq!(ex.frames.len(), reference.images.pixel_values_shape[1]);
    // The collated pixels are the processor's.
    let batch = collator
        .collate(std::slice::from_ref(&ex), &candle_core::Device::Cpu)
        .unwrap();
    if let Some(pv) = batch.inputs.pixel_values {
        let ours: Vec<f32> = pv.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(ours, reference.images.pixel_values, "{case}: pixel values");
    }
    // Labelled: exactly the answers, each with its <end_of_utterance>.
    let tok = collator.tokenizer();
    let labelled: Vec<u32> = ex
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    let text = tok.inner().decode(&labelled, false).unwrap();
    assert_eq!(
        text.replace(' ', ""),
        "Ared squareongrass.<end_of_utterance>Blue,withclouds.<end_of_utterance>".replace(' ', ""),
        "{case}: labelled text {text:?}"
    );
}

#[test]
fn smolvlm_chat_examples_match_the_processor() {
    check(
        "smolvlm_tied",
        ModelFamily::SmolVlm,
        &["landscape_120x80.png"],
        true,
    );
    check(
        "smolvlm_tied",
        ModelFamily::SmolVlm,
        &["landscape_120x80.png"],
        false,
    );
    check(
        "smolvlm_tied",
        ModelFamily::SmolVlm,
        &["portrait_45x100.jpg", "square_33x33.png"],
        true,
    );
    check("smolvlm_tied", ModelFamily::SmolVlm, &[], false);
}

#[test]
fn idefics3_chat_examples_match_the_processor() {
    check(
        "idefics3_llama3",
        ModelFamily::Idefics3,
        &["landscape_120x80.png"],
        true,
    );
    check(
        "idefics3_llama3",
        ModelFamily::Idefics3,
        &["gray_wide_110x20.png"],
        false,
    );
}

/// A pre-training pair on SmolVLM: the segment is the processor's ids of `<image>caption` (an unsplit image; SmolVLM's
/// tokenizer adds no BOS, so packed rows start without one), then EOS; only the caption and the EOS are labelled.
#[test]
fn smolvlm_pairs_match_the_processor() {
    let dir = e2e("smolvlm_tied");
    let collator = Collator::from_model_dir(&dir, CollateConfig::default()).unwrap();
    let pair = idefics_data::ImageTextPair {
        image: ImageSource::Path(image("square_33x33.png")),
        text: "A small square.".into(),
    };
    let mut rng = TrainRng::seed_from_u64(1);
    let seg = collator.encode_pair(&pair, false, &mut rng).unwrap();
    let processor = FamilyProcessor::from_dir(&dir).unwrap();
    let decoded = decode_image_file(&image("square_33x33.png"), &DecodeLimits::default()).unwrap();
    let reference = processor
        .process_prompt("<image>A small square.", &[decoded], Some(false))
        .unwrap();
    let special = collator.tokenizer().special_ids();
    assert_eq!(collator.bos(), None);
    let mut want = reference.input_ids.clone();
    want.push(special.eos.unwrap());
    assert_eq!(seg.ids, want);
    assert_eq!(seg.frames.len(), 1);
    let labelled: Vec<u32> = seg
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    let text = collator
        .tokenizer()
        .inner()
        .decode(&labelled, false)
        .unwrap();
    assert!(text.starts_with("A small square."), "{text:?}");
    assert!(!labelled.contains(&special.image) && !labelled.contains(&special.fake_image));
}

/// An interleaved document on SmolVLM: its segments, joined, are the processor's ids of the same text with
/// `<image>` where the images are (paragraphs joined by a blank line, no space inserted after an image block, as
/// processing_idefics3.py writes it), then EOS; images unsplit.
#[test]
fn smolvlm_documents_match_the_processor() {
    use idefics_data::{DocItem, InterleavedDocument};
    let dir = e2e("smolvlm_tied");
    let collator = Collator::from_model_dir(&dir, CollateConfig::default()).unwrap();
    let doc = InterleavedDocument {
        items: vec![
            DocItem::Text("A title.".into()),
            DocItem::Image(ImageSource::Path(image("square_33x33.png"))),
            DocItem::Text("The square is red.".into()),
            DocItem::Text("It sits on grass.".into()),
            DocItem::Image(ImageSource::Path(image("landscape_120x80.png"))),
            DocItem::Image(ImageSource::Path(image("portrait_45x100.jpg"))),
            DocItem::Text("Two more pictures.".into()),
        ],
    };
    let mut rng = TrainRng::seed_from_u64(1);
    let segs = collator.encode_document(&doc, false, &mut rng).unwrap();
    let ids: Vec<u32> = segs.iter().flat_map(|s| s.ids.clone()).collect();
    let decoded: Vec<_> = [
        "square_33x33.png",
        "landscape_120x80.png",
        "portrait_45x100.jpg",
    ]
    .iter()
    .map(|n| decode_image_file(&image(n), &DecodeLimits::default()).unwrap())
    .collect();
    let processor = FamilyProcessor::from_dir(&dir).unwrap();
    let reference = processor
        .process_prompt(
            "A title.<image>The square is red.\n\nIt sits on grass.<image><image>Two more pictures.",
            &decoded,
            Some(false),
        )
        .unwrap();
    let mut want = reference.input_ids.clone();
    want.push(collator.tokenizer().special_ids().eos.unwrap());
    assert_eq!(ids, want);
    let frames: usize = segs.iter().map(|s| s.frames.len()).sum();
    assert_eq!(frames, 3);
}
