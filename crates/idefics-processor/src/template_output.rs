//! Bounded output for chat templates: the capped writer the template renders into, the formatter that refuses
//! values too large to print, and transformers' `tojson` with the same cap (see [`MAX_RENDERED_BYTES`]).

use minijinja::value::{Kwargs, Value as JValue, ValueKind};
use minijinja::{Error as JError, ErrorKind};
use serde_json::Value;

use crate::chat_template::MAX_RENDERED_BYTES;

/// The rendered text, refusing to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
pub(crate) struct CappedOutput {
    pub(crate) bytes: Vec<u8>,
    pub(crate) overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + data.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered prompt too long"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Deepest nesting `tojson` serialises (Python's json stops at its recursion limit, 1000 by default).
const MAX_JSON_DEPTH: usize = 500;

/// minijinja's formatter, except that a list or map whose printed form cannot fit [`MAX_RENDERED_BYTES`] is an
/// error before it is printed: minijinja's `Display` visits every item of `{{ ['abc'] * 30000000 }}` (seconds),
/// whatever the output does with the text (found by tests/fuzz_chat_template.rs).
pub(crate) fn bounded_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &JValue,
) -> Result<(), JError> {
    if matches!(
        value.kind(),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
    ) && !printed_size_fits(value)
    {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            format!("a printed value is over {MAX_RENDERED_BYTES} bytes"),
        ));
    }
    minijinja::escape_formatter(out, state, value)
}

/// Whether `value` may print within [`MAX_RENDERED_BYTES`], from a lower bound on its printed size (every item
/// at least one byte, strings at least their length). The walk stops once the bound passes the cap, so it visits
/// at most that many items.
fn printed_size_fits(value: &JValue) -> bool {
    let mut budget = MAX_RENDERED_BYTES;
    let mut pending = vec![value.clone()];
    while let Some(v) = pending.pop() {
        let own = match v.kind() {
            ValueKind::String => v.as_str().map_or(1, str::len),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => v.len().unwrap_or(0).max(1),
            _ => 1,
        };
        let Some(left) = budget.checked_sub(own) else {
            return false;
        };
        budget = left;
        if !matches!(
            v.kind(),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable
        ) {
            continue;
        }
        let Ok(items) = v.try_iter() else {
            continue;
        };
        let is_map = v.kind() == ValueKind::Map;
        for item in items {
            if pending.len() >= budget {
                return false;
            }
            let child = if is_map {
                v.get_item(&item).unwrap_or_default()
            } else {
                item
            };
            pending.push(child);
        }
    }
    true
}

fn too_long_json() -> JError {
    JError::new(
        ErrorKind::InvalidOperation,
        format!("tojson: output over {MAX_RENDERED_BYTES} bytes"),
    )
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)` - Python's
/// separators (", " and ": "), no HTML escaping.
pub(crate) fn tojson(value: JValue, kwargs: Kwargs) -> Result<JValue, JError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    python_json(&value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(JValue::from_safe_string(out))
}

fn python_json(
    v: &JValue,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), JError> {
    // Every push is checked against the cap: a lazily repeated list (`x * 30000000`) or a huge indent would
    // otherwise build a string of any size before minijinja charges fuel for it.
    let newline = |out: &mut String, depth: usize| -> Result<(), JError> {
        if let Some(n) = indent {
            let width = n.saturating_mul(depth);
            if out.len().saturating_add(width) >= MAX_RENDERED_BYTES {
                return Err(too_long_json());
            }
            out.push('\n');
            out.push_str(&" ".repeat(width));
        }
        Ok(())
    };
    if out.len() >= MAX_RENDERED_BYTES {
        return Err(too_long_json());
    }
    // A template can nest lists in a loop (`{% set ns.x = [ns.x] %}`): recursion must stop before the stack does.
    if depth > MAX_JSON_DEPTH {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            format!("tojson: value nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let item_sep = if indent.is_some() { "," } else { ", " };
    let json_str = |s: &str| Value::String(s.to_string()).to_string();
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let n: Value = serde_json::to_value(v)
                .map_err(|e| JError::new(ErrorKind::InvalidOperation, e.to_string()))?;
            out.push_str(&n.to_string());
        }
        ValueKind::String => out.push_str(&json_str(v.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            let mut empty = true;
            for (i, x) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1)?;
                python_json(&x, indent, sort, depth + 1, out)?;
                empty = false;
            }
            if !empty {
                newline(out, depth)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<JValue> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1)?;
                out.push_str(&json_str(&k.to_string()));
                out.push_str(": ");
                python_json(&v.get_item(k)?, indent, sort, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth)?;
            }
            out.push('}');
        }
        _ => out.push_str(&json_str(&v.to_string())),
    }
    Ok(())
}
