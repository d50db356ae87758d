//! The one API error type. Every failure answers
//! `{"error":{"code":"<stable snake_case>","message":"…"}}` with the
//! status of the table below; internal causes are logged, never sent.
//!
//! | code                  | status |
//! |-----------------------|--------|
//! | bad_request           | 400 |
//! | unauthorized          | 401 |
//! | forbidden             | 403 |
//! | not_found             | 404 |
//! | method_not_allowed    | 405 |
//! | conflict              | 409 |
//! | precondition_failed   | 412 |
//! | payload_too_large     | 413 |
//! | unprocessable_entity  | 422 |
//! | rate_limited          | 429 |
//! | internal_error        | 500 |
//! | bad_gateway           | 502 |
//! | service_unavailable   | 503 |
//! | gateway_timeout       | 504 |

use crate::auth::Denied;
use crate::pipeline::IngestError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use twinhub_codec::DecodeError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
    /// Structured details (e.g. every model error) next to the message.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg)
    }

    /// 400 naming the field and the rule it broke.
    pub fn field(field: &str, rule: &str) -> ApiError {
        ApiError::bad_request(format!("{field}: {rule}"))
    }

    /// 422: well-formed but breaks a domain rule.
    pub fn invalid(field: &str, rule: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            format!("{field}: {rule}"),
        )
    }

    pub fn unauthorized(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg)
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn conflict(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", msg)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds this route's limit of {limit} bytes"),
        )
    }

    pub fn busy() -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the server is catching up; retry shortly",
            )
        }
    }

    /// Free disk space is under `store.min_free`: nothing was stored.
    pub fn no_space() -> ApiError {
        ApiError {
            retry_after: Some(30),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_full",
                "free disk space is under the server's reserve (store.min_free); telemetry is refused until space is freed",
            )
        }
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        if let Some(d) = self.details {
            body["error"]["details"] = d;
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<Denied> for ApiError {
    fn from(d: Denied) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", d.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Invalid { field, rule } => ApiError::invalid(&field, &rule),
            StoreError::Busy => ApiError::busy(),
            StoreError::NoSpace => ApiError::no_space(),
            StoreError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the store is unavailable",
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                ApiError::internal()
            }
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match e {
            RegistryError::Invalid { field, rule } => ApiError::field(&field, &rule),
            RegistryError::Store(s) => s.into(),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        match e {
            IngestError::Invalid { field, rule } => ApiError::invalid(&field, &rule),
            IngestError::Busy => ApiError::busy(),
            IngestError::Unavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                "the store is unavailable",
            ),
            IngestError::NoSpace => ApiError::no_space(),
            IngestError::Quota(q) => q.into(),
        }
    }
}

/// Rate-like quotas answer 429 with Retry-After (points: until the next
/// UTC day); count-like ones 403. Both name the quota.
impl From<crate::quotas::QuotaExceeded> for ApiError {
    fn from(q: crate::quotas::QuotaExceeded) -> ApiError {
        let message = format!("quota {} exceeded (limit {})", q.name, q.limit);
        match q.retry_after {
            Some(secs) => ApiError {
                retry_after: Some(secs),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
            },
            None => ApiError::new(StatusCode::FORBIDDEN, "quota_exceeded", message),
        }
    }
}

impl From<crate::twins::TwinError> for ApiError {
    fn from(e: crate::twins::TwinError) -> ApiError {
        use crate::twins::TwinError as T;
        match e {
            T::NotFound(m) => ApiError::not_found(m),
            T::Conflict(m) => ApiError::conflict(m),
            T::Precondition(m) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", m)
            }
            T::BadRequest(m) => ApiError::bad_request(m),
            T::Invalid { field, rule } => ApiError::invalid(&field, &rule),
            T::Models(errors) => {
                let message = errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                ApiError {
                    details: serde_json::to_value(&errors).ok(),
                    ..ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unprocessable_entity",
                        message,
                    )
                }
            }
            T::Store(s) => s.into(),
        }
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> ApiError {
        ApiError::field(&e.field, &e.rule)
    }
}
