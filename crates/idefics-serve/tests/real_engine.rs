//! The server on the real pipeline (tests/fixtures/e2e/tiny-chat, random weights): a served answer equals what
//! the pipeline gives for the same chat directly, streaming equals non-streaming, usage counts image tokens, and a
//! corrupt image next to good requests fails alone.

mod common;

use base64::Engine as _;
use common::*;
use idefics::generate::GenerationRequest;
use idefics::pipeline::{Pipeline, Prompt, PromptInput};
use idefics::processor::{decode_image, ChatMessage, ContentPart, DecodeLimits};
use idefics::LoadOptions;
use idefics_serve::pipeline_engine::PipelineEngine;
use idefics_serve::{MockEngine, ServerConfig};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn checkpoint() -> PathBuf {
    root().join("tests/fixtures/e2e/tiny-chat")
}

const MAX_TOKENS: usize = 10;

#[test]
fn served_answers_equal_the_pipeline_and_bad_images_fail_alone() {
    let image_bytes =
        std::fs::read(root().join("tests/fixtures/images_e2e/landscape_120x80.png")).unwrap();
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&image_bytes)
    );

    // The reference: the pipeline called directly with the same chat, greedy.
    let pipeline = Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap();
    let messages = vec![ChatMessage::parts(
        "user",
        vec![
            ContentPart::Image {},
            ContentPart::Text {
                text: "What is this?".into(),
            },
        ],
    )];
    let image = decode_image(&image_bytes, &DecodeLimits::default()).unwrap();
    let prepared = pipeline
        .prepare(
            &[PromptInput {
                prompt: Prompt::Chat(messages),
                images: vec![image],
            }],
            None,
        )
        .unwrap();
    let direct = pipeline
        .generate(
            &prepared,
            &[GenerationRequest {
                max_new_tokens: MAX_TOKENS,
                ..Default::default()
            }],
            |_, _| true,
        )
        .unwrap()
        .remove(0);

    let engine = PipelineEngine::new(
        Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap(),
        "tiny".into(),
        4,
    );
    let srv = start_engine(
        Arc::new(engine),
        Arc::new(MockEngine::default()),
        ServerConfig::default(),
    );
    let request = json!({"model": "tiny", "temperature": 0, "max_tokens": MAX_TOKENS, "messages": [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "What is this?"}]}]});

    let (status, body) = post(&srv, &request);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        direct.text.as_str()
    );
    assert_eq!(body["usage"]["prompt_tokens"], prepared.prompt_ids[0].len());
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["image_tokens"],
        prepared.image_tokens[0]
    );
    assert_eq!(body["usage"]["completion_tokens"], direct.token_ids.len());

    let mut streaming = request.clone();
    streaming["stream"] = json!(true);
    let (status, _, events) = post_stream(&srv, &streaming);
    assert_eq!(status, 200);
    assert_eq!(stream_text(&events), direct.text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // A corrupt image among good requests: 400 for it, the same answers for the others.
    let bad = json!({"model": "tiny", "max_tokens": MAX_TOKENS, "messages": [
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": corrupt_png_uri()}}, {"type": "text", "text": "x"}]}]});
    let answers: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let body = if i == 1 { bad.clone() } else { request.clone() };
                let srv = &srv;
                s.spawn(move || post(srv, &body))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (status, body)) in answers.iter().enumerate() {
        if i == 1 {
            assert_eq!(*status, 400, "{body}");
            assert_eq!(body["error"]["code"], "invalid_image", "{body}");
        } else {
            assert_eq!(*status, 200, "{body}");
            assert_eq!(
                body["choices"][0]["message"]["content"],
                direct.text.as_str()
            );
        }
    }
    srv.shutdown();
}
