//! The OpenAI chat-completions request, parsed and validated field by field.
//!
//! Parsing is by hand from `serde_json::Value` so that every problem names its field, and so that parameters we
//! do not implement are refused with a 400 instead of being silently ignored:
//! a parameter at its neutral value (`n: 1`, `logprobs: false`, `tools: []`, ...) is accepted, anything else is not.

use serde_json::{Map, Value};

use idefics::generate::{GenerationRequest, SamplingParams};

use crate::error::ApiError;

/// OpenAI allows at most four stop sequences.
pub const MAX_STOP_STRINGS: usize = 4;
/// Longest stop sequence, in UTF-8 bytes. A stop string is a few words in practice; the cap keeps the held-back
/// text (which waits until it cannot start a stop string) short.
pub const MAX_STOP_BYTES: usize = 256;
/// Temperatures below this are greedy decoding (vLLM's `_SAMPLING_EPS`): dividing logits by them overflows.
pub const GREEDY_BELOW_TEMPERATURE: f64 = 1e-5;
/// Positive temperatures are raised to at least this (vLLM's `_MAX_TEMP`), which keeps `logits / t` finite.
pub const MIN_SAMPLING_TEMPERATURE: f64 = 1e-2;

/// Who wrote a message, as in the OpenAI API (`developer` is folded into `System`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The OpenAI spelling, which is also the chat templates' role name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A content part before its image (if any) is loaded.
#[derive(Debug, Clone)]
pub enum RawPart {
    Text(String),
    Image {
        url: String,
        /// `detail: low` → Some(false) (no splitting), `high` → Some(true), `auto`/absent → None.
        split: Option<bool>,
        /// Field path for error messages, e.g. `messages[1].content[2].image_url`.
        param: String,
    },
}

#[derive(Debug, Clone)]
pub struct RawMessage {
    pub role: Role,
    pub parts: Vec<RawPart>,
}

/// A validated request; images not loaded yet.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RawMessage>,
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl ChatRequest {
    /// UTF-8 bytes of every text part.
    pub fn text_bytes(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .map(|p| match p {
                RawPart::Text(t) => t.len(),
                RawPart::Image { .. } => 0,
            })
            .sum()
    }

    /// The generator's parameters for this request, `max_new_tokens` chosen by the server (it fits the context).
    /// A top_p of 1 keeps every token, so it is no filter; an absent seed is seed 0 (greedy decoding ignores it).
    pub fn generation_request(&self, max_new_tokens: usize) -> GenerationRequest {
        GenerationRequest {
            max_new_tokens,
            sampling: SamplingParams {
                temperature: Some(self.temperature),
                top_p: (self.top_p < 1.0).then_some(self.top_p),
                seed: self.seed.unwrap_or(0),
                ..SamplingParams::default()
            },
            // Stop strings are matched by the server (BatchItem::emit), across token boundaries.
            stop_strings: Vec::new(),
        }
    }

    pub fn image_count(&self) -> usize {
        self.messages
            .iter()
            .flat_map(|m| &m.parts)
            .filter(|p| matches!(p, RawPart::Image { .. }))
            .count()
    }
}

fn invalid(param: &str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", msg).at(param)
}

fn is_neutral(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(_) => false,
    }
}

/// Size limits checked on the parsed JSON, before any text is copied, rendered or tokenised.
#[derive(Debug, Clone, Copy)]
pub struct TextLimits {
    pub max_messages: usize,
    pub max_text_bytes: usize,
}

impl TextLimits {
    pub const NONE: TextLimits = TextLimits {
        max_messages: usize::MAX,
        max_text_bytes: usize::MAX,
    };
}

/// Parse the request body.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_chat_request_limited(body, TextLimits::NONE)
}

/// Parse the request body, refusing too many messages or too much text first.
pub fn parse_chat_request_limited(
    body: &[u8],
    limits: TextLimits,
) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "request body must be a JSON object",
        ));
    };
    check_sizes(&obj, limits)?;
    check_unsupported(&obj)?;

    let model = match obj.get("model") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err(invalid("model", "'model' must be a string")),
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, m)| parse_message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err(invalid("messages", "'messages' must not be empty")),
        _ => {
            return Err(invalid(
                "messages",
                "'messages' is required and must be a list",
            ))
        }
    };
    match messages.last().map(|m| m.role) {
        Some(Role::User) => {}
        _ => {
            return Err(invalid(
                "messages",
                "the last message must be from the user (continuing an assistant message is not supported)",
            ))
        }
    }

    let max_tokens = match (
        opt_uint(&obj, "max_tokens")?,
        opt_uint(&obj, "max_completion_tokens")?,
    ) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                "max_tokens",
                "'max_tokens' and 'max_completion_tokens' disagree; give one",
            ));
        }
        (a, b) => a.or(b),
    };
    if max_tokens == Some(0) {
        return Err(invalid("max_tokens", "'max_tokens' must be at least 1"));
    }
    let temperature = opt_f64(&obj, "temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(
            "temperature",
            format!("'temperature' must be in [0, 2], got {temperature}"),
        ));
    }
    // `1e-45` passes the range check but divides logits into infinities: tiny temperatures mean greedy, small
    // ones are raised to a safe minimum (what vLLM does), so sampling can never fail on them.
    let temperature = if temperature < GREEDY_BELOW_TEMPERATURE {
        0.0
    } else {
        temperature.max(MIN_SAMPLING_TEMPERATURE)
    };
    let top_p = opt_f64(&obj, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(
            "top_p",
            format!("'top_p' must be in (0, 1], got {top_p}"),
        ));
    }
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .map(|s| s as u64)
                .or_else(|| v.as_u64())
                .ok_or_else(|| invalid("seed", "'seed' must be an integer"))?,
        ),
    };
    let stop = parse_stop(obj.get("stop"))?;
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream", "'stream' must be a boolean")),
    };
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(invalid(
                "stream_options",
                "'stream_options' is only allowed when 'stream' is true",
            ))
        }
        Some(Value::Object(o)) => {
            if let Some(k) = o.keys().find(|k| *k != "include_usage") {
                return Err(ApiError::unsupported_param(
                    &format!("stream_options.{k}"),
                    "not supported",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(invalid("stream_options.include_usage", "must be a boolean"))
                }
            }
        }
        Some(_) => {
            return Err(invalid(
                "stream_options",
                "'stream_options' must be an object",
            ))
        }
    };
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed,
        stop,
        stream,
        include_usage,
    })
}

/// Message count and text bytes, read off the JSON tree (no copies), so that an oversized request costs one
/// parse and nothing more.
fn check_sizes(obj: &Map<String, Value>, limits: TextLimits) -> Result<(), ApiError> {
    let Some(Value::Array(messages)) = obj.get("messages") else {
        return Ok(());
    };
    if messages.len() > limits.max_messages {
        return Err(ApiError::bad_request(
            "too_many_messages",
            format!(
                "request has {} messages; the limit is {} per request",
                messages.len(),
                limits.max_messages
            ),
        )
        .at("messages"));
    }
    let mut total = 0usize;
    for m in messages {
        match m.get("content") {
            Some(Value::String(s)) => total = total.saturating_add(s.len()),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(Value::String(t)) = p.get("text") {
                        total = total.saturating_add(t.len());
                    }
                }
            }
            _ => {}
        }
    }
    if total > limits.max_text_bytes {
        return Err(ApiError::bad_request(
            "text_too_long",
            format!(
                "the messages hold {total} bytes of text; the limit is {} bytes per request",
                limits.max_text_bytes
            ),
        )
        .at("messages"));
    }
    Ok(())
}

/// Keys we implement, and keys we accept only at their neutral value.
fn check_unsupported(obj: &Map<String, Value>) -> Result<(), ApiError> {
    const SUPPORTED: &[&str] = &[
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "parallel_tool_calls",
    ];
    for (key, value) in obj {
        if SUPPORTED.contains(&key.as_str()) {
            continue;
        }
        let ok = match key.as_str() {
            "n" => value.is_null() || value.as_u64() == Some(1),
            "logprobs" | "presence_penalty" | "frequency_penalty" | "tools" | "functions"
            | "logit_bias" | "top_logprobs" => is_neutral(value),
            "tool_choice" | "function_call" => value.is_null() || value.as_str() == Some("none"),
            "response_format" => {
                value.is_null() || value.get("type").and_then(Value::as_str) == Some("text")
            }
            "service_tier" => {
                matches!(value.as_str(), None | Some("auto") | Some("default"))
                    && !value.is_object()
            }
            _ => {
                return Err(ApiError::unsupported_param(
                    key,
                    "this server does not implement it",
                ));
            }
        };
        if !ok {
            return Err(ApiError::unsupported_param(
                key,
                &format!("only its default value is supported, got {value}"),
            ));
        }
    }
    Ok(())
}

fn opt_uint(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n.min(usize::MAX as u64) as usize))
            .ok_or_else(|| invalid(key, format!("'{key}' must be a non-negative integer"))),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| invalid(key, format!("'{key}' must be a number"))),
    }
}

fn parse_stop(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid("stop", "'stop' entries must be strings"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(invalid(
                "stop",
                "'stop' must be a string or a list of strings",
            ))
        }
    };
    if list.len() > MAX_STOP_STRINGS {
        return Err(invalid(
            "stop",
            format!(
                "'stop' has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                list.len()
            ),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(invalid("stop", "'stop' strings must not be empty"));
    }
    if let Some(long) = list.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(invalid(
            "stop",
            format!(
                "'stop' strings may be at most {MAX_STOP_BYTES} bytes long, got one of {} bytes",
                long.len()
            ),
        ));
    }
    Ok(list)
}

fn parse_message(i: usize, m: &Value) -> Result<RawMessage, ApiError> {
    let at = format!("messages[{i}]");
    let Value::Object(obj) = m else {
        return Err(invalid(&at, format!("{at} must be an object")));
    };
    let role = match obj.get("role").and_then(Value::as_str) {
        Some("system") | Some("developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(other @ ("tool" | "function")) => {
            return Err(ApiError::unsupported_param(
                &format!("{at}.role"),
                &format!("role '{other}' (tool calling) is not supported"),
            ));
        }
        Some(other) => {
            return Err(invalid(
                &format!("{at}.role"),
                format!("unknown role '{other}'"),
            ))
        }
        None => {
            return Err(invalid(
                &format!("{at}.role"),
                format!("{at}.role is required"),
            ))
        }
    };
    for (key, value) in obj {
        match key.as_str() {
            "role" | "content" | "name" => {}
            "tool_calls" | "function_call" | "refusal" | "audio" if is_neutral(value) => {}
            _ => {
                return Err(ApiError::unsupported_param(
                    &format!("{at}.{key}"),
                    "not supported",
                ))
            }
        }
    }
    let parts = match obj.get("content") {
        Some(Value::String(s)) => vec![RawPart::Text(s.clone())],
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(j, p)| parse_part(&format!("{at}.content[{j}]"), p))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(invalid(
                &format!("{at}.content"),
                format!("{at}.content must be a string or a list of parts"),
            ))
        }
    };
    if role != Role::User && parts.iter().any(|p| matches!(p, RawPart::Image { .. })) {
        return Err(invalid(
            &format!("{at}.content"),
            format!(
                "images are only accepted in user messages ({at} is {})",
                role.as_str()
            ),
        ));
    }
    Ok(RawMessage { role, parts })
}

fn parse_part(at: &str, p: &Value) -> Result<RawPart, ApiError> {
    let kind = p
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(at, format!("{at}.type is required")))?;
    match kind {
        "text" => match p.get("text") {
            Some(Value::String(s)) => Ok(RawPart::Text(s.clone())),
            _ => Err(invalid(at, format!("{at}.text must be a string"))),
        },
        "image_url" => {
            let param = format!("{at}.image_url");
            let (url, detail) = match p.get("image_url") {
                Some(Value::String(s)) => (s.clone(), None),
                Some(Value::Object(o)) => match o.get("url") {
                    Some(Value::String(s)) => (s.clone(), o.get("detail")),
                    _ => return Err(invalid(&param, format!("{param}.url must be a string"))),
                },
                _ => {
                    return Err(invalid(
                        &param,
                        format!("{param} must be an object with a 'url'"),
                    ))
                }
            };
            let split = match detail.map(|d| (d, d.as_str())) {
                None | Some((Value::Null, _)) | Some((_, Some("auto"))) => None,
                Some((_, Some("low"))) => Some(false),
                Some((_, Some("high"))) => Some(true),
                Some((d, _)) => {
                    return Err(invalid(
                        &param,
                        format!("{param}.detail must be 'low', 'high' or 'auto', got {d}"),
                    ))
                }
            };
            Ok(RawPart::Image { url, split, param })
        }
        other => Err(ApiError::unsupported_param(
            &format!("{at}.type"),
            &format!("content part type '{other}' is not supported (use 'text' or 'image_url')"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_chat_request(v.to_string().as_bytes())
    }

    #[test]
    fn string_and_list_content() {
        let r = parse(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}},
                {"type": "image_url", "image_url": "data:y"}]}]}))
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.image_count(), 2);
        assert!(
            matches!(&r.messages[1].parts[1], RawPart::Image { split: Some(false), param, .. } if param == "messages[1].content[1].image_url")
        );
        assert_eq!((r.temperature, r.top_p, r.stream), (1.0, 1.0, false));
    }

    #[test]
    fn stop_forms() {
        let base = |stop: Value| {
            parse(serde_json::json!({"messages": [{"role": "user", "content": "x"}], "stop": stop}))
        };
        assert_eq!(base(Value::from("a")).unwrap().stop, vec!["a"]);
        assert_eq!(
            base(serde_json::json!(["a", "b", "c", "d"]))
                .unwrap()
                .stop
                .len(),
            4
        );
        assert!(base(serde_json::json!(["a", "b", "c", "d", "e"]))
            .unwrap_err()
            .message
            .contains("at most 4"));
        assert!(base(serde_json::json!([""])).is_err());
    }

    #[test]
    fn tiny_temperatures_cannot_overflow_sampling() {
        let with = |t: f64| {
            parse(serde_json::json!({"messages": [{"role": "user", "content": "x"}], "temperature": t}))
                .unwrap()
                .temperature
        };
        // 1e-45 is a subnormal f32: logits / 1e-45 are infinities and nothing can be sampled.
        assert_eq!(with(1e-45), 0.0);
        assert_eq!(with(1e-6), 0.0);
        assert_eq!(with(1e-3), 0.01);
        assert_eq!(with(0.7), 0.7);
        assert_eq!(with(0.0), 0.0);
        let t = with(0.01);
        assert!(t > 0.0 && (1.0f32 / t).is_finite());
    }

    #[test]
    fn text_and_message_caps_apply_before_anything_is_copied() {
        let limits = TextLimits {
            max_messages: 2,
            max_text_bytes: 10,
        };
        let body = |v: Value| v.to_string().into_bytes();
        let ok = body(
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "0123456789"}]}]}),
        );
        assert!(parse_chat_request_limited(&ok, limits).is_ok());
        let long =
            body(serde_json::json!({"messages": [{"role": "user", "content": "01234567890"}]}));
        assert_eq!(
            parse_chat_request_limited(&long, limits).unwrap_err().code,
            "text_too_long"
        );
        let many = body(serde_json::json!({"messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}));
        assert_eq!(
            parse_chat_request_limited(&many, limits).unwrap_err().code,
            "too_many_messages"
        );
    }

    #[test]
    fn unsupported_params_are_refused_unless_neutral() {
        let with = |k: &str, v: Value| {
            let mut o = serde_json::json!({"messages": [{"role": "user", "content": "x"}]});
            o[k] = v;
            parse(o)
        };
        assert!(with("n", Value::from(1)).is_ok());
        assert!(with("logprobs", Value::from(false)).is_ok());
        assert!(with("tools", serde_json::json!([])).is_ok());
        for (k, v) in [
            ("n", Value::from(2)),
            ("logprobs", Value::from(true)),
            ("tools", serde_json::json!([{"type": "function"}])),
            (
                "response_format",
                serde_json::json!({"type": "json_object"}),
            ),
            ("frobnicate", Value::from(1)),
        ] {
            let err = with(k, v).unwrap_err();
            assert_eq!(
                (err.code, err.param.as_deref()),
                ("unsupported_parameter", Some(k))
            );
        }
    }

    #[test]
    fn bad_shapes_name_their_field() {
        let err = parse(serde_json::json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].content[0].type"));
        let err = parse(
            serde_json::json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("temperature"));
        assert!(parse(serde_json::json!({"messages": []})).is_err());
        assert!(
            parse(serde_json::json!({"messages": [{"role": "assistant", "content": "x"}]}))
                .is_err()
        );
        assert!(parse_chat_request(b"{not json")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
    }
}
