//! Completes the generated OpenAPI document with what every operation
//! shares: the error body and the error statuses each kind of operation
//! can answer, so a client generated from the document (or an API
//! fuzzer) knows every answer it may get. Handlers document their
//! specific answers (201, 409, 412, …); this adds the common ones where
//! they apply and gives every error answer the error schema.

use serde_json::{json, Map, Value};

/// Why each status is answered, for the document.
fn describe(code: &str) -> &'static str {
    match code {
        "400" => "Malformed request: bad JSON, a wrong type, a missing field or a bad parameter (the message names it).",
        "401" => "Missing, expired or revoked credentials.",
        "403" => "The caller lacks the permission named in the message, or a count quota is reached.",
        "404" => "Not found. Another tenant's resources, and unknown tenants, are not found either.",
        "409" => "Conflicts with the current state (the message says how).",
        "412" => "The If-Match precondition failed.",
        "413" => "The body is over this route's limit.",
        "422" => "Well-formed but breaks a domain rule (the message names the field and the rule).",
        "429" => "A rate limit or quota was reached; retry after the Retry-After seconds.",
        "502" => "The device answered with an error.",
        "503" => "The store is unavailable, catching up or short of disk space; retry after the Retry-After seconds.",
        "504" => "The device did not answer in time.",
        _ => "Error.",
    }
}

fn error_response(code: &str) -> Value {
    json!({
        "description": describe(code),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

fn error_schema() -> Value {
    let codes: Vec<&str> = super::error::Code::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": codes, "description": "A stable snake_case code."},
                    "message": {"type": "string"},
                    "details": {"description": "Per-element details where there are several (DTDL errors)."}
                }
            }
        }
    })
}

/// Adds the shared error answers and the `Error` schema.
pub fn complete(doc: &mut Value) {
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut);
    if let Some(s) = schemas {
        s.insert("Error".into(), error_schema());
    }
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if let Some(op) = op.as_object_mut() {
                complete_operation(path, method, op);
            }
        }
    }
}

fn complete_operation(path: &str, method: &str, op: &mut Map<String, Value>) {
    let public = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().all(|r| r.as_object().is_some_and(Map::is_empty)));
    if public {
        // No requirement at all (rather than "one empty requirement"), so
        // generated clients call it without credentials.
        op.insert("security".into(), json!([]));
    }
    let has_body = op.contains_key("requestBody");
    let has_params = path.contains('{')
        || op
            .get("parameters")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty());
    let writes = matches!(method, "post" | "put" | "patch" | "delete");
    let api = path.starts_with("/api/");
    let mut add: Vec<&str> = Vec::new();
    if has_body || has_params {
        add.push("400");
    }
    if has_body {
        add.extend(["413", "422"]);
    }
    if api && !public {
        add.extend(["401", "403", "404", "429"]);
        if writes {
            add.push("503");
        }
    }
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    for code in add {
        responses
            .entry(code.to_string())
            .or_insert_with(|| error_response(code));
    }
    if !api {
        return;
    }
    // Error answers the handler listed without a body get the schema.
    for (code, r) in responses.iter_mut() {
        let is_error = code.starts_with('4') || code.starts_with('5');
        let bare = r.get("content").is_none() && r.get("$ref").is_none();
        if is_error && bare {
            *r = error_response(code);
        }
    }
}
