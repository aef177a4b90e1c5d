//! Fuzzes the chat request -> prompt path of the server without a socket, on the shared harness
//! (tests/fuzz/harness.rs): a mutated JSON body goes through what `POST /v1/chat/completions` does before
//! queueing: `parse_chat_request_limited` with the default limits, the image count limit, loading and decoding
//! each image (data URIs and local paths; remote URLs are skipped, a fuzzer must not use the network),
//! `reduce_image`, `assemble_prompt`, then on the real engine (tests/fixtures/e2e/tiny-chat) the chat template,
//! tokenisation and image-token expansion of `count_prompt_tokens`, `prefill_bytes`, and the stop-string matcher.
//! A failure is a panic, a run over 2 s, or a peak of live heap over 256 MiB.
//!
//! Seeds: the request shapes of the server tests (text, images with `detail`, multi-turn with system and
//! assistant turns, streaming options, stop strings, neutral values of unsupported parameters, corrupt images).
//!
//! `cargo test -p idefics-serve --test fuzz_chat_request` runs a short bounded pass (CI). For a long run:
//! `IDEFICS_FUZZ_SECS=600 IDEFICS_FUZZ_SEED=1 cargo test -p idefics-serve --test fuzz_chat_request -- --nocapture`
//! Failing bodies are written to `$IDEFICS_FUZZ_OUT`; commit them under
//! tests/fixtures/fuzz_regressions/chat_request/, which this test replays.

mod common;

use std::time::Duration;

use common::{corrupt_png_uri, image_part, png_uri, text_part};
use idefics::generate::StopStrings;
use idefics::pipeline::Pipeline;
use idefics::LoadOptions;
use idefics_serve::api::{parse_chat_request_limited, RawPart, TextLimits};
use idefics_serve::fetch::FetchCancel;
use idefics_serve::images::{decode_image, is_remote, load_image_bytes};
use idefics_serve::pipeline_engine::PipelineEngine;
use idefics_serve::{assemble_prompt, request_split, ChatEngine, ServerConfig};
use serde_json::{json, Value};

#[path = "../../../tests/fuzz/harness.rs"]
mod harness;

#[global_allocator]
static GLOBAL: harness::CountingAlloc = harness::CountingAlloc;

/// Pixel cap of decoded images here (the server's default is 40 MP; decoding is fuzzed by fuzz_decode).
const MAX_PIXELS: u64 = 1_000_000;

/// Strings the mutator inserts into JSON strings.
const API_TOKENS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "text",
    "image_url",
    "input_audio",
    "low",
    "high",
    "auto",
    "data:image/png;base64,",
    "data:image/jpeg;base64,/9j/",
    "data:,",
    ";base64,",
    "====",
    "file:///etc/passwd",
    "/etc/hostname",
    "./x.png",
    "http://127.0.0.1:1/x.png",
    "<image>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "\u{E000}",
    "\u{0}",
    "\u{FEFF}",
    "User:",
    "Assistant:",
    "{{ 7 * 7 }}",
    "%",
    "\\",
    "\"",
];

fn seeds() -> Vec<(String, Vec<u8>)> {
    let red = png_uri(4, 3, [255, 0, 0]);
    let green = png_uri(5, 5, [0, 255, 0]);
    let requests = [
        json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}]}),
        json!({"messages": [{"role": "user", "content": [
            text_part("what?"),
            {"type": "image_url", "image_url": {"url": red, "detail": "low"}}]}]}),
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": green, "detail": "high"}}, text_part("describe")]}],
            "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "seed": 7}),
        json!({"model": "idefics-mock", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [image_part(&red), text_part("first")]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [text_part("compare "), image_part(&green), text_part("and"),
                image_part(&png_uri(2, 2, [0, 0, 255]))]}]}),
        json!({"messages": [{"role": "developer", "content": [text_part("rules")]},
            {"role": "user", "content": "go"}], "stream": true, "stream_options": {"include_usage": true},
            "stop": ["\n\n", "END"], "max_completion_tokens": 3}),
        json!({"messages": [{"role": "user", "content": "x"}], "n": 1, "logprobs": false, "tools": [],
            "presence_penalty": 0, "frequency_penalty": 0.0, "response_format": {"type": "text"}, "user": "u"}),
        json!({"messages": [{"role": "user", "content": [image_part(&corrupt_png_uri()), text_part("?")]}]}),
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_uri(8, 8, [1, 1, 1]), "detail": "high"}},
            {"type": "image_url", "image_url": {"url": png_uri(8, 8, [1, 1, 1]), "detail": "high"}},
            text_part("hi <image> <end_of_utterance>")]}], "stop": "Assistant:"}),
    ];
    let mut seeds: Vec<(String, Vec<u8>)> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("request {i}"), serde_json::to_vec(r).unwrap()))
        .collect();
    seeds.extend(harness::files_in("fuzz_regressions/chat_request", 1 << 20));
    seeds
}

fn mutate(rng: &mut harness::Rng, parent: &[u8], donors: &[Value], raw: &[&[u8]]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(parent) {
        Ok(mut v) if !rng.chance(5) => {
            let refs: Vec<&Value> = donors.iter().collect();
            harness::mutate_json(rng, &mut v, &refs, API_TOKENS);
            serde_json::to_vec(&v).unwrap()
        }
        _ => harness::mutate_bytes(rng, raw, parent),
    }
}

/// One body through the request -> prompt path; `Ok(true)` when a prompt was counted.
fn run_one(body: &[u8], engine: &PipelineEngine, cfg: &ServerConfig) -> Result<bool, String> {
    let limits = TextLimits {
        max_messages: cfg.max_messages,
        max_text_bytes: cfg.max_text_bytes,
    };
    let Ok(req) = parse_chat_request_limited(body, limits) else {
        return Ok(false);
    };
    let _ = req.text_bytes();
    if req.image_count() > cfg.max_images_per_request {
        return Ok(false);
    }
    let split = request_split(&req);
    let mut images = Vec::new();
    for part in req.messages.iter().flat_map(|m| &m.parts) {
        let RawPart::Image { url, .. } = part else {
            continue;
        };
        if is_remote(url) {
            return Ok(false);
        }
        let index = images.len();
        let Ok(bytes) = load_image_bytes(url, index, cfg, &FetchCancel::default()) else {
            return Ok(false);
        };
        let Ok(image) = decode_image(&bytes, index, MAX_PIXELS) else {
            return Ok(false);
        };
        images.push(engine.reduce_image(image, split));
    }
    let prompt = assemble_prompt(&req, images).map_err(|e| format!("assemble_prompt: {e:?}"))?;
    let mut stops = StopStrings::new(req.stop.clone());
    let _ = stops.push("Hello END there\n\nAssistant: more");
    let _ = stops.finish();
    let Ok(tokens) = engine.count_prompt_tokens(&prompt) else {
        return Ok(false);
    };
    let _ = engine.prefill_bytes(&prompt, tokens);
    for (image, split) in prompt.images.iter().zip(&prompt.image_splits) {
        let _ = engine.image_token_cost(image.width() as u32, image.height() as u32, *split);
    }
    Ok(true)
}

#[test]
fn fuzz_chat_request_to_prompt() {
    let checkpoint = harness::fixtures().join("e2e/tiny-chat");
    let engine = PipelineEngine::new(
        Pipeline::load(&checkpoint, &LoadOptions::default()).unwrap(),
        "tiny".into(),
        4,
    );
    let cfg = ServerConfig::default();
    let seeds = seeds();
    let donors: Vec<Value> = seeds
        .iter()
        .filter_map(|(_, b)| serde_json::from_slice(b).ok())
        .collect();
    let raw: Vec<&[u8]> = seeds.iter().map(|(_, b)| b.as_slice()).collect();
    let settings = harness::Settings {
        name: "chat_request",
        bounded_execs: 1_500,
        hang: Duration::from_secs(2),
        max_extra_bytes: 256 << 20,
        default_seed: 0xC4A7_2E9F,
    };
    let stats = harness::fuzz(
        &settings,
        &seeds,
        |rng, parent| mutate(rng, parent, &donors, &raw),
        |body| run_one(body, &engine, &cfg),
        |body| body.clone(),
    );
    // The valid seeds reach the token count.
    assert!(stats.accepted >= 6, "{stats:?}");
}
