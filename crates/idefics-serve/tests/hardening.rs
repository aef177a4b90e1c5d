//! The server under hostile clients and hostile image hosts (issue 21, section 2), on loopback only: SSRF by DNS
//! rebinding and redirects, fetch deadlines, error messages that quote nothing fetched, text and image memory
//! caps, the prefill budget, model names, slow and idle connections, shutdown, fetch slots and cancellation.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use idefics_serve::{Dns, MockEngine, ServerConfig};
use serde_json::json;

/// A loopback HTTP server on `bind` whose answer to each path is `route(path)`, given the raw stream (so a route
/// can stall, trickle or close). Returns the bound address.
fn route_server(
    bind: &str,
    route: impl Fn(&str, &mut TcpStream) + Send + Sync + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let route = Arc::new(route);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let route = route.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                route(&path, &mut stream);
            });
        }
    });
    addr
}

fn reply(stream: &mut TcpStream, status: &str, headers: &str, body: &[u8]) {
    let mut r = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    let _ = stream.write_all(&r);
}

fn png_reply(stream: &mut TcpStream, rgb: [u8; 3]) {
    reply(
        stream,
        "200 OK",
        "Content-Type: image/png\r\n",
        &png_bytes(6, 4, rgb),
    );
}

fn image_request(url: &str) -> serde_json::Value {
    chat(vec![user(vec![text_part("u"), image_part(url)])])
}

/// A resolver for `name` that answers `first` once and `later` afterwards: a rebinding DNS server.
fn rebinding_dns(name: &'static str, first: IpAddr, later: IpAddr) -> (Dns, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let dns = Dns(Arc::new(move |host: &str, _port: u16| {
        if host != name {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "unknown host",
            ));
        }
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Ok(vec![if n == 0 { first } else { later }])
    }));
    (dns, calls)
}

/// The same port on 127.0.0.2 ("public": allowed by `allowed_url_ips`) and 127.0.0.1 ("internal"), counting
/// the internal server's hits.
fn public_and_internal() -> (u16, Arc<AtomicUsize>) {
    for _ in 0..20 {
        let public = route_server("127.0.0.2:0", |path, s| match path {
            "/img.png" => png_reply(s, [0, 0, 255]),
            "/to-internal" => reply(
                s,
                "302 Found",
                &format!(
                    "Location: http://localhost:{}/img.png\r\n",
                    s.local_addr().unwrap().port()
                ),
                b"",
            ),
            _ => reply(s, "404 Not Found", "", b""),
        });
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let internal = TcpListener::bind(("127.0.0.1", public.port()));
        let Ok(internal) = internal else { continue };
        std::thread::spawn(move || {
            for stream in internal.incoming() {
                let Ok(mut stream) = stream else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                png_reply(&mut stream, [255, 0, 0]);
            }
        });
        return (public.port(), hits);
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

#[test]
fn dns_rebinding_cannot_reach_an_internal_address() {
    let (port, internal_hits) = public_and_internal();
    let public: IpAddr = "127.0.0.2".parse().unwrap();
    let internal: IpAddr = "127.0.0.1".parse().unwrap();
    let (dns, lookups) = rebinding_dns("localhost", public, internal);
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            allowed_url_ips: vec![public],
            dns: Some(dns),
            ..Default::default()
        },
    );
    // First lookup says 127.0.0.2 (allowed); any second lookup (ours, or the system resolver's if the HTTP
    // client resolved the name again) says 127.0.0.1. The fetch must connect to the address it checked.
    let (status, body) = post(
        &srv,
        &image_request(&format!("http://localhost:{port}/img.png")),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "You said: u | turn 1, 1 image(s): 6x4 #0000ff"
    );
    assert_eq!(
        lookups.load(Ordering::SeqCst),
        1,
        "the host was resolved again"
    );
    assert_eq!(internal_hits.load(Ordering::SeqCst), 0);

    // A redirect back to the same name is a new hop: resolved and checked again, and now refused.
    let (status, body) = post(
        &srv,
        &image_request(&format!("http://127.0.0.2:{port}/to-internal")),
    );
    let (code, msg, _) = error_of(status, &body, 400);
    assert_eq!(code, "image_url_not_allowed", "{msg}");
    assert_eq!(internal_hits.load(Ordering::SeqCst), 0);
    srv.shutdown();
}

#[test]
fn one_deadline_covers_every_redirect_hop() {
    // Each hop answers after 400 ms: 5 hops take 2 s, more than the 1 s fetch timeout, although every single
    // hop is well within it.
    let chain = route_server("127.0.0.1:0", |path, s| {
        std::thread::sleep(Duration::from_millis(400));
        match path
            .strip_prefix("/chain/")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(0) => png_reply(s, [0, 0, 255]),
            Some(n) => reply(
                s,
                "302 Found",
                &format!("Location: /chain/{}\r\n", n - 1),
                b"",
            ),
            None => reply(s, "404 Not Found", "", b""),
        }
    });
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            allow_private_urls: true,
            fetch_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let (status, body) = post(&srv, &image_request(&format!("http://{chain}/chain/4")));
    let took = started.elapsed();
    let (_, msg, _) = error_of(status, &body, 400);
    assert!(msg.contains("timed out"), "{msg}");
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    // A short chain fits.
    let (status, body) = post(&srv, &image_request(&format!("http://{chain}/chain/1")));
    assert_eq!(status, 200, "{body}");
    srv.shutdown();
}

#[test]
fn a_stuck_name_lookup_times_out() {
    let slow_dns = Dns(Arc::new(|_: &str, _: u16| {
        std::thread::sleep(Duration::from_secs(5));
        Ok(vec!["127.0.0.1".parse().unwrap()])
    }));
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            allow_private_urls: true,
            dns: Some(slow_dns),
            dns_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let (status, body) = post(&srv, &image_request("http://slow-dns.test/x.png"));
    let (_, msg, _) = error_of(status, &body, 400);
    assert!(msg.contains("lookup timed out"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(2));
    srv.shutdown();
}

#[test]
fn fetch_errors_quote_nothing_the_remote_side_sent() {
    const SECRET: &str = "SECRET-7f3a";
    let host = route_server("127.0.0.1:0", |path, s| match path {
        "/ctype" => reply(
            s,
            "200 OK",
            &format!("Content-Type: text/x-{SECRET}\r\n"),
            b"x",
        ),
        "/body" => reply(
            s,
            "200 OK",
            "Content-Type: image/png\r\n",
            format!("{SECRET} internal config").as_bytes(),
        ),
        "/banner" => {
            let _ = s.write_all(format!("{SECRET} redis banner\r\n\r\n").as_bytes());
        }
        "/header" => {
            let _ =
                s.write_all(format!("HTTP/1.1 200 OK\r\nBad Header {SECRET}\r\n\r\n").as_bytes());
        }
        "/redirect" => reply(s, "302 Found", &format!("Location: /{SECRET}\r\n"), b""),
        _ => reply(s, "404 Not Found", "", SECRET.as_bytes()),
    });
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            allow_private_urls: true,
            ..Default::default()
        },
    );
    let hex: String = SECRET.as_bytes()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    for path in ["/ctype", "/body", "/banner", "/header", "/redirect"] {
        let (status, body) = post(&srv, &image_request(&format!("http://{host}{path}")));
        let (_, msg, _) = error_of(status, &body, 400);
        assert!(msg.starts_with("image 0: "), "{path}: {msg}");
        let lower = msg.to_ascii_lowercase();
        assert!(
            !lower.contains(&SECRET.to_ascii_lowercase()) && !lower.contains(&hex),
            "{path}: the error quotes the remote answer: {msg}"
        );
    }
    srv.shutdown();
}

#[test]
fn oversized_text_is_refused_before_tokenising() {
    let engine = Arc::new(MockEngine::default());
    let srv = start_engine(engine.clone(), engine.clone(), ServerConfig::default());
    // ~60 MiB of private-use characters (3 bytes each), under the 64 MiB body limit.
    let text: String = std::iter::repeat_n('\u{E000}', 20 * 1024 * 1024).collect();
    let body = json!({"messages": [{"role": "user", "content": text}]}).to_string();
    drop(text);
    let started = Instant::now();
    let (status, resp) = post_raw(&srv, body.as_bytes());
    let (code, msg, _) = error_of(status, &resp, 400);
    assert_eq!(code, "text_too_long", "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // Under the byte cap but too long for the context by length alone: still no template or tokenizer run.
    let (status, resp) = post(&srv, &simple(&"\u{E000}".repeat(100_000)));
    let (code, msg, _) = error_of(status, &resp, 400);
    assert_eq!(code, "context_length_exceeded", "{msg}");
    let many: Vec<serde_json::Value> = (0..600)
        .map(|_| json!({"role": "user", "content": "x"}))
        .collect();
    let (status, resp) = post(&srv, &json!({ "messages": many }));
    assert_eq!(error_of(status, &resp, 400).0, "too_many_messages");
    assert_eq!(
        engine.prompts_counted(),
        0,
        "a refused prompt was tokenised"
    );
    assert_eq!(post(&srv, &simple("fine")).0, 200);
    srv.shutdown();
}

#[test]
fn queued_image_memory_is_bounded() {
    // 64x64 RGB = 12 288 bytes per image; the budget holds two.
    let engine = MockEngine {
        step_delay: Duration::from_millis(30),
        max_batch_size: 1,
        ..Default::default()
    };
    let srv = start(
        engine,
        ServerConfig {
            max_queued_image_bytes: 30_000,
            ..Default::default()
        },
    );
    let two = chat(vec![user(vec![
        text_part(&"long answer ".repeat(10)),
        image_part(&png_uri(64, 64, [1, 2, 3])),
        image_part(&png_uri(64, 64, [1, 2, 3])),
    ])]);
    let one = chat(vec![user(vec![
        text_part("x"),
        image_part(&png_uri(64, 64, [4, 5, 6])),
    ])]);
    std::thread::scope(|s| {
        let first = s.spawn(|| post(&srv, &two));
        // Wait until the first request holds its images.
        let t0 = Instant::now();
        while get(&srv, "/health").1["image_bytes"].as_u64() != Some(24_576) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "first request never admitted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (status, body) = post(&srv, &one);
        assert_eq!(error_of(status, &body, 503).0, "server_overloaded");
        assert_eq!(post(&srv, &simple("text only")).0, 200);
        assert_eq!(first.join().unwrap().0, 200);
    });
    assert_eq!(get(&srv, "/health").1["image_bytes"], 0);
    assert_eq!(post(&srv, &one).0, 200);
    // A request that could never fit is a 400, not a 503 to retry forever.
    let three = chat(vec![user(vec![
        image_part(&png_uri(64, 64, [1, 2, 3])),
        image_part(&png_uri(64, 64, [1, 2, 3])),
        image_part(&png_uri(64, 64, [1, 2, 3])),
    ])]);
    let (status, body) = post(&srv, &three);
    assert_eq!(error_of(status, &body, 400).0, "image_too_large");
    srv.shutdown();
}

#[test]
fn prompts_whose_prefill_exceeds_the_budget_are_refused() {
    let engine = MockEngine {
        attention_heads: 8,
        ..Default::default()
    };
    // 4 bytes × 2 × 8 heads × tokens²: 1000 tokens = 64 MB.
    let srv = start(
        engine,
        ServerConfig {
            max_prefill_bytes: 64_000_000,
            ..Default::default()
        },
    );
    let (status, _) = post(&srv, &simple(&"a".repeat(2_500))); // ~840 tokens
    assert_eq!(status, 200);
    let (status, body) = post(&srv, &simple(&"a".repeat(6_000))); // ~2000 tokens, in the context of 4096
    let (code, msg, _) = error_of(status, &body, 400);
    assert_eq!(code, "prefill_too_large");
    assert!(msg.contains("MiB") && msg.contains("tokens"), "{msg}");
    srv.shutdown();
}

#[test]
fn served_name_aliases_and_unknown_models() {
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            model_aliases: vec!["models/idefics-mock".into()],
            ..Default::default()
        },
    );
    let mut req = simple("hi");
    req["model"] = json!("models/idefics-mock");
    let (status, body) = post(&srv, &req);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "idefics-mock");
    assert_eq!(get(&srv, "/v1/models/models%2Fidefics-mock").0, 200);
    req["model"] = json!("gpt-4o");
    let (status, body) = post(&srv, &req);
    assert_eq!(error_of(status, &body, 404).0, "model_not_found");
    srv.shutdown();

    let any = start(
        MockEngine::default(),
        ServerConfig {
            accept_any_model: true,
            ..Default::default()
        },
    );
    let (status, body) = post(&any, &req);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "idefics-mock");
    any.shutdown();
}

#[test]
fn stop_strings_are_capped() {
    let srv = start_default();
    let mut req = simple("hi");
    req["stop"] = json!(["a".repeat(257)]);
    let (status, body) = post(&srv, &req);
    assert_eq!(error_of(status, &body, 400).2.as_deref(), Some("stop"));
    req["stop"] = json!(["b".repeat(256)]);
    assert_eq!(post(&srv, &req).0, 200);
    srv.shutdown();
}

/// Whether the server closed `stream` within `within` (reads return EOF or an error).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let until = Instant::now() + within;
    let mut buf = [0u8; 1024];
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// A client that sends a request line and then one header byte every 100 ms, forever.
fn slowloris(addr: SocketAddr) -> (TcpStream, Arc<std::sync::atomic::AtomicBool>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut w, flag) = (s.try_clone().unwrap(), stop.clone());
    std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            if w.write_all(b"X").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (s, stop)
}

#[test]
fn slow_headers_and_slow_bodies_are_cut_off() {
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            header_read_timeout: Duration::from_millis(800),
            body_read_timeout: Duration::from_millis(800),
            ..Default::default()
        },
    );
    let (mut trickle, stop) = slowloris(srv.addr);
    assert!(
        closed_within(&mut trickle, Duration::from_secs(4)),
        "a client trickling header bytes kept its connection"
    );
    stop.store(true, Ordering::SeqCst);

    // Headers complete, body never finishes: a 408.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mess",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let mut head = [0u8; 12];
    let n = s.read(&mut head).unwrap_or(0);
    assert_eq!(
        &head[..n.min(12)],
        b"HTTP/1.1 408",
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    assert_eq!(post(&srv, &simple("still fine")).0, 200);
    srv.shutdown();
}

#[test]
fn connections_are_capped() {
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            max_connections: 2,
            ..Default::default()
        },
    );
    let holders: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(srv.addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // A third client is not served while two connections are open...
    let served = |timeout: Duration| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        agent.get(&srv.url("/health")).call().is_ok()
    };
    assert!(
        !served(Duration::from_millis(700)),
        "a third connection was served"
    );
    // ...and is as soon as one closes.
    drop(holders);
    assert!(served(Duration::from_secs(5)));
    srv.shutdown();
}

#[test]
fn shutdown_is_not_held_up_by_slow_clients() {
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            shutdown_grace: Duration::from_millis(300),
            header_read_timeout: Duration::from_secs(60),
            ..Default::default()
        },
    );
    let (_trickle, stop) = slowloris(srv.addr);
    let idle = TcpStream::connect(srv.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (tx, rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        srv.shutdown();
        let _ = tx.send(());
    });
    let done = rx.recv_timeout(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    drop(idle);
    assert!(done.is_ok(), "shutdown still waiting after 6 s");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

/// A host whose `/hang` answers only after `hold`, recording when the fetching side closed its connection.
fn hanging_host(hold: Duration) -> (SocketAddr, Arc<Mutex<Option<Instant>>>) {
    let closed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let record = closed_at.clone();
    let addr = route_server("127.0.0.1:0", move |_, s| {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let until = Instant::now() + hold;
        let mut buf = [0u8; 16];
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => {
                    *record.lock().unwrap() = Some(Instant::now());
                    return;
                }
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    *record.lock().unwrap() = Some(Instant::now());
                    return;
                }
            }
        }
        png_reply(s, [0, 0, 255]);
    });
    (addr, closed_at)
}

#[test]
fn image_fetches_do_not_hold_decoding_slots() {
    let (host, _) = hanging_host(Duration::from_secs(3));
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            allow_private_urls: true,
            preprocess_concurrency: 1,
            ..Default::default()
        },
    );
    std::thread::scope(|s| {
        let slow = s.spawn(|| post(&srv, &image_request(&format!("http://{host}/hang"))));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let (status, body) = post(&srv, &image_request(&png_uri(4, 4, [9, 9, 9])));
        assert_eq!(status, 200, "{body}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "a data-URI image waited {:?} behind a network fetch",
            started.elapsed()
        );
        assert_eq!(slow.join().unwrap().0, 200);
    });
    srv.shutdown();
}

#[test]
fn a_client_that_leaves_cancels_its_image_fetch() {
    let (host, closed_at) = hanging_host(Duration::from_secs(8));
    let srv = start(
        MockEngine::default(),
        ServerConfig {
            allow_private_urls: true,
            fetch_timeout: Duration::from_secs(30),
            ..Default::default()
        },
    );
    let body = image_request(&format!("http://{host}/hang")).to_string();
    let mut client = TcpStream::connect(srv.addr).unwrap();
    write!(
        client,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let left = Instant::now();
    drop(client);
    let t0 = Instant::now();
    while closed_at.lock().unwrap().is_none() && t0.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let closed = closed_at
        .lock()
        .unwrap()
        .expect("the fetch was never cancelled");
    assert!(
        closed.duration_since(left) < Duration::from_secs(2),
        "the fetch went on for {:?} after the client left",
        closed.duration_since(left)
    );
    srv.shutdown();
}
