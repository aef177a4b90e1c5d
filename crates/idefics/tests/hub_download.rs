//! Hub download against a loopback server that serves the Hub's resolve layout (HEAD with X-Repo-Commit, ETag /
//! X-Linked-Etag / X-Linked-Size, 302 to a "CDN" path for LFS files, Range requests). No network beyond 127.0.0.1.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use idefics::hub::{resolve_model, DownloadProgress, HubConfig, HubError};
use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone, Default)]
struct FileSpec {
    content: Vec<u8>,
    lfs: bool,
    /// sha256 to announce instead of the real one (hash-mismatch test)
    fake_sha: Option<String>,
    /// close the connection after this many body bytes on the next GET (then serve normally)
    cut_after: Option<usize>,
}

#[derive(Default)]
struct State {
    /// repo -> file -> spec
    repos: HashMap<String, HashMap<String, FileSpec>>,
    /// "METHOD path [range]" per request
    log: Vec<String>,
    /// required bearer token, if any
    token: Option<String>,
}

struct Server {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn git_sha_like(b: &[u8]) -> String {
    sha256_hex(b)[..40].to_string()
}

impl Server {
    fn start(state: State) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(state));
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(stream, &st));
            }
        });
        Server { endpoint, state }
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

fn respond(stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

fn handle(mut stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let mut st = state.lock().unwrap();
    st.log.push(
        format!("{method} {path} {}", range.clone().unwrap_or_default())
            .trim()
            .to_string(),
    );
    if let Some(tok) = &st.token {
        if headers.get("authorization") != Some(&format!("Bearer {tok}"))
            && !path.starts_with("/cdn/")
        {
            drop(st);
            return respond(&mut stream, "401 Unauthorized", &[], b"");
        }
    }
    // /cdn/<repo--name>/<file> serves LFS bytes; /<org>/<name>/resolve/<rev>/<file> is the Hub API.
    let (repo, file, cdn) = if let Some(rest) = path.strip_prefix("/cdn/") {
        let (r, f) = rest.split_once('/').unwrap_or(("", ""));
        (r.replace("--", "/"), f.to_string(), true)
    } else {
        let segs: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
        if segs.len() != 5 || segs[2] != "resolve" {
            drop(st);
            return respond(&mut stream, "400 Bad Request", &[], b"");
        }
        (
            format!("{}/{}", segs[0], segs[1]),
            segs[4].to_string(),
            false,
        )
    };
    let Some(spec) = st.repos.get(&repo).and_then(|r| r.get(&file)).cloned() else {
        drop(st);
        return respond(
            &mut stream,
            "404 Not Found",
            &[
                ("X-Error-Code".into(), "EntryNotFound".into()),
                ("Content-Length".into(), "0".into()),
            ],
            b"",
        );
    };
    let sha = spec
        .fake_sha
        .clone()
        .unwrap_or_else(|| sha256_hex(&spec.content));
    let mut common = vec![("X-Repo-Commit".to_string(), COMMIT.to_string())];
    if spec.lfs && !cdn {
        common.push(("X-Linked-Etag".into(), format!("\"{sha}\"")));
        common.push(("X-Linked-Size".into(), spec.content.len().to_string()));
        common.push(("ETag".into(), format!("\"{}\"", git_sha_like(b"pointer"))));
        common.push((
            "Location".into(),
            format!("/cdn/{}/{file}", repo.replace('/', "--")),
        ));
        common.push(("Content-Length".into(), "0".into()));
        drop(st);
        return respond(&mut stream, "302 Found", &common, b"");
    }
    if !spec.lfs {
        common.push((
            "ETag".into(),
            format!("\"{}\"", git_sha_like(&spec.content)),
        ));
    }
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
        .unwrap_or(0)
        .min(spec.content.len());
    let body = &spec.content[start..];
    let mut status = "200 OK";
    if start > 0 {
        status = "206 Partial Content";
        common.push((
            "Content-Range".into(),
            format!(
                "bytes {start}-{}/{}",
                spec.content.len() - 1,
                spec.content.len()
            ),
        ));
    }
    common.push(("Content-Length".into(), body.len().to_string()));
    let cut = if method == "GET" {
        st.repos
            .get_mut(&repo)
            .and_then(|r| r.get_mut(&file))
            .and_then(|s| s.cut_after.take())
    } else {
        None
    };
    drop(st);
    if method == "HEAD" {
        return respond(&mut stream, status, &common, b"");
    }
    match cut {
        Some(n) => respond(&mut stream, status, &common, &body[..n.min(body.len())]),
        None => respond(&mut stream, status, &common, body),
    }
}

fn weights(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 31 + seed as usize * 7) % 251) as u8)
        .collect()
}

fn model_repo(weight_bytes: usize) -> HashMap<String, FileSpec> {
    let text = |s: &str| FileSpec {
        content: s.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut m = HashMap::new();
    m.insert("config.json".into(), text(r#"{"model_type": "idefics2"}"#));
    m.insert("tokenizer.json".into(), text(r#"{"version": "1.0"}"#));
    m.insert(
        "tokenizer_config.json".into(),
        text(r#"{"add_bos_token": true}"#),
    );
    m.insert(
        "processor_config.json".into(),
        text(r#"{"image_seq_len": 64}"#),
    );
    m.insert(
        "model.safetensors".into(),
        FileSpec {
            content: weights(weight_bytes, 1),
            lfs: true,
            ..Default::default()
        },
    );
    m
}

fn config(cache: &Path, endpoint: &str) -> HubConfig {
    HubConfig {
        endpoint: endpoint.to_string(),
        cache_dir: cache.to_path_buf(),
        token: None,
        offline: false,
    }
}

type Events = Vec<(String, u64, Option<u64>, bool)>;

fn collect() -> (Arc<Mutex<Events>>, impl FnMut(DownloadProgress)) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    (events, move |p: DownloadProgress| {
        ev.lock()
            .unwrap()
            .push((p.file.to_string(), p.downloaded, p.total, p.done))
    })
}

#[test]
fn hub_full_download_then_cached_and_offline() {
    let mut state = State::default();
    state.repos.insert("org/tiny".into(), model_repo(3 << 20));
    let server = Server::start(state);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path(), &server.endpoint);
    let (events, mut progress) = collect();

    let got = resolve_model("org/tiny", None, &cfg, &mut progress).unwrap();
    let repo_dir = cache.path().join("models--org--tiny");
    assert_eq!(got.dir, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(got.commit.as_deref(), Some(COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
    ] {
        assert!(got.files.iter().any(|x| x == f), "{f} in {:?}", got.files);
        let link = got.dir.join(f);
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{f} is a symlink"
        );
    }
    let w = std::fs::read(got.dir.join("model.safetensors")).unwrap();
    assert_eq!(w, weights(3 << 20, 1));
    // LFS blob is named by its sha256; the snapshot link is relative
    let sha = sha256_hex(&w);
    assert!(repo_dir.join("blobs").join(&sha).is_file());
    assert_eq!(
        std::fs::read_link(got.dir.join("model.safetensors")).unwrap(),
        Path::new("../../blobs").join(&sha)
    );
    assert!(!got.files.iter().any(|f| f == "generation_config.json"));
    assert!(repo_dir
        .join(".no_exist")
        .join(COMMIT)
        .join("generation_config.json")
        .is_file());
    // progress: the weights reported intermediate steps and a final done with the full size
    let ev = events.lock().unwrap().clone();
    let w_events: Vec<_> = ev.iter().filter(|e| e.0 == "model.safetensors").collect();
    assert!(w_events.len() >= 3, "{w_events:?}");
    assert_eq!(
        w_events.last().unwrap(),
        &&(
            "model.safetensors".to_string(),
            3 << 20,
            Some(3 << 20),
            true
        )
    );

    // Second call: only config.json is asked again (to learn the commit of "main"), nothing is downloaded.
    let before = server.log().len();
    let again = resolve_model("org/tiny", Some("main"), &cfg, &mut |_| {}).unwrap();
    assert_eq!(again, got);
    let new: Vec<String> = server.log()[before..].to_vec();
    assert!(
        new.iter()
            .all(|r| r.starts_with("HEAD") && r.contains("config.json")),
        "{new:?}"
    );

    // Offline: no request at all, same answer.
    let before = server.log().len();
    let offline = HubConfig {
        offline: true,
        ..cfg.clone()
    };
    let off = resolve_model("org/tiny", None, &offline, &mut |_| {}).unwrap();
    assert_eq!(off.dir, got.dir);
    assert!(off.files.iter().any(|f| f == "model.safetensors"));
    assert_eq!(server.log().len(), before);
}

#[test]
fn hub_offline_without_cache_is_a_clear_error() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = HubConfig {
        offline: true,
        ..config(cache.path(), "http://127.0.0.1:9")
    };
    let e = resolve_model("org/absent", None, &cfg, &mut |_| {}).unwrap_err();
    assert!(matches!(e, HubError::Offline { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("org/absent") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
}

#[test]
fn hub_resumes_an_interrupted_download_with_a_range_request() {
    let mut repo = model_repo(1 << 20);
    let half = 400_000;
    if let Some(w) = repo.get_mut("model.safetensors") {
        w.cut_after = Some(half);
    }
    let mut state = State::default();
    state.repos.insert("org/resume".into(), repo);
    let server = Server::start(state);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path(), &server.endpoint);

    let e = resolve_model("org/resume", None, &cfg, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, HubError::SizeMismatch { actual, .. } if actual == half as u64)
            || matches!(e, HubError::Network { .. }),
        "{e}"
    );
    let w = weights(1 << 20, 1);
    let sha = sha256_hex(&w);
    let partial = cache
        .path()
        .join("models--org--resume/blobs")
        .join(format!("{sha}.incomplete"));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), half as u64);

    let (events, mut progress) = collect();
    let got = resolve_model("org/resume", None, &cfg, &mut progress).unwrap();
    assert_eq!(std::fs::read(got.dir.join("model.safetensors")).unwrap(), w);
    assert!(!partial.exists());
    let ranged: Vec<String> = server
        .log()
        .into_iter()
        .filter(|r| r.starts_with("GET /cdn/"))
        .collect();
    assert_eq!(ranged.len(), 2, "{ranged:?}");
    assert!(ranged[1].ends_with(&format!("bytes={half}-")), "{ranged:?}");
    // the resumed attempt reported starting from the bytes already present
    let first = events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.0 == "model.safetensors")
        .cloned()
        .unwrap();
    assert_eq!(first.1, half as u64);
}

#[test]
fn hub_refuses_a_hash_mismatch() {
    let mut repo = model_repo(100_000);
    if let Some(w) = repo.get_mut("model.safetensors") {
        w.fake_sha = Some("ab".repeat(32));
    }
    let mut state = State::default();
    state.repos.insert("org/bad".into(), repo);
    let server = Server::start(state);
    let cache = tempfile::tempdir().unwrap();
    let e = resolve_model(
        "org/bad",
        None,
        &config(cache.path(), &server.endpoint),
        &mut |_| {},
    )
    .unwrap_err();
    match &e {
        HubError::HashMismatch {
            file,
            expected,
            actual,
        } => {
            assert_eq!(file, "model.safetensors");
            assert_eq!(expected, &"ab".repeat(32));
            assert_eq!(actual, &sha256_hex(&weights(100_000, 1)));
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    let blobs = cache.path().join("models--org--bad/blobs");
    let names: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with(&"ab".repeat(32))),
        "nothing published or kept: {names:?}"
    );
    assert!(!cache
        .path()
        .join("models--org--bad/snapshots")
        .join(COMMIT)
        .join("model.safetensors")
        .exists());
}

#[test]
fn hub_missing_required_file_is_named() {
    let mut repo = model_repo(1000);
    repo.remove("tokenizer.json");
    let mut state = State::default();
    state.repos.insert("org/notok".into(), repo);
    let server = Server::start(state);
    let cache = tempfile::tempdir().unwrap();
    let e = resolve_model(
        "org/notok",
        None,
        &config(cache.path(), &server.endpoint),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(&e, HubError::NotFound { file, .. } if file == "tokenizer.json"),
        "{e}"
    );
    assert!(e.to_string().contains("tokenizer.json"));
}

#[test]
fn hub_sharded_weights_and_token() {
    let mut repo = model_repo(10);
    repo.remove("model.safetensors");
    let index = r#"{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#;
    repo.insert(
        "model.safetensors.index.json".into(),
        FileSpec {
            content: index.as_bytes().to_vec(),
            ..Default::default()
        },
    );
    for (i, name) in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    .iter()
    .enumerate()
    {
        repo.insert(
            name.to_string(),
            FileSpec {
                content: weights(50_000, i as u8 + 2),
                lfs: true,
                ..Default::default()
            },
        );
    }
    let state = State {
        token: Some("secret".into()),
        repos: HashMap::from([("org/gated".to_string(), repo)]),
        ..Default::default()
    };
    let server = Server::start(state);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path(), &server.endpoint);
    let e = resolve_model("org/gated", None, &cfg, &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, HubError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("HF_TOKEN"));
    let cfg = HubConfig {
        token: Some("secret".into()),
        ..cfg
    };
    let got = resolve_model("org/gated", None, &cfg, &mut |_| {}).unwrap();
    for (i, name) in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            std::fs::read(got.dir.join(name)).unwrap(),
            weights(50_000, i as u8 + 2)
        );
    }
    assert!(!got.files.iter().any(|f| f == "model.safetensors"));
    // each shard downloaded once although the index names the first one twice
    let gets = server
        .log()
        .iter()
        .filter(|r| r.starts_with("GET /cdn/") && r.contains("00001-of"))
        .count();
    assert_eq!(gets, 1);
    let offline = resolve_model(
        "org/gated",
        None,
        &HubConfig {
            offline: true,
            ..cfg
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(offline.files, got.files);
}

#[test]
fn hub_config_from_environment_variables() {
    let vars = HashMap::from([
        ("HF_HOME", "/h"),
        ("HF_ENDPOINT", "http://mirror.local/"),
        ("HF_TOKEN", "t"),
        ("HF_HUB_OFFLINE", "1"),
    ]);
    let cfg = HubConfig::from_vars(|k| vars.get(k).map(|v| v.to_string()));
    assert_eq!(cfg.cache_dir, Path::new("/h/hub"));
    assert_eq!(cfg.endpoint, "http://mirror.local");
    assert_eq!(cfg.token.as_deref(), Some("t"));
    assert!(cfg.offline);
    let cfg = HubConfig::from_vars(|k| match k {
        "HF_HUB_CACHE" => Some("/c".into()),
        "HF_HOME" => Some("/h".into()),
        "HF_HUB_OFFLINE" => Some("0".into()),
        "HOME" => Some("/home/u".into()),
        _ => None,
    });
    assert_eq!(cfg.cache_dir, Path::new("/c"));
    assert!(!cfg.offline);
    assert_eq!(cfg.endpoint, "https://huggingface.co");
    let cfg = HubConfig::from_vars(|k| (k == "HOME").then(|| "/home/u".to_string()));
    assert_eq!(cfg.cache_dir, Path::new("/home/u/.cache/huggingface/hub"));
}

#[test]
fn hub_rejects_bad_model_ids_and_accepts_local_dirs() {
    let cfg = config(Path::new("/nonexistent"), "http://127.0.0.1:9");
    for bad in ["../etc", "a/b/c", "", "org/", "/abs", "org/na me"] {
        assert!(
            matches!(
                resolve_model(bad, None, &cfg, &mut |_| {}),
                Err(HubError::InvalidModelId(_))
            ),
            "{bad}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let got = resolve_model(dir.path().to_str().unwrap(), None, &cfg, &mut |_| {}).unwrap();
    assert_eq!(got.dir, dir.path());
    assert_eq!(got.files, vec!["config.json".to_string()]);
    assert!(got.commit.is_none());
}

/// The tiny SmolVLM of tests/fixtures/idefics3/e2e/smolvlm_tied served in the Hub's layout (image processor in
/// `preprocessor_config.json`, the template in `chat_template.json`, as HuggingFaceTB/SmolVLM-256M-Instruct has
/// them) under that model id: it downloads, loads and answers exactly as transformers did on the local folder.
#[test]
fn hub_smolvlm_repo_downloads_loads_and_generates_like_transformers() {
    use idefics::generate::GenerationRequest;
    use idefics::pipeline::{Pipeline, Prompt, PromptInput};
    use idefics::processor::{decode_image_file, ChatMessage, DecodeLimits};

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixture = root.join("tests/fixtures/idefics3/e2e/smolvlm_tied");
    let read = |f: &str| std::fs::read(fixture.join(f)).unwrap();
    let text = |s: String| FileSpec {
        content: s.into_bytes(),
        ..Default::default()
    };
    let processor: serde_json::Value =
        serde_json::from_slice(&read("processor_config.json")).unwrap();
    let mut image_processor = processor["image_processor"].clone();
    image_processor["processor_class"] = "SmolVLMProcessor".into();
    let template = String::from_utf8(read("chat_template.jinja")).unwrap();

    let mut repo = HashMap::new();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        repo.insert(f.to_string(), text(String::from_utf8(read(f)).unwrap()));
    }
    repo.insert(
        "model.safetensors".into(),
        FileSpec {
            content: read("model.safetensors"),
            lfs: true,
            ..Default::default()
        },
    );
    repo.insert(
        "preprocessor_config.json".into(),
        text(image_processor.to_string()),
    );
    repo.insert(
        "processor_config.json".into(),
        text(
            serde_json::json!({"image_seq_len": processor["image_seq_len"],
                               "processor_class": "SmolVLMProcessor"})
            .to_string(),
        ),
    );
    repo.insert(
        "chat_template.json".into(),
        text(serde_json::json!({ "chat_template": template }).to_string()),
    );
    let mut state = State::default();
    state
        .repos
        .insert("HuggingFaceTB/SmolVLM-256M-Instruct".into(), repo);
    let server = Server::start(state);
    let cache = tempfile::tempdir().unwrap();
    let cfg = config(cache.path(), &server.endpoint);
    let got = resolve_model(
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        None,
        &cfg,
        &mut |_| {},
    )
    .unwrap();
    for f in ["preprocessor_config.json", "chat_template.json"] {
        assert!(got.files.iter().any(|x| x == f), "{f} in {:?}", got.files);
    }
    assert!(!got.dir.join("chat_template.jinja").exists());

    let pipeline = Pipeline::load(&got.dir, &idefics::LoadOptions::default()).unwrap();
    assert_eq!(pipeline.model.family().model_type(), "smolvlm");
    let requests: serde_json::Value = serde_json::from_slice(&read("requests.json")).unwrap();
    let request = &requests["requests"][0];
    assert_eq!(request["name"], "chat_one_image");
    let images = request["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            decode_image_file(&root.join(p.as_str().unwrap()), &DecodeLimits::default()).unwrap()
        })
        .collect();
    let conversation: Vec<ChatMessage> =
        serde_json::from_value(request["conversation"].clone()).unwrap();
    let prepared = pipeline
        .prepare(
            &[PromptInput {
                prompt: Prompt::Chat(conversation),
                images,
            }],
            None,
        )
        .unwrap();
    let want_ids: Vec<u32> = serde_json::from_value(request["input_ids"].clone()).unwrap();
    assert_eq!(
        prepared.prompt_ids[0], want_ids,
        "input_ids from the Hub layout"
    );
    let generation = GenerationRequest {
        max_new_tokens: requests["generate"]["max_new_tokens"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let out = pipeline
        .generate(&prepared, &[generation], |_, _| true)
        .unwrap();
    let mut want: Vec<u32> = serde_json::from_value(request["generated_ids"].clone()).unwrap();
    if request["stopped_on_eos"].as_bool().unwrap() {
        want.pop();
    }
    assert_eq!(out[0].token_ids, want);
    assert_eq!(out[0].text, request["generated_text"].as_str().unwrap());
}
