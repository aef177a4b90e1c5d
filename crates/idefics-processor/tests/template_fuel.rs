//! A chat template comes from the checkpoint, which a server may not control: rendering is bounded by minijinja's
//! fuel, so an endless template fails with an error instead of holding a thread forever.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use idefics_processor::{ChatMessage, ChatTemplate, TextTokenizer};

fn tok_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer")
}

#[test]
fn endless_template_is_stopped_by_fuel() {
    let tok = TextTokenizer::from_dir(&tok_dir()).unwrap();
    // 10^15 loop iterations: hours of work without a bound.
    let hostile =
        "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}\
                   {% endfor %}{% endfor %}{% endfor %}done";
    let t = ChatTemplate::from_source(hostile, "hostile", &tok).unwrap();
    let started = Instant::now();
    let err = t
        .render(&[ChatMessage::text("user", "hi")], true)
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "render ran for {took:?} before failing"
    );
    assert!(err.to_string().contains("fuel"), "{err}");
}

#[test]
fn long_conversations_stay_within_the_fuel() {
    let tok = TextTokenizer::from_dir(&tok_dir()).unwrap();
    let idefics2 = "{% for message in messages %}{{message['role'].capitalize()}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";
    let t = ChatTemplate::from_source(idefics2, "idefics2", &tok).unwrap();
    let msgs: Vec<ChatMessage> = (0..2000)
        .map(|i| ChatMessage::text(if i % 2 == 0 { "user" } else { "assistant" }, "x"))
        .collect();
    let out = t.render(&msgs, true).unwrap();
    assert!(out.ends_with("Assistant:"));
}

/// Fuel also bounds memory: minijinja charges one unit per 64 bytes a template produces. Before the limit was
/// lowered to 1 million, both of these built strings of hundreds of megabytes (found by fuzz_chat_template).
#[test]
fn fuel_stops_templates_that_build_huge_strings() {
    let tok = TextTokenizer::from_dir(&tok_dir()).unwrap();
    for hostile in [
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{{ 'abc' * 30000000 }}",
    ] {
        let t = ChatTemplate::from_source(hostile, "hostile", &tok).unwrap();
        let started = Instant::now();
        let err = t
            .render(&[ChatMessage::text("user", "hi")], true)
            .unwrap_err();
        assert!(err.to_string().contains("fuel"), "{hostile}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{hostile}: {:?}",
            started.elapsed()
        );
    }
}

/// A loop can nest a list ~100k deep within the fuel; printing, serialising or merely dropping it recursed past
/// the stack and aborted the process (found by fuzz_chat_template). Each must end in a prompt or an error.
#[test]
fn deeply_nested_values_do_not_overflow_the_stack() {
    let tok = TextTokenizer::from_dir(&tok_dir()).unwrap();
    let nest = "{% set ns = namespace(s=[]) %}{% for i in range(1000000) %}{% set ns.s = [ns.s] %}{% endfor %}";
    for tail in ["x", "{{ ns.s }}", "{{ ns.s|tojson }}", "{{ ns.s == ns.s }}"] {
        let t = ChatTemplate::from_source(&format!("{nest}{tail}"), "hostile", &tok).unwrap();
        // Fuel runs out inside the loop or later; either way the result is an error or a prompt, not an abort.
        let _ = t.render(&[ChatMessage::text("user", "hi")], true);
    }
}
