//! Request bodies read as bytes and parsed here, so that every malformed body — not JSON,
//! not an object, a field missing or of the wrong type, an unknown field, too large — is a
//! JSON error that names the field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

pub fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than this server accepts".to_string()
        } else {
            format!("the request body could not be read: {rejection}")
        };
        ApiError::new(status, None, message)
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            None,
            "the request body is empty; expected a JSON object",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            None,
            format!("malformed JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            None,
            format!("expected a JSON object, got {}", kind(&value)),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // serde names a missing or unknown field in its message, not in the path
        let field = match path.as_str() {
            "." | "" => quoted_field(&message),
            p => Some(p.to_string()),
        };
        ApiError::new(StatusCode::BAD_REQUEST, field.as_deref(), message)
    })
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `missing field `prompt`` → `prompt`.
fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    let field = &message[start..start + len];
    (message.starts_with("missing field") || message.starts_with("unknown field"))
        .then(|| field.to_string())
}
