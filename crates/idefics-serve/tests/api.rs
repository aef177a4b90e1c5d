//! API behaviour against the mock engine on 127.0.0.1:0: answers, streaming, images, multi-turn, stop strings,
//! and every error the server promises (OpenAI error shape, right status, field named).

mod common;

use common::*;
use idefics_serve::{MockEngine, ServerConfig};
use serde_json::{json, Value};

#[test]
fn plain_string_content_answers_with_usage() {
    let srv = start_default();
    let (status, body) = post(&srv, &simple("hello"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "idefics-mock");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "You said: hello");
    assert_eq!(choice["finish_reason"], "stop");
    // 2 (generation prompt) + 3 (one turn) + ceil(5 chars / 3) = 7; 15 chars / 3 = 5 pieces + end of turn = 6.
    assert_eq!(body["usage"]["prompt_tokens"], 7);
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert_eq!(body["usage"]["total_tokens"], 13);
    assert_eq!(body["usage"]["prompt_tokens_details"]["image_tokens"], 0);
}

#[test]
fn image_tokens_are_counted_and_detail_controls_splitting() {
    let srv = start_default();
    let req = |detail: &str| {
        json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": png_uri(4, 3, [255, 0, 0]), "detail": detail}}]}]})
    };
    let (status, low) = post(&srv, &req("low"));
    assert_eq!(status, 200, "{low}");
    assert_eq!(
        low["choices"][0]["message"]["content"],
        "You said: what? | turn 1, 1 image(s): 4x3 #ff0000"
    );
    assert_eq!(low["usage"]["prompt_tokens_details"]["image_tokens"], 64);
    let (_, high) = post(&srv, &req("high"));
    assert_eq!(high["usage"]["prompt_tokens_details"]["image_tokens"], 320);
    assert_eq!(
        high["usage"]["prompt_tokens"].as_u64().unwrap()
            - low["usage"]["prompt_tokens"].as_u64().unwrap(),
        256
    );
}

#[test]
fn several_images_across_turns_with_system_message() {
    let srv = start_default();
    let req = json!({"model": "idefics-mock", "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [image_part(&png_uri(4, 3, [255, 0, 0])), text_part("first")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [text_part("compare "), image_part(&png_uri(5, 5, [0, 255, 0])),
            text_part("and"), image_part(&png_uri(2, 2, [0, 0, 255]))]},
    ]});
    let (status, body) = post(&srv, &req);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: compare and | turn 2, 3 image(s): 4x3 #ff0000, 5x5 #00ff00, 2x2 #0000ff"
    );
    assert_eq!(body["usage"]["prompt_tokens_details"]["image_tokens"], 192);
    // The same request twice: same answer, no state leaking between requests (mistral.rs#1068).
    let (status2, body2) = post(&srv, &req);
    assert_eq!(status2, 200);
    assert_eq!(
        body2["choices"][0]["message"],
        body["choices"][0]["message"]
    );
    assert_eq!(body2["usage"], body["usage"]);
}

#[test]
fn streaming_matches_non_streaming_and_reports_usage() {
    let srv = start_default();
    let mut req = chat(vec![user(vec![
        text_part("stream me"),
        image_part(&png_uri(3, 3, [9, 9, 9])),
    ])]);
    let (_, full) = post(&srv, &req);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, ctype, events) = post_stream(&srv, &req);
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks.len() > 3,
        "expected several content chunks, got {}",
        chunks.len()
    );
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == full_id(&chunks)));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(
        stream_text(&events),
        full["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // Last chunk: usage with empty choices; the one before carries finish_reason; earlier ones usage: null.
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], full["usage"]);
    assert_eq!(rest.last().unwrap()["choices"][0]["finish_reason"], "stop");
    assert!(rest
        .iter()
        .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    assert!(rest[..rest.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));

    // Without include_usage: no usage chunk, no usage key.
    req.as_object_mut().unwrap().remove("stream_options");
    let (_, _, events) = post_stream(&srv, &req);
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last.get("usage").is_none());
}

fn full_id(chunks: &[Value]) -> Value {
    chunks[0]["id"].clone()
}

#[test]
fn stop_strings_across_token_boundaries_are_trimmed() {
    let srv = start_default();
    // Mock tokens are 3 characters: "You", " sa", "id:", " ab", "cST", "OPd", ... so "STOP" straddles two.
    let mut req = simple("abcSTOPdef");
    req["stop"] = json!("STOP");
    let (status, body) = post(&srv, &req);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "You said: abc");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 6);
    req["stream"] = json!(true);
    let (_, _, events) = post_stream(&srv, &req);
    assert_eq!(stream_text(&events), "You said: abc");

    // A list: the earliest match wins; a partial match ("de" then "x") is released.
    let mut req = simple("abcdefgh");
    req["stop"] = json!(["fgh", "dex", "zz", "bcd"]);
    let (_, body) = post(&srv, &req);
    assert_eq!(body["choices"][0]["message"]["content"], "You said: a");
    req["stop"] = json!(["dex"]);
    let (_, body) = post(&srv, &req);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: abcdefgh"
    );

    // Five stop strings are refused.
    req["stop"] = json!(["a", "b", "c", "d", "e"]);
    let (status, body) = post(&srv, &req);
    let (_, msg, param) = error_of(status, &body, 400);
    assert!(msg.contains("at most 4"), "{msg}");
    assert_eq!(param.as_deref(), Some("stop"));
}

#[test]
fn max_tokens_gives_finish_reason_length() {
    let srv = start_default();
    let mut req = simple("a long enough sentence");
    req["max_tokens"] = json!(2);
    let (status, body) = post(&srv, &req);
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], "You sa");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 2);
    req["stream"] = json!(true);
    let (_, _, events) = post_stream(&srv, &req);
    assert_eq!(stream_text(&events), "You sa");
    let fin: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
}

#[test]
fn image_errors_are_400_naming_the_image() {
    let cfg = ServerConfig {
        max_images_per_request: 3,
        max_image_bytes: 50_000,
        max_image_pixels: 10_000,
        ..Default::default()
    };
    let srv = start(MockEngine::default(), cfg);
    let one = |url: String| {
        chat(vec![user(vec![
            text_part("x"),
            image_part(&png_uri(2, 2, [0, 0, 0])),
            image_part(&url),
        ])])
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (corrupt_png_uri(), "invalid_image", "cannot decode"),
        (
            data_uri("image/tiff", b"II*\0\x08\0\0\0\0\0\0\0"),
            "unsupported_image_format",
            "unsupported image format",
        ),
        (
            data_uri("image/png", b"RIFF\x24\0\0\0WAVEfmt data"),
            "invalid_image",
            "not a recognised image",
        ),
        (
            data_uri("image/png", b"this is text, not a png"),
            "invalid_image",
            "not a recognised image",
        ),
        ("data:image/png;base64,".into(), "invalid_image", "empty"),
        (
            "data:image/png;base64,@@@not-base64@@@".into(),
            "invalid_image",
            "base64",
        ),
        (
            "data:text/plain;base64,aGVsbG8=".into(),
            "invalid_image",
            "not an image",
        ),
        (
            "iVBORw0KGgoAAAANSUhEUg".into(),
            "invalid_image_url",
            "data URI",
        ),
        (png_uri(101, 100, [0, 0, 0]), "image_too_large", "pixels"),
        (
            data_uri("image/png", &vec![0u8; 60_000]),
            "image_too_large",
            "bytes",
        ),
        (
            "/etc/passwd".into(),
            "image_url_not_allowed",
            "local file paths are refused",
        ),
        (
            "file:///etc/hostname".into(),
            "image_url_not_allowed",
            "local file paths are refused",
        ),
        (
            "ftp://example.com/a.png".into(),
            "invalid_image_url",
            "data URI",
        ),
    ];
    for (url, code, needle) in cases {
        let (status, body) = post(&srv, &one(url.clone()));
        let (c, msg, param) = error_of(status, &body, 400);
        assert_eq!(c, code, "{url:.60}: {msg}");
        assert!(
            msg.starts_with("image 1: ") && msg.contains(needle),
            "{url:.60}: {msg}"
        );
        assert_eq!(param.as_deref(), Some("messages[0].content[2].image_url"));
    }
    // Too many images, counted over all messages.
    let img = || image_part(&png_uri(2, 2, [0, 0, 0]));
    let req = chat(vec![
        user(vec![img(), img()]),
        json!({"role": "assistant", "content": "ok"}),
        user(vec![img(), img()]),
    ]);
    let (status, body) = post(&srv, &req);
    let (code, msg, _) = error_of(status, &body, 400);
    assert_eq!(code, "too_many_images");
    assert!(
        msg.contains("4 images") && msg.contains("limit is 3"),
        "{msg}"
    );
    // Images outside user messages are refused, not dropped.
    let req = chat(vec![
        json!({"role": "assistant", "content": [img()]}),
        user(vec![text_part("x")]),
    ]);
    let (status, body) = post(&srv, &req);
    error_of(status, &body, 400);
    // The server is still fine.
    let (status, _) = post(&srv, &simple("still up"));
    assert_eq!(status, 200);
}

#[test]
fn prompts_longer_than_the_context_name_the_image_cost() {
    let engine = MockEngine {
        context_length: 400,
        ..Default::default()
    };
    let srv = start(engine, ServerConfig::default());
    let split_image = json!({"type": "image_url", "image_url": {"url": png_uri(8, 8, [1, 1, 1]), "detail": "high"}});
    let req = chat(vec![user(vec![
        split_image.clone(),
        split_image.clone(),
        text_part("hi"),
    ])]);
    let (status, body) = post(&srv, &req);
    let (code, msg, _) = error_of(status, &body, 400);
    assert_eq!(code, "context_length_exceeded");
    assert!(
        msg.contains("640 of them image tokens")
            && msg.contains("image 0 costs 320")
            && msg.contains("400"),
        "{msg}"
    );
    // Fits alone, but not with this max_tokens.
    let mut req = chat(vec![user(vec![split_image, text_part("hi")])]);
    req["max_tokens"] = json!(100);
    let (status, body) = post(&srv, &req);
    let (code, msg, param) = error_of(status, &body, 400);
    assert_eq!(
        (code.as_str(), param.as_deref()),
        ("context_length_exceeded", Some("max_tokens"))
    );
    assert!(
        msg.contains("max_tokens 100") && msg.contains("image 0 costs 320"),
        "{msg}"
    );
    req["max_tokens"] = json!(20);
    assert_eq!(post(&srv, &req).0, 200);
}

#[test]
fn unsupported_parameters_and_bad_requests_are_clear_errors() {
    let srv = start_default();
    for (key, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f"}}]),
        ),
        ("response_format", json!({"type": "json_object"})),
        ("presence_penalty", json!(0.5)),
        ("best_of", json!(2)),
    ] {
        let mut req = simple("x");
        req[key] = value;
        let (status, body) = post(&srv, &req);
        let (code, msg, param) = error_of(status, &body, 400);
        assert_eq!(code, "unsupported_parameter", "{key}");
        assert_eq!(param.as_deref(), Some(key));
        assert!(msg.contains(key), "{msg}");
    }
    // Neutral values of unsupported features are fine.
    let mut req = simple("x");
    req["n"] = json!(1);
    req["logprobs"] = json!(false);
    req["tools"] = json!([]);
    req["temperature"] = json!(0.7);
    req["top_p"] = json!(0.9);
    req["seed"] = json!(42);
    assert_eq!(post(&srv, &req).0, 200);

    let (status, body) = post_raw(&srv, b"{\"messages\": [");
    assert!(error_of(status, &body, 400).1.contains("not valid JSON"));
    let mut req = simple("x");
    req["model"] = json!("gpt-4o");
    let (status, body) = post(&srv, &req);
    assert_eq!(error_of(status, &body, 404).0, "model_not_found");
    let (status, body) = post(
        &srv,
        &json!({"messages": [{"role": "tool", "content": "x"}]}),
    );
    error_of(status, &body, 400);
    let (status, body) = post(
        &srv,
        &json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
    );
    assert_eq!(
        error_of(status, &body, 400).2.as_deref(),
        Some("messages[0].content[0].type")
    );
    let mut req = simple("x");
    req["stream_options"] = json!({"include_usage": true});
    let (status, body) = post(&srv, &req);
    assert_eq!(
        error_of(status, &body, 400).2.as_deref(),
        Some("stream_options")
    );
}

#[test]
fn body_over_the_limit_is_413() {
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            max_body_bytes: 1000,
            ..Default::default()
        },
    );
    let (status, body) = post(&srv, &simple(&"x".repeat(2000)));
    assert_eq!(error_of(status, &body, 413).0, "request_too_large");
}

#[test]
fn models_health_and_unknown_routes() {
    let srv = start_default();
    let (status, body) = get(&srv, "/v1/models");
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "idefics-mock");
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["image_tokens"]["per_image"], 64);
    assert_eq!(body["data"][0]["image_tokens"]["per_image_split"], 320);
    assert_eq!(get(&srv, "/v1/models/idefics-mock").0, 200);
    assert_eq!(get(&srv, "/v1/models/other").0, 404);
    let (status, body) = get(&srv, "/health");
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&srv, "/v2/nothing");
    assert_eq!(status, 404);
    assert!(body["error"]["message"].is_string());
}

#[test]
fn image_urls_are_fetched_with_checks() {
    let img_srv = image_http_server();
    let cfg = ServerConfig {
        allow_private_urls: true,
        max_image_bytes: 200_000,
        fetch_timeout: std::time::Duration::from_millis(700),
        ..Default::default()
    };
    let srv = start(MockEngine::default(), cfg);
    let req = |path: &str| {
        chat(vec![user(vec![
            text_part("u"),
            image_part(&format!("http://{img_srv}{path}")),
        ])])
    };
    for path in ["/img.png", "/octet", "/redirect"] {
        let (status, body) = post(&srv, &req(path));
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "You said: u | turn 1, 1 image(s): 6x4 #0000ff"
        );
    }
    for (path, needle) in [
        ("/404", "HTTP 404"),
        ("/500", "HTTP 500"),
        ("/html", "content type 'text/html'"),
        ("/big", "over the limit"),
        ("/slow", "timed out"),
        ("/loop", "redirects"),
        ("/corrupt", "cannot decode"),
    ] {
        let (status, body) = post(&srv, &req(path));
        let (_, msg, _) = error_of(status, &body, 400);
        assert!(
            msg.starts_with("image 0: ") && msg.contains(needle),
            "{path}: {msg}"
        );
    }
    // Nothing listening there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, body) = post(
        &srv,
        &chat(vec![user(vec![image_part(&format!(
            "http://{closed}/x.png"
        ))])]),
    );
    assert!(error_of(status, &body, 400).1.contains("could not fetch"));

    // Default policy: loopback / private targets are refused (SSRF guard).
    let strict = start_default();
    let (status, body) = post(&strict, &req("/img.png"));
    let (code, msg, _) = error_of(status, &body, 400);
    assert_eq!(code, "image_url_not_allowed", "{msg}");
}

#[test]
fn local_files_only_inside_the_allowed_directory() {
    let dir = tempfile::tempdir().unwrap();
    let inside = dir.path().join("a.png");
    std::fs::write(&inside, png_bytes(7, 2, [1, 2, 3])).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), png_bytes(7, 2, [1, 2, 3])).unwrap();
    let cfg = ServerConfig {
        allowed_local_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let srv = start(MockEngine::default(), cfg);
    let req = |p: String| chat(vec![user(vec![text_part("f"), image_part(&p)])]);
    let (status, body) = post(&srv, &req(format!("file://{}", inside.display())));
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .ends_with("7x2 #010203"));
    let (status, body) = post(&srv, &req(outside.path().display().to_string()));
    assert_eq!(error_of(status, &body, 400).0, "image_url_not_allowed");
    let sneaky = format!(
        "{}/../{}",
        dir.path().display(),
        outside.path().file_name().unwrap().to_string_lossy()
    );
    let (status, body) = post(&srv, &req(sneaky));
    error_of(status, &body, 400);
}
