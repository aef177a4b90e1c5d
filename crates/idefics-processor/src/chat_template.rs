//! Chat messages -> prompt text, by rendering the checkpoint's Jinja chat template as transformers does
//! (src/transformers/utils/chat_template_utils.py: sandboxed Jinja with trim_blocks + lstrip_blocks, loop
//! controls, `raise_exception`, a `tojson` that does not HTML-escape). We use minijinja + minijinja-contrib's
//! pycompat methods (`.capitalize()`, `.strip()`, ...).
//!
//! Deliberate differences from transformers, each for a user-visible reason:
//! * A message whose `content` is a plain string is turned into one text part before rendering. idefics2's
//!   template indexes `content[0]['type']` and iterates parts, so transformers silently renders a string
//!   content as empty ("User: <end_of_utterance>").
//! * System messages: if the template calls `raise_exception` on a chat that has a system message (the usual
//!   "no system role" guard), the system text is folded into the first user turn as a leading text part
//!   (`system + "\n\n"`) and the template is rendered again. Templates that render any role (idefics2:
//!   "System: ...") are used as they are. Detection is by trying, not by parsing the template.
//! * User strings cannot create control tokens: every added-token string inside a message (e.g. a literal
//!   "<image>") is wrapped in private-use markers before rendering (like transformers' `sanitize_control_tokens`),
//!   and [`ChatTemplate::render_pieces`] turns marked text into plain-text pieces. Only image parts make image slots.

use std::path::Path;

use minijinja::value::Value as JValue;
use minijinja::{Environment, Error as JError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::processor_config::read_json_if_exists;
use crate::prompt::PromptError;
use crate::template_output::{bounded_formatter, tojson, CappedOutput};
use crate::tokenizer::{Piece, TextTokenizer};

/// Marks the start / end of a control-token string typed by a user. Removed from user text beforehand so that
/// users cannot forge a marked span.
const MARK_START: char = '\u{E000}';
const MARK_END: char = '\u{E001}';
const RAISE_PREFIX: &str = "raise_exception: ";

/// One chat message, in the shape transformers' processors accept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "user", "assistant", "system", ...
    pub role: String,
    /// A string, or a list of text / image parts.
    pub content: MessageContent,
}

/// Message content: a plain string or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text (rendered as a single text part).
    Text(String),
    /// Text and image parts in order.
    Parts(Vec<ContentPart>),
}

/// One part of a message. Image parts carry no pixels: images are passed to the image processor separately,
/// in the order their parts appear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// One image slot.
    Image {},
    /// One video slot (SmolVLM2; rendered as `<video>` by its template).
    Video {},
}

impl ChatMessage {
    /// A message with text only.
    pub fn text(role: &str, text: &str) -> Self {
        Self {
            role: role.to_string(),
            content: MessageContent::Text(text.to_string()),
        }
    }

    /// A message from parts.
    pub fn parts(role: &str, parts: Vec<ContentPart>) -> Self {
        Self {
            role: role.to_string(),
            content: MessageContent::Parts(parts),
        }
    }

    fn parts_vec(&self) -> Vec<ContentPart> {
        match &self.content {
            MessageContent::Text(t) => vec![ContentPart::Text { text: t.clone() }],
            MessageContent::Parts(p) => p.clone(),
        }
    }

    /// Number of image parts.
    pub fn n_images(&self) -> usize {
        match &self.content {
            MessageContent::Text(_) => 0,
            MessageContent::Parts(p) => p
                .iter()
                .filter(|p| matches!(p, ContentPart::Image {}))
                .count(),
        }
    }
}

/// Work one render may do (minijinja's fuel: one unit per instruction, and one per 64 bytes of text a template
/// produces, see minijinja's src/vm/fuel.rs). Real chat templates use a few dozen instructions per message, so
/// this allows conversations of well over ten thousand messages (the server accepts 512 by default), while a
/// hostile template stops within a fraction of a second having produced at most ~64 MB of text: 20 million let
/// a template that doubles a string build 1.3 GB (found by tests/fuzz_chat_template.rs).
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// Longest rendered prompt, in bytes: 4 MiB is about a million tokens, beyond the context of the models served
/// (and 4x the server's default cap on a request's text). minijinja charges fuel for printed text only once it
/// is written, so without this cap one `{{ list * 30000000 }}` writes hundreds of megabytes within the fuel,
/// for seconds (found by tests/fuzz_chat_template.rs); `tojson` output is capped the same way.
pub const MAX_RENDERED_BYTES: usize = 4 << 20;

/// Stack of the rendering thread: printing a list nested 100k deep (what the fuel allows) takes ~40 MB of stack
/// in minijinja; 512 MiB leaves room for its deeper-recursing operations. Address space only, not memory.
const RENDER_STACK_BYTES: usize = 512 << 20;

/// A rendered chat split into trusted control tokens and plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The prompt text as the template wrote it (markers removed): what transformers' `apply_chat_template`
    /// returns for chats without literal control strings.
    pub text: String,
    /// Token ids written by the template (including `<image>` slots) and text to tokenize as plain text.
    pub pieces: Vec<Piece>,
    image_id: u32,
}

impl RenderedChat {
    /// Number of template-written pieces of token `id` (e.g. `<video>` slots).
    pub fn count_token(&self, id: u32) -> usize {
        self.pieces
            .iter()
            .filter(|p| matches!(p, Piece::Token(t) if *t == id))
            .count()
    }

    /// Number of image slots (template-written `<image>` tokens).
    pub fn image_slots(&self) -> usize {
        self.pieces
            .iter()
            .filter(|p| matches!(p, Piece::Token(id) if *id == self.image_id))
            .count()
    }
}

/// A compiled chat template plus the tokenizer facts rendering needs.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (file name), for messages.
    pub origin: String,
    /// Added-token strings with their ids, longest first.
    control_tokens: Vec<(String, u32)>,
    /// First characters of the control tokens.
    control_token_starts: Vec<char>,
    /// `bos_token`, `eos_token`, ... as transformers passes `tokenizer.special_tokens_map` to the template.
    special_strings: Vec<(&'static str, String)>,
    image_id: u32,
}

impl ChatTemplate {
    /// Find the template of a checkpoint directory, in transformers 5.24's processor precedence:
    /// processor_config.json `chat_template` > chat_template.json > chat_template.jinja > tokenizer_config.json.
    pub fn from_dir(dir: &Path, tokenizer: &TextTokenizer) -> Result<Self, PromptError> {
        let (source, origin) = find_template_source(dir, tokenizer)?;
        Self::from_source(&source, &origin, tokenizer)
    }

    /// Compile a template string.
    pub fn from_source(
        source: &str,
        origin: &str,
        tokenizer: &TextTokenizer,
    ) -> Result<Self, PromptError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| PromptError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        // The template comes with the checkpoint: bound its work so that a hostile one cannot hang a thread.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_formatter(bounded_formatter);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| PromptError::Template(format!("{origin}: {e}")))?;

        let control_tokens: Vec<(String, u32)> = tokenizer
            .added_token_strings()
            .into_iter()
            .filter_map(|s| tokenizer.token_to_id(&s).map(|id| (s, id)))
            .collect();
        let mut control_token_starts: Vec<char> = control_tokens
            .iter()
            .filter_map(|(t, _)| t.chars().next())
            .collect();
        control_token_starts.sort_unstable();
        control_token_starts.dedup();
        let cfg = tokenizer.config();
        let special_strings = [
            ("bos_token", cfg.bos_token()),
            ("eos_token", cfg.eos_token()),
            ("unk_token", cfg.unk_token()),
            ("pad_token", cfg.pad_token()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v.to_string())))
        .collect();
        Ok(Self {
            env,
            origin: origin.to_string(),
            control_tokens,
            control_token_starts,
            special_strings,
            image_id: tokenizer.special_ids().image,
        })
    }

    /// Render to text as transformers' `apply_chat_template(messages, add_generation_prompt=...)` does.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, PromptError> {
        Ok(self.render_pieces(messages, add_generation_prompt)?.text)
    }

    /// Render and split into control-token ids and plain text (see the module docs).
    pub fn render_pieces(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<RenderedChat, PromptError> {
        if messages.is_empty() {
            return Err(PromptError::Messages("no messages".to_string()));
        }
        let marked = match self.render_marked(messages, add_generation_prompt) {
            Err(RenderError::Raised(msg)) if messages.iter().any(|m| m.role == "system") => {
                tracing::warn!(template = %self.origin, reason = %msg, "template rejects system messages; folding them into the first user turn");
                let folded = fold_system_messages(messages);
                self.render_marked(&folded, add_generation_prompt)
                    .map_err(RenderError::into_prompt)?
            }
            other => other.map_err(RenderError::into_prompt)?,
        };
        Ok(self.split_marked(&marked))
    }

    fn render_marked(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, RenderError> {
        let tokens: Vec<&str> = self
            .control_tokens
            .iter()
            .map(|(s, _)| s.as_str())
            .collect();
        // Built as minijinja maps (insertion order kept, like Python dicts) rather than serde_json (sorted keys).
        let map = |entries: Vec<(&str, JValue)>| -> JValue { JValue::from_pairs(entries) };
        let msgs: Vec<JValue> = messages
            .iter()
            .map(|m| {
                let parts: Vec<JValue> = m
                    .parts_vec()
                    .into_iter()
                    .map(|p| match p {
                        ContentPart::Text { text } => map(vec![
                            ("type", JValue::from("text")),
                            ("text", JValue::from(mark_control_tokens(&text, &tokens))),
                        ]),
                        ContentPart::Image {} => map(vec![("type", JValue::from("image"))]),
                        ContentPart::Video {} => map(vec![("type", JValue::from("video"))]),
                    })
                    .collect();
                map(vec![
                    ("role", JValue::from(mark_control_tokens(&m.role, &tokens))),
                    ("content", JValue::from(parts)),
                ])
            })
            .collect();
        let mut ctx = vec![
            ("messages", JValue::from(msgs)),
            ("add_generation_prompt", JValue::from(add_generation_prompt)),
        ];
        for (k, v) in &self.special_strings {
            ctx.push((k, JValue::from(v.as_str())));
        }
        let ctx = map(ctx);
        let render = move || -> Result<String, RenderError> {
            let template = self
                .env
                .get_template("chat")
                .map_err(|e| RenderError::Other(e.to_string()))?;
            let mut out = CappedOutput::default();
            let rendered = template.render_captured_to(ctx, &mut out).map(drop);
            if out.overflowed {
                return Err(RenderError::Other(format!(
                    "{}: the rendered prompt is over {MAX_RENDERED_BYTES} bytes",
                    self.origin
                )));
            }
            rendered.map_err(|e| self.render_error(e))?;
            String::from_utf8(out.bytes).map_err(|e| {
                RenderError::Other(format!("{}: rendered text is not UTF-8: {e}", self.origin))
            })
        };
        // minijinja recurses over nested values (to print, compare and drop them), and a template can nest lists
        // ~100k deep within its fuel (`{% set ns.x = [ns.x] %}` in a loop): that overflows an ordinary thread's
        // stack and aborts the process (found by tests/fuzz_chat_template.rs). Rendering runs on a thread whose
        // stack is large enough for that depth (only the pages touched are committed), and a panic there is an
        // error, not the caller's crash.
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("chat-template".into())
                .stack_size(RENDER_STACK_BYTES)
                .spawn_scoped(scope, render)
                .map_err(|e| RenderError::Other(format!("cannot start the template thread: {e}")))?
                .join()
                .unwrap_or_else(|_| {
                    Err(RenderError::Other(format!(
                        "{}: the template renderer panicked",
                        self.origin
                    )))
                })
        })
    }

    fn render_error(&self, e: JError) -> RenderError {
        let raised = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .filter_map(|e| e.downcast_ref::<JError>())
            .find_map(|e| {
                e.detail()
                    .and_then(|d| d.strip_prefix(RAISE_PREFIX))
                    .map(str::to_string)
            });
        match raised {
            Some(msg) => RenderError::Raised(msg),
            None => RenderError::Other(format!("{}: {e:#}", self.origin)),
        }
    }

    /// Split rendered text: control tokens outside marked spans become token ids, everything else text.
    fn split_marked(&self, marked: &str) -> RenderedChat {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut text = String::with_capacity(marked.len());
        let mut buf = String::new();
        let mut rest = marked;
        while let Some(c) = rest.chars().next() {
            if c == MARK_START {
                let body = &rest[c.len_utf8()..];
                // A lone start marker (a template sliced the string) keeps the rest plain text: the safe side.
                let end = body.find(MARK_END).unwrap_or(body.len());
                buf.push_str(&body[..end]);
                text.push_str(&body[..end]);
                rest = body.get(end + MARK_END.len_utf8()..).unwrap_or("");
                continue;
            }
            if c == MARK_END {
                rest = &rest[c.len_utf8()..];
                continue;
            }
            // Only characters that start a control token are compared with the tokens: a rendered prompt can
            // be tens of megabytes (checked by tests/fuzz_chat_template.rs), the token list hundreds long.
            let starts_token = self.control_token_starts.contains(&c);
            if let Some((tok, id)) = self
                .control_tokens
                .iter()
                .filter(|_| starts_token)
                .find(|(t, _)| rest.starts_with(t.as_str()))
            {
                if !buf.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut buf)));
                }
                pieces.push(Piece::Token(*id));
                text.push_str(tok);
                rest = &rest[tok.len()..];
                continue;
            }
            buf.push(c);
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !buf.is_empty() {
            pieces.push(Piece::Text(buf));
        }
        RenderedChat {
            text,
            pieces,
            image_id: self.image_id,
        }
    }
}

enum RenderError {
    Raised(String),
    Other(String),
}

impl RenderError {
    fn into_prompt(self) -> PromptError {
        match self {
            RenderError::Raised(m) => PromptError::Template(format!("the template raised: {m}")),
            RenderError::Other(m) => PromptError::Template(m),
        }
    }
}

/// Wrap each control-token string inside `s` in markers (after removing any marker characters from `s`).
fn mark_control_tokens(s: &str, tokens: &[&str]) -> String {
    let clean: String = s
        .chars()
        .filter(|&c| c != MARK_START && c != MARK_END)
        .collect();
    let mut out = String::with_capacity(clean.len());
    let mut rest = clean.as_str();
    while let Some(c) = rest.chars().next() {
        if let Some(t) = tokens.iter().find(|t| rest.starts_with(**t)) {
            out.push(MARK_START);
            out.push_str(t);
            out.push(MARK_END);
            rest = &rest[t.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Move system messages into the first user turn (see module docs).
fn fold_system_messages(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let system: Vec<String> = messages
        .iter()
        .filter(|m| m.role == "system")
        .flat_map(|m| m.parts_vec())
        .filter_map(|p| match p {
            ContentPart::Text { text } => Some(text),
            ContentPart::Image {} | ContentPart::Video {} => None,
        })
        .collect();
    let prefix = ContentPart::Text {
        text: format!("{}\n\n", system.join("\n\n")),
    };
    let mut out: Vec<ChatMessage> = messages
        .iter()
        .filter(|m| m.role != "system")
        .cloned()
        .collect();
    match out.iter_mut().find(|m| m.role == "user") {
        Some(first_user) => {
            let mut parts = vec![prefix];
            parts.extend(first_user.parts_vec());
            first_user.content = MessageContent::Parts(parts);
        }
        None => out.insert(0, ChatMessage::parts("user", vec![prefix])),
    }
    out
}

fn raise_exception(message: String) -> Result<JValue, JError> {
    Err(JError::new(
        ErrorKind::InvalidOperation,
        format!("{RAISE_PREFIX}{message}"),
    ))
}

/// The template text and the file it came from.
fn find_template_source(
    dir: &Path,
    tokenizer: &TextTokenizer,
) -> Result<(String, String), PromptError> {
    let as_template = |v: &Value| -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            // A list of named templates: use "default" (transformers' choice when none is named).
            Value::Array(items) => items.iter().find_map(|it| {
                (it.get("name")?.as_str()? == "default")
                    .then(|| it.get("template")?.as_str().map(str::to_string))?
            }),
            _ => None,
        }
    };
    let processor_path = dir.join("processor_config.json");
    if let Some(t) = read_json_if_exists(&processor_path)?
        .as_ref()
        .and_then(|p| p.get("chat_template"))
        .and_then(as_template)
    {
        return Ok((t, processor_path.display().to_string()));
    }
    let json_path = dir.join("chat_template.json");
    if let Some(v) = read_json_if_exists(&json_path)? {
        let t = v
            .get("chat_template")
            .and_then(as_template)
            .ok_or_else(|| PromptError::Config {
                file: json_path.display().to_string(),
                message: "no string \"chat_template\" field".to_string(),
            })?;
        return Ok((t, json_path.display().to_string()));
    }
    let jinja_path = dir.join("chat_template.jinja");
    if jinja_path.is_file() {
        let t = std::fs::read_to_string(&jinja_path).map_err(|e| PromptError::Config {
            file: jinja_path.display().to_string(),
            message: e.to_string(),
        })?;
        return Ok((t, jinja_path.display().to_string()));
    }
    if let Some(t) = tokenizer
        .config()
        .chat_template
        .as_ref()
        .and_then(as_template)
    {
        return Ok((t, dir.join("tokenizer_config.json").display().to_string()));
    }
    Err(PromptError::NoChatTemplate(dir.display().to_string()))
}
