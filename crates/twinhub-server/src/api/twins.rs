//! Twins (as devices feed them) and their history: raw points with paging,
//! bucketed aggregates, range deletion and a multi-series query for
//! dashboards.

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::AppState;
use crate::auth::{Perm, Principal};
use crate::store::SeriesKey;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json_};
use twinhub_model::time::{
    parse_duration, parse_timestamp_str, parse_tz, to_epoch_ms_json, MAX_TS,
};
use twinhub_model::{AggSet, Bucketer, Point, Quality};
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// System admins: act in this tenant.
    pub tenant: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Start (inclusive): RFC 3339 or epoch ms. Default: as far back as raw points are kept.
    pub from: Option<String>,
    /// End (exclusive): RFC 3339 or epoch ms. Default: no end.
    pub to: Option<String>,
    /// Bucket width (1s … 31d) for aggregates, e.g. `1m`.
    pub bucket: Option<String>,
    /// Aggregates: any of avg,min,max,count,sum,first,last (default avg).
    pub agg: Option<String>,
    /// IANA time zone to align buckets to (default UTC epoch).
    pub tz: Option<String>,
    /// Raw points per page (default 1000, at most 10000).
    pub limit: Option<usize>,
    /// The `next` token of the previous page.
    pub next: Option<String>,
    #[serde(skip_deserializing)]
    #[param(ignore)]
    pub tenant: Option<String>,
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<i64>, ApiError> {
    v.map(|s| parse_timestamp_str(s).map_err(|rule| ApiError::field(field, rule)))
        .transpose()
}

/// What a history request asks for, validated.
struct HistorySpec {
    from: Option<i64>,
    to: i64,
    bucket: Option<(Bucketer, AggSet)>,
    limit: usize,
}

fn spec(q: &HistoryQuery) -> Result<HistorySpec, ApiError> {
    let mut from = parse_time("from", q.from.as_deref())?;
    let to = parse_time("to", q.to.as_deref())?.unwrap_or(MAX_TS);
    if let Some(n) = &q.next {
        let t: i64 = n
            .strip_prefix('t')
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::field("next", "is not a token this server issued"))?;
        from = Some(t);
    }
    if let Some(f) = from {
        if f > to {
            return Err(ApiError::field("from", "must not be after to"));
        }
    }
    let bucket = match &q.bucket {
        None => {
            if q.agg.is_some() || q.tz.is_some() {
                return Err(ApiError::field("bucket", "is required with agg or tz"));
            }
            None
        }
        Some(b) => {
            let width = parse_duration(b).map_err(|rule| ApiError::field("bucket", rule))?;
            let tz =
                q.tz.as_deref()
                    .map(|z| parse_tz(z).map_err(|rule| ApiError::field("tz", rule)))
                    .transpose()?;
            let bucketer =
                Bucketer::new(width, tz).map_err(|rule| ApiError::field("bucket", rule))?;
            let aggs = AggSet::parse(q.agg.as_deref().unwrap_or(""))
                .map_err(|rule| ApiError::field("agg", &rule))?;
            Some((bucketer, aggs))
        }
    };
    let limit = match q.limit {
        None => 1000,
        Some(n) if (1..=10_000).contains(&n) => n,
        Some(_) => return Err(ApiError::field("limit", "must be between 1 and 10000")),
    };
    Ok(HistorySpec {
        from,
        to,
        bucket,
        limit,
    })
}

fn point_json(p: &Point) -> Json_ {
    let mut m = Map::new();
    m.insert("ts".into(), to_epoch_ms_json(p.ts));
    m.insert("value".into(), p.value.to_json());
    if p.quality != Quality::Good {
        m.insert("quality".into(), json!(p.quality.as_str()));
    }
    Json_::Object(m)
}

/// Runs one history request against one series: `{"points", "next"}` or
/// `{"buckets"}`.
async fn history(state: &AppState, key: SeriesKey, spec: HistorySpec) -> Result<Json_, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || -> Result<Json_, ApiError> {
        match spec.bucket {
            Some((bucketer, aggs)) => {
                let from = spec.from.unwrap_or(0);
                let buckets = store.aggregate(&key, from, spec.to, &bucketer)?;
                let out: Vec<Json_> = buckets
                    .into_iter()
                    .filter(|(_, st)| st.count > 0)
                    .map(|(ts, st)| {
                        let mut m = Map::new();
                        m.insert("ts".into(), to_epoch_ms_json(ts));
                        st.write_json(aggs, &mut m);
                        Json_::Object(m)
                    })
                    .collect();
                Ok(json!({"buckets": out}))
            }
            None => {
                let from = spec.from.unwrap_or_else(|| store.raw_from(&key).max(0));
                let mut pts = store.raw(&key, from, spec.to, spec.limit + 1)?;
                let next = if pts.len() > spec.limit {
                    pts.truncate(spec.limit);
                    pts.last().map(|p| format!("t{}", p.ts + 1))
                } else {
                    None
                };
                Ok(json!({"points": pts.iter().map(point_json).collect::<Vec<_>>(), "next": next}))
            }
        }
    })
    .await
    .map_err(|_| ApiError::internal())?
}

fn require_twin(state: &AppState, tenant: &str, id: &str) -> Result<(), ApiError> {
    if state.twin_exists(tenant, id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("twin {id} not found")))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesInfo {
    pub name: String,
    pub last: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesList {
    pub value: Vec<SeriesInfo>,
    pub next: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/twins/{id}/telemetry", tag = "history",
    params(("id" = String, Path), TenantQuery),
    responses((status = 200, body = SeriesList), (status = 404)))]
pub async fn list_series(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TenantQuery>,
) -> Result<Json<SeriesList>, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    require_twin(&state, &tenant, &id)?;
    state.authorize_twin(&p, Perm::TelemetryRead, &tenant, &id)?;
    let latest: std::collections::HashMap<String, Point> = state
        .store
        .latest_of_twin(&tenant, &id)
        .into_iter()
        .collect();
    let value = state
        .store
        .series_of_twin(&tenant, &id)
        .into_iter()
        .map(|name| SeriesInfo {
            last: latest.get(&name).map(point_json),
            name,
        })
        .collect();
    Ok(Json(SeriesList { value, next: None }))
}

#[utoipa::path(get, path = "/api/v1/twins/{id}/telemetry/{name}", tag = "history",
    params(("id" = String, Path), ("name" = String, Path, description = "Property name; component members as dotted paths"), HistoryQuery, TenantQuery),
    responses((status = 200, body = serde_json::Value, description = "{\"points\":[{\"ts\",\"value\"}],\"next\"} or {\"buckets\":[{\"ts\",\"avg\",…}]}"),
        (status = 400), (status = 404), (status = 422)))]
pub async fn get_history(
    State(state): State<AppState>,
    p: Principal,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
    ApiQuery(t): ApiQuery<TenantQuery>,
) -> Result<Json<Json_>, ApiError> {
    let tenant = p.tenant_scope(t.tenant.as_deref());
    require_twin(&state, &tenant, &id)?;
    state.authorize_twin(&p, Perm::TelemetryRead, &tenant, &id)?;
    let spec = spec(&q)?;
    Ok(Json(
        history(&state, SeriesKey::new(&tenant, &id, &name), spec).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub tenant: Option<String>,
}

/// Deletes the points of one series in `[from, to)` (everything when
/// both are absent).
#[utoipa::path(delete, path = "/api/v1/twins/{id}/telemetry/{name}", tag = "history",
    params(("id" = String, Path), ("name" = String, Path), RangeQuery),
    responses((status = 204), (status = 403), (status = 404)))]
pub async fn delete_history(
    State(state): State<AppState>,
    p: Principal,
    Path((id, name)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> Result<StatusCode, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    require_twin(&state, &tenant, &id)?;
    state.authorize_twin(&p, Perm::TelemetryDelete, &tenant, &id)?;
    let from = parse_time("from", q.from.as_deref())?.unwrap_or(i64::MIN);
    let to = parse_time("to", q.to.as_deref())?.unwrap_or(i64::MAX);
    if from >= to {
        return Err(ApiError::field("from", "must be before to"));
    }
    state
        .store
        .delete_range(&SeriesKey::new(&tenant, &id, &name), from, to)
        .await?;
    tracing::info!(twin = %id, property = %name, tenant = %tenant, by = %p.name(),
        from = %q.from.as_deref().unwrap_or("-"), to = %q.to.as_deref().unwrap_or("-"), "history deleted");
    state
        .audit(
            &p,
            &tenant,
            "history.delete",
            &format!("{id}/{name}"),
            serde_json::json!({"from": q.from, "to": q.to}),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeriesRef {
    pub twin: String,
    pub name: String,
}

/// A time as RFC 3339 text or epoch milliseconds.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TimeArg {
    Millis(f64),
    Text(String),
}

impl TimeArg {
    fn into_text(self) -> String {
        match self {
            TimeArg::Millis(ms) => ms.to_string(),
            TimeArg::Text(s) => s,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiQuery {
    /// Up to 100 series.
    pub series: Vec<SeriesRef>,
    pub from: Option<TimeArg>,
    pub to: Option<TimeArg>,
    pub bucket: Option<String>,
    pub agg: Option<String>,
    pub tz: Option<String>,
    pub limit: Option<usize>,
}

/// Several series in one call (dashboards): the answer holds one entry per
/// requested series, in order, each shaped like the single-series answer.
#[utoipa::path(post, path = "/api/v1/history/query", tag = "history", request_body = MultiQuery,
    params(TenantQuery),
    responses((status = 200, body = serde_json::Value), (status = 400)))]
pub async fn multi_history(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(t): ApiQuery<TenantQuery>,
    ApiJson(req): ApiJson<MultiQuery>,
) -> Result<Json<Json_>, ApiError> {
    let tenant = p.tenant_scope(t.tenant.as_deref());
    let visible = state.twin_filter(&p, Perm::TelemetryRead, &tenant)?;
    if req.series.is_empty() || req.series.len() > 100 {
        return Err(ApiError::field("series", "must list 1 to 100 series"));
    }
    let q = HistoryQuery {
        from: req.from.map(TimeArg::into_text),
        to: req.to.map(TimeArg::into_text),
        bucket: req.bucket,
        agg: req.agg,
        tz: req.tz,
        limit: req.limit,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(req.series.len());
    for (i, s) in req.series.iter().enumerate() {
        if !state.twin_exists(&tenant, &s.twin) || visible.as_ref().is_some_and(|f| !f(&s.twin)) {
            return Err(ApiError::not_found(format!(
                "series[{i}].twin: twin {} not found",
                s.twin
            )));
        }
        let mut v = history(&state, SeriesKey::new(&tenant, &s.twin, &s.name), spec(&q)?).await?;
        let m = v.as_object_mut().expect("history answers an object");
        m.insert("twin".into(), json!(s.twin));
        m.insert("name".into(), json!(s.name));
        out.push(v);
    }
    Ok(Json(json!({ "series": out })))
}
