//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}` with a matching status.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error that becomes an HTTP response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (`messages[0].content[1].image_url`), when there is one.
    pub param: Option<String>,
    /// Short machine-readable code (`image_decode_failed`, `context_length_exceeded`, ...).
    pub code: &'static str,
}

impl ApiError {
    /// 400 invalid_request_error.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: None,
            code,
        }
    }

    /// The same error, naming the request field at fault.
    pub fn at(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn unsupported_param(name: &str, why: &str) -> Self {
        Self::bad_request(
            "unsupported_parameter",
            format!("unsupported parameter '{name}': {why}"),
        )
        .at(name)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            param: None,
            code: "internal_error",
        }
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            param: None,
            code: "server_overloaded",
        }
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: message.into(),
            param: None,
            code: "timeout",
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            param: None,
            code: "not_found",
        }
    }

    /// OpenAI's `type` field, derived from the status.
    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 405 | 413 | 415 => "invalid_request_error",
            503 | 429 => "server_overloaded",
            504 => "timeout",
            _ => "server_error",
        }
    }

    /// The JSON body (also used for in-stream error events).
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}
