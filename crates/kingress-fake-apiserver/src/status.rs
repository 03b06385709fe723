//! API errors, answered as `Status` objects as the real server does.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// A failed request: the HTTP status, the `Status` reason and message, and the optional details.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details` of the Status (`name`, `group`, `kind`).
    pub details: Option<Value>,
    /// `metadata` of the Status (the real server puts a fresh `continue` token here on 410).
    pub metadata: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason_for(code),
            message: message.into(),
            details: None,
            metadata: None,
        }
    }

    fn about(mut self, rt: &ResourceType, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": rt.group, "kind": rt.plural}));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, message)
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, format!("{} \"{name}\" not found", rt.qualified())).about(rt, name)
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        let mut e = Self::new(409, format!("{} \"{name}\" already exists", rt.qualified())).about(rt, name);
        e.reason = "AlreadyExists";
        e
    }

    /// The optimistic-concurrency failure: the client's resourceVersion is not the stored one.
    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.qualified()
            ),
        )
        .about(rt, name)
    }

    /// A failed precondition (uid, or resourceVersion in DeleteOptions).
    pub fn precondition(rt: &ResourceType, name: &str, what: &str, wanted: &str, actual: &str) -> Self {
        Self::new(
            409,
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}",
                rt.qualified()
            ),
        )
        .about(rt, name)
    }

    pub fn too_old(requested: u64, oldest: u64) -> Self {
        Self::new(410, format!("too old resource version: {requested} ({oldest})"))
    }

    pub fn too_large(requested: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            format!("Too large resource version: {requested}, current: {current}"),
        );
        e.details = Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1
        }));
        e
    }

    pub fn not_found_path() -> Self {
        Self::new(404, "the server could not find the requested resource")
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": self.metadata.clone().unwrap_or_else(|| json!({})),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Value::Object(map)) = (&self.details, &mut status) {
            map.insert("details".into(), details.clone());
        }
        status
    }
}

/// The `Status` reason the real server gives for an HTTP status.
pub(crate) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}
