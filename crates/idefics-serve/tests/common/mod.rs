//! Shared helpers: start the server on 127.0.0.1:0 with the mock engine, a tiny HTTP client, test images, and a
//! loopback image server for URL fetching.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use idefics_serve::{MockEngine, ServerConfig, ServerHandle};
use serde_json::{json, Value};

pub struct TestServer {
    pub handle: Mutex<Option<ServerHandle>>,
    pub engine: Arc<MockEngine>,
    pub addr: SocketAddr,
    pub base: String,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    /// Graceful shutdown (callable while other threads still send requests).
    pub fn shutdown(&self) {
        let handle = self.handle.lock().unwrap().take();
        if let Some(h) = handle {
            h.shutdown().unwrap();
        }
    }
}

pub fn start(engine: MockEngine, config: ServerConfig) -> TestServer {
    let engine = Arc::new(engine);
    start_engine(engine.clone(), engine, config)
}

/// Starts any engine; `mock` is only read by tests that inspect the mock's statistics.
pub fn start_engine(
    engine: Arc<dyn idefics_serve::ChatEngine>,
    mock: Arc<MockEngine>,
    config: ServerConfig,
) -> TestServer {
    let engine_for_stats = mock;
    let handle = idefics_serve::spawn(engine, config, "127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = handle.addr();
    TestServer {
        handle: Mutex::new(Some(handle)),
        engine: engine_for_stats,
        addr,
        base: format!("http://{addr}"),
    }
}

pub fn start_default() -> TestServer {
    start(MockEngine::default(), ServerConfig::default())
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// POST a JSON body; returns (status, parsed JSON body).
pub fn post(srv: &TestServer, body: &Value) -> (u16, Value) {
    post_raw(srv, body.to_string().as_bytes())
}

pub fn post_raw(srv: &TestServer, body: &[u8]) -> (u16, Value) {
    let mut resp = agent()
        .post(&srv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body)
        .expect("request failed");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("read body");
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body ({e}): {text}"));
    (status, json)
}

pub fn get(srv: &TestServer, path: &str) -> (u16, Value) {
    let mut resp = agent().get(&srv.url(path)).call().expect("request failed");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("read body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// POST with `stream: true`; returns (status, content-type, every `data:` payload in order).
pub fn post_stream(srv: &TestServer, body: &Value) -> (u16, String, Vec<String>) {
    let resp = agent()
        .post(&srv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("request failed");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut events = Vec::new();
    for line in reader.lines() {
        let line = line.expect("read stream");
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_string());
        } else {
            assert!(line.is_empty(), "unexpected SSE line {line:?}");
        }
    }
    (status, ctype, events)
}

/// Concatenated content of a stream's chunks.
pub fn stream_text(events: &[String]) -> String {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

pub fn png_bytes(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub fn png_uri(w: u32, h: u32, rgb: [u8; 3]) -> String {
    data_uri("image/png", &png_bytes(w, h, rgb))
}

/// A PNG cut in the middle: header fine, pixel data missing.
pub fn corrupt_png_uri() -> String {
    let bytes = png_bytes(64, 64, [1, 2, 3]);
    data_uri("image/png", &bytes[..bytes.len() / 2])
}

pub fn text_part(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

pub fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

pub fn user(parts: Vec<Value>) -> Value {
    json!({"role": "user", "content": parts})
}

pub fn chat(messages: Vec<Value>) -> Value {
    json!({"model": "idefics-mock", "messages": messages})
}

pub fn simple(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

/// Assert the OpenAI error shape and return (code, message, param).
pub fn error_of(status: u16, body: &Value, expect_status: u16) -> (String, String, Option<String>) {
    assert_eq!(status, expect_status, "body: {body}");
    let e = &body["error"];
    assert!(
        e["type"].is_string() && e["message"].is_string(),
        "not an OpenAI error: {body}"
    );
    (
        e["code"].as_str().unwrap_or("").to_string(),
        e["message"].as_str().unwrap_or("").to_string(),
        e["param"].as_str().map(str::to_string),
    )
}

/// A loopback-only HTTP server for image URLs. Routes: /img.png, /octet, /404, /500, /html, /big, /slow,
/// /redirect (→ /img.png), /loop (→ /loop), /corrupt.
pub fn image_http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let png = png_bytes(6, 4, [0, 0, 255]);
                let reply = |status: &str, headers: &str, body: &[u8]| -> Vec<u8> {
                    let mut r = format!(
                        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                };
                let out = match path.as_str() {
                    "/img.png" => reply("200 OK", "Content-Type: image/png\r\n", &png),
                    "/octet" => reply("200 OK", "Content-Type: application/octet-stream\r\n", &png),
                    "/404" => reply("404 Not Found", "Content-Type: text/plain\r\n", b"nope"),
                    "/500" => reply(
                        "500 Internal Server Error",
                        "Content-Type: text/plain\r\n",
                        b"boom",
                    ),
                    "/html" => reply("200 OK", "Content-Type: text/html\r\n", b"<html>hi</html>"),
                    "/corrupt" => reply(
                        "200 OK",
                        "Content-Type: image/png\r\n",
                        &png[..png.len() / 2],
                    ),
                    "/big" => reply("200 OK", "Content-Type: image/png\r\n", &vec![0u8; 300_000]),
                    "/redirect" => reply("302 Found", "Location: /img.png\r\n", b""),
                    "/loop" => reply("302 Found", "Location: /loop\r\n", b""),
                    "/slow" => {
                        std::thread::sleep(Duration::from_secs(3));
                        reply("200 OK", "Content-Type: image/png\r\n", &png)
                    }
                    _ => reply("404 Not Found", "", b""),
                };
                let _ = stream.write_all(&out);
            });
        }
    });
    addr
}
