//! `/api/v1/rules` and `/api/v1/alarms`: rule definitions (a change is a
//! new version), and alarms with their lifecycle (acknowledge, clear,
//! comment — each audited).

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, Paging};
use super::AppState;
use crate::auth::{Perm, Principal};
use crate::rules::alarms::AlarmError;
use crate::rules::{RuleError, RuleSpec};
use crate::store::rules::AlarmFilter;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use twinhub_model::rules::alarm::{Severity, Status};

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> ApiError {
        match e {
            RuleError::Field {
                status: 422,
                field,
                rule,
            } => ApiError::invalid(&field, &rule),
            RuleError::Field { field, rule, .. } => ApiError::field(&field, &rule),
            RuleError::NotFound(m) => ApiError::not_found(m),
            RuleError::Conflict(m) => ApiError::conflict(m),
            RuleError::Store(s) => s.into(),
        }
    }
}

impl From<AlarmError> for ApiError {
    fn from(e: AlarmError) -> ApiError {
        match e {
            AlarmError::NotFound(id) => ApiError::not_found(format!("alarm {id} not found")),
            AlarmError::Refused(r) => ApiError::conflict(r.to_string()),
            AlarmError::Store(s) => s.into(),
        }
    }
}

fn rule_doc(state: &AppState, r: &crate::rules::Rule) -> Value {
    r.doc(&state.rules.status(&r.tenant, &r.id))
}

/// Creates a rule (version 1). Expressions are CEL; a parse or type error
/// answers 422 naming the field, line and column.
#[utoipa::path(post, path = "/api/v1/rules", tag = "rules", params(Paging),
    request_body(content = Value, description = "{id?, name, kind?: condition|no_data, select: {twin}|{model}|{query}, condition?, clear?, for?, timeout?, alarm: {type, severity, propagate?}, enabled?}"),
    responses((status = 201, body = Value), (status = 400), (status = 409), (status = 422)))]
pub async fn create_rule(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(spec): ApiJson<RuleSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::RulesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let rule = state.rules.put(&tenant, spec, None, &state.twins).await?;
    let doc = rule_doc(&state, &rule);
    state
        .audit(&p, &tenant, "rule.create", &rule.id, doc.clone())
        .await;
    Ok((StatusCode::CREATED, Json(doc)))
}

#[utoipa::path(get, path = "/api/v1/rules", tag = "rules", params(Paging),
    responses((status = 200, body = Value)))]
pub async fn list_rules(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RulesRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let all = state.rules.list(&tenant);
    let (page, next) = q.page(&all, |r| &r.id)?;
    let page: Vec<Value> = page.iter().map(|r| rule_doc(&state, r)).collect();
    Ok(Json(json!({"value": page, "next": next})))
}

#[utoipa::path(get, path = "/api/v1/rules/{id}", tag = "rules", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn get_rule(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RulesRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let r = state
        .rules
        .get(&tenant, &id)
        .ok_or_else(|| ApiError::not_found(format!("rule {id} not found")))?;
    Ok(Json(rule_doc(&state, &r)))
}

/// Replaces a rule's definition: a new version (its rolling state per twin
/// is kept; its open alarms stay open).
#[utoipa::path(put, path = "/api/v1/rules/{id}", tag = "rules", params(("id" = String, Path), Paging),
    request_body(content = Value, description = "the whole rule, as for POST"),
    responses((status = 200, body = Value), (status = 400), (status = 404), (status = 422)))]
pub async fn update_rule(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(spec): ApiJson<RuleSpec>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RulesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let rule = state
        .rules
        .put(&tenant, spec, Some(&id), &state.twins)
        .await?;
    let doc = rule_doc(&state, &rule);
    state
        .audit(&p, &tenant, "rule.update", &id, doc.clone())
        .await;
    Ok(Json(doc))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulePatch {
    pub enabled: bool,
}

/// Enables or disables a rule (a new version).
#[utoipa::path(patch, path = "/api/v1/rules/{id}", tag = "rules", params(("id" = String, Path), Paging),
    request_body = RulePatch,
    responses((status = 200, body = Value), (status = 400), (status = 404)))]
pub async fn patch_rule(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(patch): ApiJson<RulePatch>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::RulesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let rule = state
        .rules
        .set_enabled(&tenant, &id, patch.enabled, &state.twins)
        .await?;
    let action = if patch.enabled {
        "rule.enable"
    } else {
        "rule.disable"
    };
    state.audit(&p, &tenant, action, &id, json!({})).await;
    Ok(Json(rule_doc(&state, &rule)))
}

#[utoipa::path(delete, path = "/api/v1/rules/{id}", tag = "rules", params(("id" = String, Path), Paging),
    responses((status = 204), (status = 404)))]
pub async fn delete_rule(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<StatusCode, ApiError> {
    p.require(Perm::RulesWrite)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if !state.rules.delete(&tenant, &id).await? {
        return Err(ApiError::not_found(format!("rule {id} not found")));
    }
    state
        .audit(&p, &tenant, "rule.delete", &id, json!({}))
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlarmQuery {
    /// `active`, `cleared`, `unack`, `ack`, or one of ACTIVE_UNACK,
    /// ACTIVE_ACK, CLEARED_UNACK, CLEARED_ACK (comma-separated).
    pub status: Option<String>,
    /// Comma-separated severities (critical, major, minor, warning,
    /// indeterminate).
    pub severity: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    pub originator: Option<String>,
    /// With `originator`: also the alarms of the twins below it, along
    /// the relationships rules propagate on.
    pub subtree: Option<bool>,
    /// Alarms started at or after (RFC 3339 or epoch ms)…
    pub from: Option<String>,
    /// …and before.
    pub to: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    pub next: Option<String>,
    pub tenant: Option<String>,
}

fn statuses(s: &str) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let add: &[Status] = match part {
            "active" => &[Status::ActiveUnack, Status::ActiveAck],
            "cleared" => &[Status::ClearedUnack, Status::ClearedAck],
            "unack" => &[Status::ActiveUnack, Status::ClearedUnack],
            "ack" => &[Status::ActiveAck, Status::ClearedAck],
            exact => match serde_json::from_value::<Status>(json!(exact)) {
                Ok(s) => {
                    out.push(crate::rules::alarms::text(&s));
                    continue;
                }
                Err(_) => return Err(ApiError::field(
                    "status",
                    "must be active, cleared, unack, ack or an alarm status such as ACTIVE_UNACK",
                )),
            },
        };
        out.extend(add.iter().map(crate::rules::alarms::text));
    }
    Ok(out)
}

fn severities(s: &str) -> Result<Vec<String>, ApiError> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            serde_json::from_value::<Severity>(json!(p))
                .map(|s| crate::rules::alarms::text(&s))
                .map_err(|_| {
                    ApiError::field(
                        "severity",
                        "must be critical, major, minor, warning or indeterminate",
                    )
                })
        })
        .collect()
}

/// The twins whose alarms count on `root`: itself and every twin below it
/// along the relationships rules propagate on — in whichever direction the
/// graph uses the name (`isPartOf` from child to parent, `contains` from
/// parent to child), each walk keeping its direction.
fn below(state: &AppState, tenant: &str, root: &str) -> Vec<String> {
    let rels: HashSet<String> = state
        .rules
        .list(tenant)
        .iter()
        .filter_map(|r| r.alarm.propagate.clone())
        .collect();
    state.twins.read(tenant, |g| {
        let mut seen: HashSet<String> = HashSet::from([root.to_string()]);
        for upward in [true, false] {
            let mut stack = vec![root.to_string()];
            while let Some(t) = stack.pop() {
                let next: Vec<String> = if upward {
                    g.incoming_of(&t)
                        .filter(|r| rels.contains(&r.name))
                        .map(|r| r.source.to_string())
                        .collect()
                } else {
                    g.outgoing(&t)
                        .filter(|r| rels.contains(&r.name))
                        .map(|r| r.target.to_string())
                        .collect()
                };
                for n in next {
                    if seen.insert(n.clone()) {
                        stack.push(n);
                    }
                }
            }
        }
        seen.into_iter().collect()
    })
}

/// Whose alarms a request asks for: one originator, or (with `subtree`)
/// it and the twins below it whose alarms propagate.
struct Scope {
    root: String,
    twins: Vec<String>,
    subtree: bool,
}

impl Scope {
    fn of(
        state: &AppState,
        tenant: &str,
        originator: Option<&str>,
        subtree: Option<bool>,
    ) -> Result<Option<Scope>, ApiError> {
        let subtree = subtree.unwrap_or(false);
        let Some(root) = originator else {
            return match subtree {
                true => Err(ApiError::field("subtree", "needs originator")),
                false => Ok(None),
            };
        };
        let twins = match subtree {
            true => below(state, tenant, root),
            false => vec![root.to_string()],
        };
        Ok(Some(Scope {
            root: root.to_string(),
            twins,
            subtree,
        }))
    }

    /// Whether an alarm of one of `twins` counts here.
    fn admits(&self, a: &crate::rules::alarms::Alarm) -> bool {
        a.originator == self.root || (self.subtree && a.propagate.is_some())
    }
}

/// Alarms, newest first, filtered.
#[utoipa::path(get, path = "/api/v1/alarms", tag = "alarms", params(AlarmQuery),
    responses((status = 200, body = Value), (status = 400)))]
pub async fn list_alarms(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<AlarmQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::AlarmsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(ApiError::field("limit", "must be between 1 and 1000")),
    };
    let time = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                twinhub_model::time::parse_timestamp_str(s)
                    .map_err(|rule| ApiError::field(name, rule))
            })
            .transpose()
    };
    let scope = Scope::of(&state, &tenant, q.originator.as_deref(), q.subtree)?;
    let filter = AlarmFilter {
        statuses: q
            .status
            .as_deref()
            .map(statuses)
            .transpose()?
            .unwrap_or_default(),
        severities: q
            .severity
            .as_deref()
            .map(severities)
            .transpose()?
            .unwrap_or_default(),
        kind: q.kind.clone(),
        originators: scope.as_ref().map(|s| s.twins.clone()),
        from: time("from", &q.from)?,
        to: time("to", &q.to)?,
        before: match &q.next {
            Some(n) => Some(
                n.parse::<i64>()
                    .map_err(|_| ApiError::field("next", "is not a token from this list"))?,
            ),
            None => None,
        },
        limit: limit + 1,
    };
    let mut alarms = state.alarms.list(&tenant, filter)?;
    let more = alarms.len() > limit;
    alarms.truncate(limit);
    // The cursor follows what was read, so a page thinned by the scope
    // never ends the list early.
    let next = more
        .then(|| alarms.last().map(|a| a.id.to_string()))
        .flatten();
    if let Some(scope) = &scope {
        alarms.retain(|a| scope.admits(a));
    }
    Ok(Json(json!({
        "value": alarms.iter().map(|a| a.doc()).collect::<Vec<_>>(),
        "next": next,
    })))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CountQuery {
    /// Only this twin (and, with `subtree`, the twins below it).
    pub originator: Option<String>,
    pub subtree: Option<bool>,
    pub tenant: Option<String>,
}

/// Open (active) alarms counted by severity and by originator — what a
/// fleet view shows next to each twin, from memory (no store read).
#[utoipa::path(get, path = "/api/v1/alarms/counts", tag = "alarms", params(CountQuery),
    responses((status = 200, body = Value), (status = 400)))]
pub async fn count_alarms(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<CountQuery>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::AlarmsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let scope = Scope::of(&state, &tenant, q.originator.as_deref(), q.subtree)?;
    let only: Option<HashSet<&str>> = scope
        .as_ref()
        .map(|s| s.twins.iter().map(String::as_str).collect());
    let mut by_severity = serde_json::Map::new();
    for s in Severity::ALL {
        by_severity.insert(crate::rules::alarms::text(&s), json!(0));
    }
    let mut by_originator: std::collections::BTreeMap<String, u64> = Default::default();
    let mut severities: std::collections::BTreeMap<String, serde_json::Map<String, Value>> =
        Default::default();
    let mut total = 0u64;
    for a in state.alarms.open_of(&tenant) {
        let in_scope = match (&scope, &only) {
            (Some(s), Some(o)) => o.contains(a.originator.as_str()) && s.admits(&a),
            _ => true,
        };
        if !in_scope {
            continue;
        }
        total += 1;
        let k = crate::rules::alarms::text(&a.severity);
        by_severity[&k] = json!(by_severity[&k].as_u64().unwrap_or(0) + 1);
        *by_originator.entry(a.originator.clone()).or_default() += 1;
        let per = severities.entry(a.originator.clone()).or_default();
        let n = per.get(&k).and_then(Value::as_u64).unwrap_or(0);
        per.insert(k, json!(n + 1));
    }
    Ok(Json(
        json!({"total": total, "by_severity": by_severity, "by_originator": by_originator,
            "by_originator_severity": severities}),
    ))
}

#[utoipa::path(get, path = "/api/v1/alarms/{id}", tag = "alarms", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404)))]
pub async fn get_alarm(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::AlarmsRead)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let a = state
        .alarms
        .get(&tenant, &id)?
        .ok_or_else(|| ApiError::not_found(format!("alarm {id} not found")))?;
    Ok(Json(a.doc()))
}

/// Acknowledges an alarm (409 if it already is).
#[utoipa::path(post, path = "/api/v1/alarms/{id}/ack", tag = "alarms", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404), (status = 409)))]
pub async fn ack_alarm(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    operator_step(&state, &p, &id, q, "alarm.ack").await
}

/// Clears an alarm by hand (409 if it already is cleared).
#[utoipa::path(post, path = "/api/v1/alarms/{id}/clear", tag = "alarms", params(("id" = String, Path), Paging),
    responses((status = 200, body = Value), (status = 404), (status = 409)))]
pub async fn clear_alarm(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> Result<Json<Value>, ApiError> {
    operator_step(&state, &p, &id, q, "alarm.clear").await
}

/// An operator's acknowledgement or clear, audited.
async fn operator_step(
    state: &AppState,
    p: &Principal,
    id: &str,
    q: Paging,
    action: &'static str,
) -> Result<Json<Value>, ApiError> {
    p.require(Perm::AlarmsAck)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let a = match action {
        "alarm.ack" => state.alarms.ack(&tenant, id, p.name()).await?,
        _ => state.alarms.clear(&tenant, id, p.name()).await?,
    };
    state
        .audit(p, &tenant, action, id, json!({"originator": a.originator}))
        .await;
    Ok(Json(a.doc()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewComment {
    #[schema(min_length = 1, max_length = 2000)]
    pub text: String,
}

#[utoipa::path(post, path = "/api/v1/alarms/{id}/comments", tag = "alarms", params(("id" = String, Path), Paging),
    request_body = NewComment,
    responses((status = 201, body = Value), (status = 400), (status = 404)))]
pub async fn comment_alarm(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<Paging>,
    ApiJson(c): ApiJson<NewComment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require(Perm::AlarmsAck)?;
    let tenant = p.tenant_scope(q.tenant.as_deref());
    if c.text.trim().is_empty() || c.text.len() > 2000 {
        return Err(ApiError::field("text", "must be 1 to 2000 characters"));
    }
    let a = state
        .alarms
        .comment(&tenant, &id, p.name(), &c.text)
        .await?;
    state
        .audit(&p, &tenant, "alarm.comment", &id, json!({"text": c.text}))
        .await;
    Ok((StatusCode::CREATED, Json(a.doc())))
}
