//! One field of a net-conf `Backend` section, read as flannel's JSON decoding reads it
//! (the key matched without case, a number in range, a boolean), and the error that
//! names the backend, the field, what it wants and what it got.

use serde_json::Value;
use weft_lease::text::describe;

/// A `Backend` field that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {backend} Backend field {field}: expected {expected}, got {got}")]
pub struct FieldError {
    pub backend: &'static str,
    pub field: &'static str,
    pub expected: &'static str,
    pub got: String,
}

/// The fields of one backend's section.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub backend: &'static str,
}

impl Fields {
    pub fn error(self, field: &'static str, expected: &'static str, got: String) -> FieldError {
        FieldError {
            backend: self.backend,
            field,
            expected,
            got,
        }
    }

    /// A non-negative integer up to `max`.
    pub fn uint(self, field: &'static str, value: &Value, max: u64) -> Result<u64, FieldError> {
        match value {
            Value::Number(n) => n
                .as_u64()
                .filter(|v| *v <= max)
                .ok_or_else(|| self.error(field, "a non-negative integer in range", n.to_string())),
            other => Err(self.error(field, "a number", describe(other))),
        }
    }

    pub fn boolean(self, field: &'static str, value: &Value) -> Result<bool, FieldError> {
        match value {
            Value::Bool(b) => Ok(*b),
            other => Err(self.error(field, "true or false", describe(other))),
        }
    }
}
