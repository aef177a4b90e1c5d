//! Serving behaviour under load and failure: batching, isolation of bad requests and engine failures, queue
//! limits, timeouts, client disconnects and graceful shutdown. Mock engine on 127.0.0.1:0.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use common::*;
use idefics_serve::{MockEngine, ServerConfig};
use serde_json::json;

fn slow_engine(step_ms: u64, max_batch: usize) -> MockEngine {
    MockEngine {
        step_delay: Duration::from_millis(step_ms),
        max_batch_size: max_batch,
        ..Default::default()
    }
}

#[test]
fn corrupt_images_interleaved_with_good_requests() {
    let srv = start(slow_engine(2, 8), ServerConfig::default());
    let results: Vec<(usize, u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..24)
            .map(|i| {
                let srv = &srv;
                s.spawn(move || {
                    let url = if i % 4 == 0 {
                        corrupt_png_uri()
                    } else {
                        png_uri(3, 2, [i as u8, 0, 0])
                    };
                    let req = chat(vec![user(vec![
                        text_part(&format!("req {i}")),
                        image_part(&url),
                    ])]);
                    let (status, body) = post(srv, &req);
                    (i, status, body)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, status, body) in results {
        if i % 4 == 0 {
            let (code, msg, _) = error_of(status, &body, 400);
            assert_eq!(code, "invalid_image", "{msg}");
        } else {
            assert_eq!(status, 200, "request {i}: {body}");
            let want = format!("You said: req {i} | turn 1, 1 image(s): 3x2 #{i:02x}0000");
            assert_eq!(body["choices"][0]["message"]["content"], want);
        }
    }
    assert!(
        srv.engine.max_batch_seen() >= 2,
        "requests were never batched"
    );
    assert_eq!(get(&srv, "/health").0, 200);
}

#[test]
fn engine_panic_or_error_fails_only_its_own_request() {
    let cfg = ServerConfig {
        batch_window: Duration::from_millis(300),
        ..Default::default()
    };
    let srv = start(slow_engine(5, 8), cfg);
    let texts = [
        "good 1",
        "MOCK_PANIC please",
        "good 2",
        "MOCK_ENGINE_ERROR please",
        "good 3",
    ];
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| s.spawn(|| post(&srv, &simple(t))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (t, (status, body)) in texts.iter().zip(&results) {
        if t.starts_with("good") {
            assert_eq!(*status, 200, "{t}: {body}");
            assert_eq!(
                body["choices"][0]["message"]["content"],
                format!("You said: {t}")
            );
        } else {
            let (code, _, _) = error_of(*status, body, 500);
            assert_eq!(code, "internal_error");
        }
    }
    assert!(
        srv.engine.max_batch_seen() >= 2,
        "the failing requests should have shared a batch"
    );
    // Still serving.
    assert_eq!(post(&srv, &simple("after")).0, 200);
}

#[test]
fn full_queue_answers_503_and_the_rest_complete() {
    let cfg = ServerConfig {
        max_queue: 1,
        max_batch_size: 1,
        ..Default::default()
    };
    let srv = start(slow_engine(10, 1), cfg);
    let srv = &srv;
    let statuses: Vec<(u16, serde_json::Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|i| s.spawn(move || post(srv, &simple(&format!("queued {i}")))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let busy = statuses.iter().filter(|(s, _)| *s == 503).count();
    assert!(busy >= 1, "expected at least one 503: {statuses:?}");
    for (status, body) in &statuses {
        if *status == 503 {
            assert_eq!(body["error"]["code"], "server_overloaded");
        } else {
            assert_eq!(*status, 200, "{body}");
        }
    }
}

#[test]
fn request_timeout_is_504_or_an_error_event() {
    let cfg = ServerConfig {
        request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let srv = start(slow_engine(30, 8), cfg);
    let long = "x".repeat(150);
    let (status, body) = post(&srv, &simple(&long));
    assert_eq!(error_of(status, &body, 504).0, "timeout");
    let mut req = simple(&long);
    req["stream"] = json!(true);
    let (status, _, events) = post_stream(&srv, &req);
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let err: serde_json::Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "timeout", "{events:?}");
    assert!(
        !stream_text(&events).is_empty(),
        "some text should have streamed before the timeout"
    );
    assert_eq!(post(&srv, &simple("quick")).0, 200);
}

/// With batch size 1 a still-running abandoned request would delay the next one by seconds.
fn assert_next_request_is_quick(srv: &TestServer) {
    let t = Instant::now();
    let (status, _) = post(srv, &simple("next"));
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "generation was not cancelled: next took {:?}",
        t.elapsed()
    );
}

#[test]
fn disconnecting_stream_client_cancels_its_generation() {
    let srv = start(slow_engine(20, 1), ServerConfig::default());
    let mut req = simple(&"y".repeat(600)); // ~200 tokens at 20 ms = 4 s
    req["stream"] = json!(true);
    let resp = agent()
        .post(&srv.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(req.to_string().as_bytes())
        .unwrap();
    let mut lines = BufReader::new(resp.into_body().into_reader()).lines();
    let mut seen = 0;
    while seen < 3 {
        let line = lines.next().unwrap().unwrap();
        if line.starts_with("data: ") {
            seen += 1;
        }
    }
    drop(lines);
    assert_next_request_is_quick(&srv);
}

#[test]
fn disconnecting_non_stream_client_cancels_its_generation() {
    let srv = start(slow_engine(20, 1), ServerConfig::default());
    let body = simple(&"z".repeat(600)).to_string();
    let mut conn = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        conn,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(conn);
    assert_next_request_is_quick(&srv);
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let srv = start(slow_engine(10, 8), ServerConfig::default());
    let addr = srv.addr;
    let text = "a".repeat(60); // ~25 tokens at 10 ms
    std::thread::scope(|s| {
        let inflight = s.spawn(|| post(&srv, &simple(&text)));
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        srv.shutdown();
        assert!(t.elapsed() < Duration::from_secs(5));
        let (status, body) = inflight.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            format!("You said: {text}")
        );
    });
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn shutdown_grace_cancels_long_requests_cleanly() {
    let cfg = ServerConfig {
        shutdown_grace: Duration::from_millis(200),
        ..Default::default()
    };
    let srv = start(slow_engine(20, 8), cfg);
    let long = "w".repeat(900); // ~300 tokens at 20 ms = 6 s
    std::thread::scope(|s| {
        let inflight = s.spawn(|| post(&srv, &simple(&long)));
        std::thread::sleep(Duration::from_millis(150));
        let t = Instant::now();
        srv.shutdown();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "shutdown waited {:?}",
            t.elapsed()
        );
        let (status, body) = inflight.join().unwrap();
        assert_eq!(error_of(status, &body, 503).0, "server_overloaded");
    });
}
