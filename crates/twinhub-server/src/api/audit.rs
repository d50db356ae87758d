//! Reading and verifying the audit chains.

use super::error::ApiError;
use super::extract::ApiQuery;
use super::AppState;
use crate::audit::SYSTEM_CHAIN;
use crate::auth::{Perm, Principal};
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use twinhub_model::time::format_rfc3339;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The chain: your tenant (default); system admins may read `system`
    /// or any tenant's.
    pub chain: Option<String>,
    pub limit: Option<usize>,
    /// The `next` token of the previous page.
    pub next: Option<String>,
}

fn chain_for(p: &Principal, asked: Option<&str>) -> String {
    match asked {
        Some(c) if p.is_system_admin() => c.to_string(),
        _ => p.tenant.clone(),
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery), responses((status = 200, body = serde_json::Value), (status = 403)))]
pub async fn list_audit(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::AuditRead)?;
    let chain = chain_for(&p, q.chain.as_deref());
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::field("limit", "must be between 1 and 1000")),
    };
    let after = match &q.next {
        None => 0,
        Some(n) => n
            .parse()
            .map_err(|_| ApiError::field("next", "is not a token this server issued"))?,
    };
    let rows = state.audit.page(&chain, after, limit + 1)?;
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    let value: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"seq": r.seq, "ts": format_rfc3339(r.ts), "actor": r.actor, "action": r.action, "target": r.target,
                   "detail": serde_json::from_str::<Value>(&r.detail).unwrap_or(Value::Null)})
        })
        .collect();
    let next = if more {
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    Ok(Json(json!({"chain": chain, "value": value, "next": next})))
}

/// Recomputes the caller's chain (system admins: every chain) and compares
/// it with the checkpoint kept outside the database.
#[utoipa::path(post, path = "/api/v1/audit/verify", tag = "audit", responses((status = 200, body = serde_json::Value, description = "{\"ok\":true,\"entries\":N} or {\"ok\":false,\"first_bad\":seq}, with a report per chain"), (status = 403)))]
pub async fn verify_audit(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::AuditRead)?;
    let mut chains = vec![p.tenant.clone()];
    if p.is_system_admin() {
        chains.push(SYSTEM_CHAIN.to_string());
        chains.extend(state.audit.chains()?);
        chains.sort();
        chains.dedup();
    }
    let audit = &state.audit;
    let reports: Vec<crate::audit::ChainReport> = chains
        .iter()
        .map(|c| audit.verify(c))
        .collect::<Result<_, _>>()?;
    let ok = reports.iter().all(|r| r.ok);
    let entries: i64 = reports.iter().map(|r| r.entries).sum();
    let mut out = json!({"ok": ok, "entries": entries, "chains": reports});
    if let Some(bad) = reports.iter().find(|r| !r.ok) {
        out["first_bad"] = json!(bad.first_bad);
        out["chain"] = json!(bad.chain);
    }
    Ok(Json(out))
}
