//! input_ids and rendered chats compared with transformers 5.24 (tests/fixtures/prompts, made by
//! tools/reference/make_prompt_fixtures.py from the tiny tokenizer in tests/fixtures/tokenizer).

use std::path::PathBuf;

use idefics_processor::{ChatMessage, PromptProcessor, TextTokenizer};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> Value {
    let path = root().join("tests/fixtures/prompts").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn processor() -> PromptProcessor {
    PromptProcessor::from_dir(&root().join("tests/fixtures/tokenizer")).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn prompt_input_ids_match_transformers() {
    let p = processor();
    let cases = fixture("prompts.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let n = case["n_images"].as_u64().unwrap() as usize;
        let split = case["do_image_splitting"].as_bool().unwrap();
        let enc = p.encode_prompt(prompt, n, Some(split)).unwrap();
        assert_eq!(
            enc.input_ids,
            ids(&case["input_ids"]),
            "prompt {prompt:?}, splitting {split}"
        );
        assert_eq!(enc.expected_image_rows(), n * if split { 5 } else { 1 });
    }
}

#[test]
fn tokenizer_matches_transformers_for_both_layouts() {
    let dir = root().join("tests/fixtures/tokenizer");
    let fixture_tok = TextTokenizer::from_dir(&dir).unwrap();
    let legacy_tok = TextTokenizer::from_dir(&dir.join("legacy_json")).unwrap();
    let cases = fixture("tokenizer.json");
    for case in cases["cases"].as_array().unwrap() {
        let tok = match case["layout"].as_str().unwrap() {
            "fixture" => &fixture_tok,
            _ => &legacy_tok,
        };
        let text = case["text"].as_str().unwrap();
        let add = case["add_special_tokens"].as_bool().unwrap();
        assert_eq!(
            tok.encode(text, add).unwrap(),
            ids(&case["ids"]),
            "{} {text:?} {add}",
            case["layout"]
        );
    }
}

/// The legacy tokenizer.json alone (no transformers-5 rebuild) tokenizes "<image>What" differently: this is why
/// the rebuild exists, and it shows the test above can fail.
#[test]
fn legacy_layout_differs_without_the_llama_rebuild() {
    let path = root().join("tests/fixtures/tokenizer/legacy_json/tokenizer.json");
    let raw = tokenizers::Tokenizer::from_file(&path).unwrap();
    let rebuilt = TextTokenizer::from_dir(path.parent().unwrap()).unwrap();
    let raw_ids = raw.encode("<image>What", false).unwrap().get_ids().to_vec();
    assert_ne!(raw_ids, rebuilt.encode("<image>What", false).unwrap());
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn chat_rendering_and_ids_match_transformers() {
    let p = processor();
    let template = p.chat_template().expect("fixture has a chat template");
    let cases = fixture("chat.json");
    for case in cases["cases"].as_array().unwrap() {
        let msgs = messages(&case["messages"]);
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let split = case["do_image_splitting"].as_bool().unwrap();
        let rendered = template.render(&msgs, gen).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
        let n: usize = msgs.iter().map(ChatMessage::n_images).sum();
        let enc = p.encode_chat(&msgs, gen, n, Some(split)).unwrap();
        assert_eq!(
            enc.input_ids,
            ids(&case["input_ids"]),
            "{rendered:?} splitting {split}"
        );
        // the chat path (pieces) and the raw path (string) agree on benign chats
        assert_eq!(
            p.encode_prompt(&rendered, n, Some(split))
                .unwrap()
                .input_ids,
            enc.input_ids
        );
    }
}
