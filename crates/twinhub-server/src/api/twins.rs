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
    /// Downsample for a chart `points` wide (1 … 10000): the server picks
    /// the bucket width (answered as `bucket`) so that `[from, to)` gives
    /// at most this many buckets, widened to whole buckets and to the
    /// finest resolution kept. `agg` defaults to avg,min,max,count here.
    /// Needs `from`; excludes `bucket`, `limit`, `next` and `tz`.
    pub points: Option<usize>,
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
    /// `points=N`: the width is picked per series once the store says how
    /// fine its data is kept at `from`.
    points: Option<(usize, AggSet)>,
    limit: usize,
}

/// Bucket widths a chart request may get, in seconds: round numbers a
/// reader recognises on an axis.
const CHART_WIDTHS: [(i64, &str); 20] = [
    (1, "1s"),
    (2, "2s"),
    (5, "5s"),
    (10, "10s"),
    (15, "15s"),
    (30, "30s"),
    (60, "1m"),
    (120, "2m"),
    (300, "5m"),
    (600, "10m"),
    (900, "15m"),
    (1800, "30m"),
    (3600, "1h"),
    (7200, "2h"),
    (10800, "3h"),
    (21600, "6h"),
    (43200, "12h"),
    (86400, "1d"),
    (172800, "2d"),
    (604800, "7d"),
];

/// The narrowest chart width (µs, and its name) no finer than `floor_us`
/// that splits `span_us` into at most `points` buckets.
pub(crate) fn chart_width(span_us: i64, points: usize, floor_us: i64) -> (i64, String) {
    let n = points.max(1) as i64;
    let per = (span_us.max(1) + n - 1) / n;
    let need = per.max(floor_us);
    for (secs, name) in CHART_WIDTHS {
        if secs * 1_000_000 >= need {
            return (secs * 1_000_000, name.to_string());
        }
    }
    let days = ((need + 86_399_999_999) / 86_400_000_000).min(31);
    (days * 86_400_000_000, format!("{days}d"))
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
    let points = match q.points {
        None => None,
        Some(n) => {
            if !(1..=10_000).contains(&n) {
                return Err(ApiError::field("points", "must be between 1 and 10000"));
            }
            for (name, set) in [
                ("bucket", q.bucket.is_some()),
                ("limit", q.limit.is_some()),
                ("next", q.next.is_some()),
                ("tz", q.tz.is_some()),
            ] {
                if set {
                    return Err(ApiError::field(name, "cannot be combined with points"));
                }
            }
            if from.is_none() {
                return Err(ApiError::field("from", "is required with points"));
            }
            let aggs = AggSet::parse(q.agg.as_deref().unwrap_or("avg,min,max,count"))
                .map_err(|rule| ApiError::field("agg", &rule))?;
            Some((n, aggs))
        }
    };
    let bucket = match &q.bucket {
        None if points.is_some() => None,
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
        points,
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

/// Non-empty buckets as the history API answers them.
fn buckets_json(
    buckets: std::collections::BTreeMap<i64, twinhub_model::Stats>,
    aggs: AggSet,
) -> Vec<Json_> {
    buckets
        .into_iter()
        .filter(|(_, st)| st.count > 0)
        .map(|(ts, st)| {
            let mut m = Map::new();
            m.insert("ts".into(), to_epoch_ms_json(ts));
            st.write_json(aggs, &mut m);
            Json_::Object(m)
        })
        .collect()
}

/// Runs one history request against one series: `{"points", "next"}` or
/// `{"buckets"}`.
async fn history(state: &AppState, key: SeriesKey, spec: HistorySpec) -> Result<Json_, ApiError> {
    let store = state.store.clone();
    let now = state.clock.now_us();
    tokio::task::spawn_blocking(move || -> Result<Json_, ApiError> {
        if let Some((n, aggs)) = spec.points {
            let from = spec.from.unwrap_or(0);
            let to = if spec.to == MAX_TS { now } else { spec.to }.max(from + 1);
            let (width, name) = chart_width(to - from, n, store.finest_resolution(&key, from));
            let from = from.div_euclid(width) * width;
            let to = to.div_euclid(width) * width + if to % width == 0 { 0 } else { width };
            let bucketer =
                Bucketer::new(width, None).map_err(|rule| ApiError::field("points", rule))?;
            let buckets = store.aggregate(&key, from, to, &bucketer)?;
            return Ok(json!({"bucket": name, "buckets": buckets_json(buckets, aggs)}));
        }
        match spec.bucket {
            Some((bucketer, aggs)) => {
                let from = spec.from.unwrap_or(0);
                let buckets = store.aggregate(&key, from, spec.to, &bucketer)?;
                Ok(json!({"buckets": buckets_json(buckets, aggs)}))
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
    /// Downsample for a chart this many points wide (see the history API).
    pub points: Option<usize>,
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
        points: req.points,
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
    }
    // Buckets of every series over one range: one batched read (a few
    // statements instead of a transaction per series).
    let sp = spec(&q)?;
    if let (None, Some((bucketer, aggs))) = (&sp.points, &sp.bucket) {
        let keys: Vec<SeriesKey> = req
            .series
            .iter()
            .map(|s| SeriesKey::new(&tenant, &s.twin, &s.name))
            .collect();
        let (store, bucketer, aggs) = (state.store.clone(), bucketer.clone(), *aggs);
        let (from, to) = (sp.from.unwrap_or(0), sp.to);
        let answers =
            tokio::task::spawn_blocking(move || store.aggregate_many(&keys, from, to, &bucketer))
                .await
                .map_err(|_| ApiError::internal())??;
        for (s, buckets) in req.series.iter().zip(answers) {
            out.push(
                json!({"buckets": buckets_json(buckets, aggs), "twin": s.twin, "name": s.name}),
            );
        }
        return Ok(Json(json!({ "series": out })));
    }
    for s in &req.series {
        let mut v = history(&state, SeriesKey::new(&tenant, &s.twin, &s.name), spec(&q)?).await?;
        let m = v.as_object_mut().expect("history answers an object");
        m.insert("twin".into(), json!(s.twin));
        m.insert("name".into(), json!(s.name));
        out.push(v);
    }
    Ok(Json(json!({ "series": out })))
}

#[cfg(test)]
mod tests {
    use super::chart_width;

    const S: i64 = 1_000_000;

    #[test]
    fn chart_widths_are_round_and_never_finer_than_the_data() {
        assert_eq!(chart_width(7 * 86_400 * S, 800, S), (900 * S, "15m".into()));
        assert_eq!(chart_width(900 * S, 800, S), (2 * S, "2s".into()));
        assert_eq!(chart_width(10 * S, 800, S), (S, "1s".into()));
        // Past raw retention only hourly rollups exist: an hour at least.
        assert_eq!(
            chart_width(86_400 * S, 800, 3600 * S),
            (3600 * S, "1h".into())
        );
        // Beyond the ladder: whole days, at most the largest bucket.
        assert_eq!(
            chart_width(3650 * 86_400 * S, 100, S),
            (31 * 86_400 * S, "31d".into())
        );
        assert_eq!(
            chart_width(300 * 86_400 * S, 20, S),
            (15 * 86_400 * S, "15d".into())
        );
        for n in [1usize, 7, 640, 10_000] {
            for span in [S, 3600 * S, 86_400 * 30 * S] {
                let (w, _) = chart_width(span, n, S);
                assert!(
                    span / w <= n as i64 || w == 31 * 86_400 * S,
                    "{span} {n} {w}"
                );
            }
        }
    }
}
