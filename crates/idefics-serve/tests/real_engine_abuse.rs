//! The real pipeline (tests/fixtures/e2e/tiny-chat, random weights) under careless parameters and large images:
//! a temperature that underflows does not fail its batch, and images reduced at admission give the very same
//! model input as the originals.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use idefics::pipeline::{Pipeline, Prompt, PromptInput};
use idefics::processor::{ChatMessage, ContentPart, RgbImage};
use idefics::LoadOptions;
use idefics_serve::pipeline_engine::PipelineEngine;
use idefics_serve::{ChatEngine, MockEngine, ServerConfig};
use serde_json::json;

fn checkpoint() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/e2e/tiny-chat")
}

fn engine() -> PipelineEngine {
    PipelineEngine::new(
        Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap(),
        "tiny".into(),
        4,
    )
}

/// A gradient with some structure, so that resizing has something to get wrong.
fn photo(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    })
}

#[test]
fn an_underflowing_temperature_does_not_fail_its_batch() {
    let srv = start_engine(
        Arc::new(engine()),
        Arc::new(MockEngine::default()),
        ServerConfig {
            batch_window: Duration::from_millis(400),
            ..Default::default()
        },
    );
    let request = |temperature: f64| {
        json!({"model": "tiny", "temperature": temperature, "max_tokens": 12,
               "messages": [{"role": "user", "content": "Tell me something."}]})
    };
    let (status, alone) = post(&srv, &request(0.0));
    assert_eq!(status, 200, "{alone}");
    let expected = alone["choices"][0]["message"]["content"].clone();
    // Together in one batch: 1e-45 passes the [0, 2] range check; dividing logits by it gives infinities.
    let (greedy, tiny) = std::thread::scope(|s| {
        let a = s.spawn(|| post(&srv, &request(0.0)));
        let b = s.spawn(|| post(&srv, &request(1e-45)));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(greedy.0, 200, "{}", greedy.1);
    assert_eq!(
        greedy.1["choices"][0]["message"]["content"], expected,
        "the other row's answer changed (re-sent text?)"
    );
    assert_eq!(tiny.0, 200, "{}", tiny.1);
    // A temperature that small is greedy decoding.
    assert_eq!(tiny.1["choices"][0]["message"]["content"], expected);
    srv.shutdown();
}

#[test]
fn images_reduced_at_admission_give_the_same_model_input() {
    let engine = engine();
    // The server decodes into the processor's image type and hands that same value to the engine.
    let processor_image = |img: image::RgbImage| {
        let (w, h) = img.dimensions();
        RgbImage::new(w as usize, h as usize, img.into_raw()).unwrap()
    };
    let dimensions = |img: &RgbImage| (img.width() as u32, img.height() as u32);
    let original = processor_image(photo(640, 480));
    // No splitting: the processor resizes to longest edge 64 first, so the image can wait at that size.
    let reduced = engine.reduce_image(original.clone(), Some(false));
    assert_eq!(dimensions(&reduced), (64, 48));
    // With splitting the crops come from the original pixels: kept as is.
    assert_eq!(
        dimensions(&engine.reduce_image(original.clone(), Some(true))),
        (640, 480)
    );
    // Small images are not enlarged.
    assert_eq!(
        dimensions(&engine.reduce_image(processor_image(photo(10, 12)), Some(false))),
        (10, 12)
    );

    // A colour key (PNG tRNS) reaches the processor with the original pixels: it is applied before resizing.
    let keyed = engine.reduce_image(
        original.clone().with_transparent_color(Some([1, 2, 3])),
        Some(false),
    );
    assert_eq!(
        (dimensions(&keyed), keyed.transparent_color()),
        ((640, 480), Some([1, 2, 3]))
    );

    let pipeline = Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap();
    let prepare = |img: &RgbImage| {
        let input = PromptInput {
            prompt: Prompt::Chat(vec![ChatMessage::parts(
                "user",
                vec![
                    ContentPart::Image {},
                    ContentPart::Text { text: "x".into() },
                ],
            )]),
            images: vec![img.clone()],
        };
        pipeline.prepare(&[input], Some(false)).unwrap()
    };
    let a = prepare(&original);
    let b = prepare(&reduced);
    let (pa, pb) = (a.images.unwrap(), b.images.unwrap());
    assert_eq!(pa.pixel_values_shape, pb.pixel_values_shape);
    assert!(
        pa.pixel_values == pb.pixel_values,
        "pixel_values differ after the early resize"
    );
    assert_eq!(pa.pixel_attention_mask, pb.pixel_attention_mask);
    assert_eq!(a.prompt_ids, b.prompt_ids);
}
