//! The one API error type. Every failure answers
//! `{"error":{"code":"<stable snake_case>","message":"…"}}` with the
//! status of the table below; internal causes are logged, never sent.
//! A code exists only as a `Code` variant, and a unit test checks that
//! this table lists every variant with its statuses (the OpenAPI `Error`
//! schema's `code` enum is generated from `Code::ALL`).
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
//! | quota_exceeded        | 403 (a count quota), 429 (a rate quota, with Retry-After) |
//! | internal_error        | 500 |
//! | secret_undecryptable  | 500 |
//! | bad_gateway           | 502 |
//! | service_unavailable   | 503 |
//! | storage_full          | 503 |
//! | gateway_timeout       | 504 |

use crate::auth::Denied;
use crate::pipeline::IngestError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use twinhub_codec::DecodeError;

/// The stable error codes of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    UnprocessableEntity,
    RateLimited,
    QuotaExceeded,
    InternalError,
    SecretUndecryptable,
    BadGateway,
    ServiceUnavailable,
    StorageFull,
    GatewayTimeout,
}

impl Code {
    pub const ALL: [Code; 17] = [
        Code::BadRequest,
        Code::Unauthorized,
        Code::Forbidden,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::Conflict,
        Code::PreconditionFailed,
        Code::PayloadTooLarge,
        Code::UnprocessableEntity,
        Code::RateLimited,
        Code::QuotaExceeded,
        Code::InternalError,
        Code::SecretUndecryptable,
        Code::BadGateway,
        Code::ServiceUnavailable,
        Code::StorageFull,
        Code::GatewayTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Conflict => "conflict",
            Code::PreconditionFailed => "precondition_failed",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UnprocessableEntity => "unprocessable_entity",
            Code::RateLimited => "rate_limited",
            Code::QuotaExceeded => "quota_exceeded",
            Code::InternalError => "internal_error",
            Code::SecretUndecryptable => "secret_undecryptable",
            Code::BadGateway => "bad_gateway",
            Code::ServiceUnavailable => "service_unavailable",
            Code::StorageFull => "storage_full",
            Code::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The statuses a code may be sent with.
    pub fn statuses(self) -> &'static [u16] {
        match self {
            Code::BadRequest => &[400],
            Code::Unauthorized => &[401],
            Code::Forbidden => &[403],
            Code::NotFound => &[404],
            Code::MethodNotAllowed => &[405],
            Code::Conflict => &[409],
            Code::PreconditionFailed => &[412],
            Code::PayloadTooLarge => &[413],
            Code::UnprocessableEntity => &[422],
            Code::RateLimited => &[429],
            Code::QuotaExceeded => &[403, 429],
            Code::InternalError | Code::SecretUndecryptable => &[500],
            Code::BadGateway => &[502],
            Code::ServiceUnavailable | Code::StorageFull => &[503],
            Code::GatewayTimeout => &[504],
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub retry_after: Option<u64>,
    /// Structured details (e.g. every model error) next to the message.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        debug_assert!(
            code.statuses().contains(&status.as_u16()),
            "{code:?} sent with {status}"
        );
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, Code::BadRequest, msg)
    }

    /// 400 naming the field and the rule it broke.
    pub fn field(field: &str, rule: &str) -> ApiError {
        ApiError::bad_request(format!("{field}: {rule}"))
    }

    /// 422: well-formed but breaks a domain rule.
    pub fn invalid(field: &str, rule: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::UnprocessableEntity,
            format!("{field}: {rule}"),
        )
    }

    pub fn unauthorized(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, msg)
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, Code::NotFound, what)
    }

    pub fn conflict(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, Code::Conflict, msg)
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::PayloadTooLarge,
            format!("the request body exceeds this route's limit of {limit} bytes"),
        )
    }

    pub fn busy() -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::ServiceUnavailable,
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
                Code::StorageFull,
                "free disk space is under the server's reserve (store.min_free); telemetry is refused until space is freed",
            )
        }
    }

    pub fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::InternalError,
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body =
            serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}});
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
        ApiError::new(StatusCode::FORBIDDEN, Code::Forbidden, d.to_string())
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
                Code::ServiceUnavailable,
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

impl From<crate::ingest::http::Refused> for ApiError {
    fn from(e: crate::ingest::http::Refused) -> ApiError {
        match e {
            crate::ingest::http::Refused::Decode(d) => d.into(),
            crate::ingest::http::Refused::Ingest(i) => i.into(),
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
                Code::ServiceUnavailable,
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
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, Code::QuotaExceeded, message)
            },
            None => ApiError::new(StatusCode::FORBIDDEN, Code::QuotaExceeded, message),
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
                ApiError::new(StatusCode::PRECONDITION_FAILED, Code::PreconditionFailed, m)
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
                        Code::UnprocessableEntity,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented table lists every code with exactly its statuses.
    #[test]
    fn the_documented_table_is_complete() {
        let src = include_str!("error.rs");
        let rows: Vec<(String, Vec<u16>)> = src
            .lines()
            .filter_map(|l| l.strip_prefix("//! | "))
            .filter(|l| !l.starts_with("code") && !l.starts_with('-'))
            .map(|l| {
                let mut cells = l.split('|').map(str::trim);
                let code = cells.next().unwrap_or("").to_string();
                let statuses = cells
                    .next()
                    .unwrap_or("")
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u16>().ok())
                    .filter(|n| (400..600).contains(n))
                    .collect();
                (code, statuses)
            })
            .collect();
        for c in Code::ALL {
            let row = rows.iter().find(|(name, _)| name == c.as_str());
            let row = row.unwrap_or_else(|| panic!("{} is not in the table", c.as_str()));
            assert_eq!(row.1, c.statuses(), "{}", c.as_str());
        }
        assert_eq!(
            rows.len(),
            Code::ALL.len(),
            "the table lists a code that does not exist"
        );
    }
}
