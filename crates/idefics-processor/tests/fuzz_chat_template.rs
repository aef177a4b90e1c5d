//! Fuzzes the chat template renderer (src/chat_template.rs: minijinja with a fuel limit) with mutated templates
//! and mutated message lists, on the shared harness (tests/fuzz/harness.rs). A checkpoint's template is not
//! trusted (the server loads whatever the model folder holds) and messages come from clients, so every input
//! must end in a rendered prompt or an error: no panic, no run over 2 s, no peak of live heap over 256 MiB.
//!
//! Seeds: every chat template of tests/fixtures (chat_template.jinja, and the `chat_template` strings of
//! chat_template.json / processor_config.json / tokenizer_config.json), a few hostile templates, and message
//! lists of every shape the processor accepts. Templates are mutated with Jinja tokens as the dictionary (loops,
//! namespaces, macros, string repetition, filters), messages structurally (roles, part types, long texts,
//! added-token strings).
//!
//! `cargo test -p idefics-processor --test fuzz_chat_template` runs a short bounded pass (CI). For a long run:
//! `IDEFICS_FUZZ_SECS=600 IDEFICS_FUZZ_SEED=1 cargo test -p idefics-processor --test fuzz_chat_template -- --nocapture`
//! Failing inputs (a JSON document: template, messages, add_generation_prompt) are written to
//! `$IDEFICS_FUZZ_OUT`; commit them under tests/fixtures/fuzz_regressions/chat_template/, which this test replays.

use std::path::{Path, PathBuf};
use std::time::Duration;

use idefics_processor::{ChatMessage, ChatTemplate, TextTokenizer};
use serde_json::{json, Value};

#[path = "../../../tests/fuzz/harness.rs"]
mod harness;

#[global_allocator]
static GLOBAL: harness::CountingAlloc = harness::CountingAlloc;

/// Jinja fragments the template mutator inserts.
const JINJA: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{%-",
    "-%}",
    "{% for m in messages %}",
    "{% endfor %}",
    "{% if ",
    "{% elif x %}",
    "{% else %}",
    "{% endif %}",
    "{% set ns = namespace(s='ab') %}",
    "{% set ns.s = ns.s ~ ns.s %}",
    "{% set ns.s = [ns.s, ns.s] %}",
    "{% set ns.s = {'a': ns.s} %}",
    "{{ ns.s|tojson }}",
    "{{ ns.s }}",
    "|tojson(indent=100000000)",
    "{% for i in range(100000) %}",
    "{% for i in range(10**9) %}",
    "{{ 'x' * 100000000 }}",
    "{{ messages * 100000 }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{% macro g() %}{{ caller() }}{% endmacro %}",
    "{% call g() %}x{% endcall %}",
    "{% break %}",
    "{% continue %}",
    "{% raw %}",
    "{% endraw %}",
    "{% filter upper %}",
    "{% endfilter %}",
    "{% with a = 1 %}",
    "{% endwith %}",
    "{{ raise_exception('no') }}",
    "|tojson",
    "|join(',')",
    "|replace('a', 'aa')",
    "|indent(1000000)",
    "|center(1000000)",
    "|wordwrap(1)",
    "|format(1, 2)",
    "|batch(0)",
    "|slice(0)",
    "|list",
    "|sort",
    "|unique",
    "|reverse",
    "|string",
    "|safe",
    "|e",
    "|int",
    "|float",
    "|length",
    "|first",
    "|last",
    "|map(attribute='role')",
    "|selectattr('role')",
    ".strip()",
    ".split()",
    ".capitalize()",
    ".title()",
    ".startswith('<')",
    ".center(100000000)",
    ".ljust(100000000)",
    ".zfill(100000000)",
    ".format(1)",
    ".join(messages)",
    ".items()",
    ".keys()",
    "message['content']",
    "message['content'][0]['type']",
    "messages[-1]",
    "messages[10**20]",
    "loop.index0",
    "loop.cycle(1, 2)",
    "loop(messages)",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "{{ '<image>' }}",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "%",
    "~",
    "*",
    "**",
    "//",
    "(",
    ")",
    "[",
    "]",
    ":",
    ",",
    "'",
    "\"",
    "\n",
    " ",
    "0",
    "-1",
    "1e308",
    "9999999999999999999",
    "none",
    "true",
    "namespace()",
    "range(",
    "cycler(",
    "joiner(",
    "dict(",
    "lipsum(100)",
    "self",
];

/// Text mutations inside messages: added-token strings and private-use marker characters a user could type.
const MESSAGE_TEXT: &[&str] = &[
    "<image>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<row_1_col_1>",
    "<global-img>",
    "\u{E000}",
    "\u{E001}",
    "{{ 7 * 7 }}",
    "{% for %}",
    "\u{0}",
    "\u{FEFF}",
    "\r\n",
    "User:",
    "Assistant:",
];

fn tokenizer_dir() -> PathBuf {
    harness::fixtures().join("tokenizer")
}

/// Every chat template stored under `dir`, recursively.
fn templates_under(dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            templates_under(&p, out);
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let label = p.display().to_string();
        if name.ends_with(".jinja") {
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((label, text));
            }
        } else if matches!(
            name.as_str(),
            "chat_template.json" | "processor_config.json" | "tokenizer_config.json"
        ) {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                if let Some(t) = v.get("chat_template").and_then(Value::as_str) {
                    out.push((label, t.to_string()));
                }
            }
        }
    }
}

fn message_lists() -> Vec<Value> {
    vec![
        json!([{"role": "user", "content": "hi"}]),
        json!([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]),
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "image"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "two <image> pictures"}]},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "and this?"}]}
        ]),
        json!([{"role": "assistant", "content": ""}, {"role": "tool", "content": []}]),
    ]
}

fn seeds() -> Vec<(String, Value)> {
    let mut templates = Vec::new();
    templates_under(&harness::fixtures(), &mut templates);
    assert!(
        templates.len() >= 5,
        "chat template fixtures missing: {templates:?}"
    );
    for (name, t) in [
        ("loop", "{% for m in messages %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endfor %}"),
        ("doubling", "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"),
        ("recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
        ("repeat", "{{ 'abc' * 30000000 }}{{ messages|tojson }}"),
        ("nesting", "{% set ns = namespace(s=[]) %}{% for i in range(100000) %}{% set ns.s = [ns.s] %}{% endfor %}{{ ns.s|tojson }}{{ ns.s }}"),
    ] {
        templates.push((format!("hostile/{name}"), t.to_string()));
    }
    let lists = message_lists();
    let mut seeds = Vec::new();
    for (i, (name, t)) in templates.into_iter().enumerate() {
        seeds.push((
            name,
            json!({"template": t, "messages": lists[i % lists.len()], "add_generation_prompt": i % 2 == 0}),
        ));
    }
    for (name, bytes) in harness::files_in("fuzz_regressions/chat_template", 1 << 20) {
        seeds.push((
            name,
            serde_json::from_slice(&bytes).expect("regression input is JSON"),
        ));
    }
    seeds
}

fn mutate(rng: &mut harness::Rng, parent: &Value, donors: &[&Value], templates: &[&str]) -> Value {
    let mut input = parent.clone();
    let template = input["template"].as_str().unwrap_or_default().to_string();
    match rng.below(3) {
        0 | 1 => {
            input["template"] =
                Value::String(harness::mutate_text(rng, templates, JINJA, &template));
        }
        _ => {
            let mut messages = input["messages"].take();
            let message_donors: Vec<&Value> = donors.iter().map(|d| &d["messages"]).collect();
            harness::mutate_json(rng, &mut messages, &message_donors, MESSAGE_TEXT);
            input["messages"] = messages;
        }
    }
    if rng.chance(8) {
        input["add_generation_prompt"] = Value::Bool(rng.chance(2));
    }
    input
}

/// Compile and render; `Ok(true)` when a prompt came out.
fn run_one(input: &Value, tok: &TextTokenizer) -> Result<bool, String> {
    let Some(template) = input["template"].as_str() else {
        return Ok(false);
    };
    let Ok(messages) = serde_json::from_value::<Vec<ChatMessage>>(input["messages"].clone()) else {
        return Ok(false);
    };
    let add_generation_prompt = input["add_generation_prompt"].as_bool().unwrap_or(true);
    let Ok(t) = ChatTemplate::from_source(template, "fuzz", tok) else {
        return Ok(false);
    };
    match t.render_pieces(&messages, add_generation_prompt) {
        Ok(_) => Ok(true),
        // The renderer thread turns a panic into this error; it is still a bug.
        Err(e) if e.to_string().contains("renderer panicked") => Err(e.to_string()),
        Err(_) => Ok(false),
    }
}

#[test]
fn fuzz_chat_template_renderer() {
    let tok = TextTokenizer::from_dir(&tokenizer_dir()).unwrap();
    let seeds = seeds();
    let donors: Vec<&Value> = seeds.iter().map(|(_, v)| v).collect();
    let templates: Vec<&str> = seeds
        .iter()
        .filter_map(|(_, v)| v["template"].as_str())
        .collect();
    let settings = harness::Settings {
        name: "chat_template",
        bounded_execs: 3_000,
        hang: Duration::from_secs(2),
        max_extra_bytes: 256 << 20,
        default_seed: 0x7E3D_1A7E,
    };
    let stats = harness::fuzz(
        &settings,
        &seeds,
        |rng, parent| mutate(rng, parent, &donors, &templates),
        |input| run_one(input, &tok),
        |input| serde_json::to_vec_pretty(input).unwrap(),
    );
    assert!(stats.accepted > 0, "no template rendered: {stats:?}");
}
