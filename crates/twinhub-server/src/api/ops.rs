//! Operational endpoints: liveness, readiness, Prometheus metrics and the
//! OpenAPI document. Public unless `metrics.bearer_token` is set.

use super::error::ApiError;
use super::AppState;
use crate::metrics::Exposition;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use std::sync::atomic::Ordering;

#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200)), security(()))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when started and taking telemetry. While the store cannot take
/// telemetry (chunk installs failing, free space under `store.min_free`)
/// it answers 503 with `"ingest": false` and the reason; reads are still
/// served then, so a load balancer can keep sending queries.
#[utoipa::path(get, path = "/ready", tag = "ops", responses((status = 200), (status = 503)), security(()))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if !state.ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        );
    }
    if state.store.ingest_ready() {
        return (
            StatusCode::OK,
            Json(json!({"status": "ready", "ingest": true, "reads": true})),
        );
    }
    let h = state.store.health();
    let reason = if h.low_space.load(Ordering::Relaxed) {
        "free disk space is under store.min_free"
    } else {
        "the store cannot install chunks; retrying"
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "degraded", "ingest": false, "reads": true, "reason": reason})),
    )
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "text/plain")), security(()))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(tok) = &state.config.metrics.bearer_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| crate::auth::verify_digest(g, &crate::auth::digest(tok)));
        if !ok {
            return Err(ApiError::unauthorized(
                "/metrics needs the configured bearer token",
            ));
        }
    }
    let m = &state.metrics;
    let st = state.store.stats();
    let eng = state.store.engine();
    let mut x = Exposition::default();
    x.counter_vec(
        "twinhub_messages_in_total",
        "Telemetry messages stored, by protocol.",
        "protocol",
        &m.messages_in,
    );
    x.counter_vec(
        "twinhub_points_in_total",
        "Telemetry points stored, by protocol.",
        "protocol",
        &m.points_in,
    );
    x.counter(
        "twinhub_http_bodies_decoded_by_replica_total",
        "HTTP telemetry bodies a cluster replica decoded and handed on in binary.",
        m.http_bodies_decoded_by_replica.get(),
    );
    x.counter_vec(
        "twinhub_ingest_rejected_total",
        "Telemetry refused, by reason.",
        "reason",
        &m.ingest_rejected,
    );
    let refused: Vec<(Vec<(&str, String)>, f64)> = m
        .ingest_refused
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|((p, r), n)| {
            (
                vec![("protocol", p.to_string()), ("reason", r.to_string())],
                *n as f64,
            )
        })
        .collect();
    x.counter_series(
        "twinhub_ingest_refused_total",
        "Telemetry refused, by protocol and reason (invalid, model, quota, busy, no_space, store).",
        &refused,
    );
    let frames: Vec<(Vec<(&str, String)>, f64)> = m
        .frames_refused
        .lock()
        .expect("metrics lock")
        .iter()
        .map(|((d, r), n)| {
            (
                vec![("device", d.clone()), ("reason", r.to_string())],
                *n as f64,
            )
        })
        .collect();
    x.counter_series(
        "twinhub_frames_refused_total",
        "Raw frames (UDP, TCP) refused, by device and reason (malformed, unauthorized, invalid, model).",
        &frames,
    );
    x.counter_vec(
        "twinhub_auth_failures_total",
        "Failed authentications, by kind.",
        "kind",
        &m.auth_failures,
    );
    x.counter_vec(
        "twinhub_http_responses_total",
        "HTTP responses, by status class.",
        "class",
        &m.http_responses,
    );
    x.histogram(
        "twinhub_ingest_durable_seconds",
        "Time from a write being queued to it being durable.",
        &eng.metrics.durable_latency,
    );
    x.counter(
        "twinhub_store_commits_total",
        "Group commits.",
        eng.metrics.commits.get(),
    );
    x.counter(
        "twinhub_store_points_committed_total",
        "Points committed to the batch log.",
        eng.metrics.points_committed.get(),
    );
    x.counter(
        "twinhub_store_flushes_total",
        "Head flushes into chunks.",
        eng.metrics.flushes.get(),
    );
    x.counter(
        "twinhub_store_merges_total",
        "Window merges.",
        eng.metrics.merges.get(),
    );
    x.counter(
        "twinhub_store_windows_retired_total",
        "Windows whose raw points retention retired into rollups.",
        eng.metrics.windows_retired.get(),
    );
    x.counter(
        "twinhub_store_retire_rollups_in_writer_total",
        "Retired windows whose rollups the writer made itself (changed after the compactor planned them).",
        eng.metrics.retire_rollups_in_writer.get(),
    );
    x.gauge(
        "twinhub_store_queue_depth",
        "Writes waiting for the group commit.",
        st.queue_depth as f64,
    );
    x.gauge(
        "twinhub_store_head_points",
        "Acknowledged points not yet compacted into chunks.",
        st.head_points as f64,
    );
    x.gauge(
        "twinhub_store_compaction_lag_seconds",
        "Age of the oldest point not yet compacted.",
        st.head_age_s,
    );
    x.gauge(
        "twinhub_store_windows_pending",
        "Windows waiting to be merged and rolled up.",
        st.dirty_windows as f64,
    );
    x.gauge(
        "twinhub_store_series",
        "Series in the store.",
        st.series as f64,
    );
    let health = state.store.health();
    x.gauge(
        "twinhub_store_ingest_ready",
        "1 while telemetry is taken (chunks install, free space over store.min_free).",
        if state.store.ingest_ready() { 1.0 } else { 0.0 },
    );
    x.gauge(
        "twinhub_store_flush_failures",
        "Consecutive failed flushes of the head into chunks (0: healthy).",
        health.flush_failures.load(Ordering::Relaxed) as f64,
    );
    x.counter(
        "twinhub_store_flush_failures_total",
        "Failed flushes of the head into chunks.",
        health.flush_failures_total.load(Ordering::Relaxed),
    );
    x.counter(
        "twinhub_store_compactor_restarts_total",
        "Times the compactor was restarted after a panic.",
        health.compactor_restarts.load(Ordering::Relaxed),
    );
    x.gauge(
        "twinhub_store_free_bytes",
        "Free bytes on the data directory's file system.",
        health.free_bytes.load(Ordering::Relaxed).min(1 << 60) as f64,
    );
    x.gauge(
        "twinhub_store_reserve_bytes",
        "Free bytes kept in reserve (store.min_free).",
        health.reserve_bytes.load(Ordering::Relaxed) as f64,
    );
    x.counter(
        "twinhub_store_refused_low_space_total",
        "Writes refused because free space was under store.min_free.",
        health.refused_low_space.load(Ordering::Relaxed),
    );
    x.gauge(
        "twinhub_store_size_bytes",
        "Size of the database file and its WAL.",
        state.store.db_size() as f64,
    );
    let devs = state.registry.all_devices();
    x.gauge("twinhub_devices", "Registered devices.", devs.len() as f64);
    x.gauge(
        "twinhub_devices_active",
        "Devices that reported within the inactivity timeout.",
        devs.iter()
            .filter(|d| d.active.load(Ordering::Relaxed))
            .count() as f64,
    );
    x.counter_vec(
        "twinhub_fanout_dropped_total",
        "Committed events a subscriber of the fan-out missed because it fell behind (sse, ml, mqtt).",
        "subscriber",
        &state.events.dropped,
    );
    x.gauge(
        "twinhub_event_subscribers",
        "Open event streams.",
        state.events.subscribers() as f64,
    );
    let last = state.events.last_id();
    x.gauge_series(
        "twinhub_fanout_lag",
        "Committed events a live subscriber of the fan-out has not taken yet (ml, mqtt).",
        &state
            .events
            .lags()
            .into_iter()
            .map(|(n, l)| (vec![("subscriber", n.to_string())], l as f64))
            .collect::<Vec<_>>(),
    );
    if let Ok(consumers) = state.store.consumers() {
        x.gauge_series(
            "twinhub_outbox_consumer_lag",
            "Committed events a durable consumer has not recorded as applied yet.",
            &consumers
                .into_iter()
                .map(|(n, p)| (vec![("consumer", n)], last.saturating_sub(p) as f64))
                .collect::<Vec<_>>(),
        );
    }
    let (evaluations, errors) = state.rules.totals();
    x.counter(
        "twinhub_rule_evaluations_total",
        "Rule evaluations since start (one rule on one event of one twin).",
        evaluations,
    );
    x.counter(
        "twinhub_rule_errors_total",
        "Rule evaluations that failed (missing property, type error); the rule's status names the error.",
        errors,
    );
    x.gauge(
        "twinhub_rule_engine_busy_seconds_total",
        "Time the rule engine spent evaluating events (its capacity is evaluations / this).",
        state.rules.busy_seconds(),
    );
    x.gauge(
        "twinhub_alarms_open",
        "Alarms active now (ACTIVE_UNACK or ACTIVE_ACK).",
        state.alarms.open_count() as f64,
    );
    x.counter(
        "twinhub_alarms_raised_total",
        "Alarms opened since start.",
        state.alarms.raised.load(Ordering::Relaxed),
    );
    routes_metrics(&state, &mut x);
    connectors_metrics(&state, &mut x);
    if let Ok((rows, bytes)) = state.store.outbox_size() {
        x.gauge(
            "twinhub_outbox_bytes",
            "Bytes of committed events kept for durable consumers.",
            bytes as f64,
        );
        x.gauge(
            "twinhub_outbox_rows",
            "Rows (one per committed operation) kept for durable consumers.",
            rows as f64,
        );
    }
    if let Some(b) = state.broker() {
        let mm = &b.metrics;
        x.gauge(
            "twinhub_mqtt_connections",
            "Open MQTT connections.",
            mm.connections.load(Ordering::SeqCst) as f64,
        );
        x.gauge(
            "twinhub_mqtt_sessions",
            "MQTT sessions (connected or persistent).",
            b.session_count() as f64,
        );
        x.gauge(
            "twinhub_mqtt_queued_messages",
            "Messages queued for MQTT clients.",
            b.queued_total() as f64,
        );
        x.counter_vec(
            "twinhub_mqtt_messages_in_total",
            "PUBLISH packets received, by QoS.",
            "qos",
            &mm.messages_in,
        );
        x.counter_vec(
            "twinhub_mqtt_messages_out_total",
            "PUBLISH packets sent, by QoS.",
            "qos",
            &mm.messages_out,
        );
        x.counter_vec(
            "twinhub_mqtt_connections_refused_total",
            "Refused CONNECTs, by reason.",
            "reason",
            &mm.refused,
        );
        x.counter(
            "twinhub_mqtt_acl_denied_total",
            "Publishes and subscriptions refused by topic ACLs.",
            mm.acl_denied.get(),
        );
        x.counter(
            "twinhub_mqtt_dropped_total",
            "Messages dropped from full client queues.",
            mm.dropped_slow.get(),
        );
        x.counter(
            "twinhub_mqtt_unacknowledged_closes_total",
            "MQTT 3.1.1 connections closed without PUBACK because a message could not be stored.",
            mm.unacknowledged_closes.get(),
        );
        x.counter(
            "twinhub_mqtt_rate_limited_total",
            "Publishes over a device's rate limit.",
            mm.rate_limited.get(),
        );
        x.counter(
            "twinhub_mqtt_telemetry_rejected_total",
            "Telemetry publishes refused as invalid.",
            mm.telemetry_rejected.get(),
        );
    }
    let ml = &state.ml;
    x.counter(
        "twinhub_ml_cache_hits_total",
        "Predictions answered from the cache.",
        ml.cache.hits.load(std::sync::atomic::Ordering::Relaxed),
    );
    x.counter(
        "twinhub_ml_cache_misses_total",
        "Predictions computed.",
        ml.cache.misses.load(std::sync::atomic::Ordering::Relaxed),
    );
    let drift: Vec<(Vec<(&str, String)>, f64)> = ml
        .drift_gauges()
        .into_iter()
        .map(|(t, m, f, psi)| (vec![("tenant", t), ("model", m), ("feature", f)], psi))
        .collect();
    x.counter(
        "twinhub_ml_soft_sensor_outputs_total",
        "Soft-sensor predictions written to twins and history.",
        state
            .bindings
            .written
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    x.counter(
        "twinhub_ml_soft_sensor_failures_total",
        "Soft-sensor predictions that failed or whose outputs were refused.",
        state
            .bindings
            .failed
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    let stats = ml.version_stats();
    let labels = |t: &String, m: &String, v: &String| {
        vec![
            ("tenant", t.clone()),
            ("model", m.clone()),
            ("version", v.clone()),
        ]
    };
    type Pick = fn(&crate::ml::stats::StatsView) -> Option<f64>;
    let per_version: [(&str, &str, bool, Pick); 5] = [
        (
            "twinhub_ml_requests_total",
            "Prediction calls per model version.",
            true,
            |s| Some(s.calls as f64),
        ),
        (
            "twinhub_ml_predictions_total",
            "Rows predicted per model version.",
            true,
            |s| Some(s.rows as f64),
        ),
        (
            "twinhub_ml_errors_total",
            "Failed prediction calls per model version.",
            true,
            |s| Some(s.errors as f64),
        ),
        (
            "twinhub_ml_latency_p99_seconds",
            "99th percentile of inference time per model version.",
            false,
            |s| s.latency_p99_ms.map(|ms| ms / 1e3),
        ),
        (
            "twinhub_ml_mae",
            "Mean absolute error against measured ground truth per model version.",
            false,
            |s| s.mae,
        ),
    ];
    for (name, help, counter, pick) in per_version {
        let series: Vec<(Vec<(&str, String)>, f64)> = stats
            .iter()
            .filter_map(|(t, m, v, s)| Some((labels(t, m, v), pick(s)?)))
            .collect();
        if counter {
            x.counter_series(name, help, &series);
        } else {
            x.gauge_series(name, help, &series);
        }
    }
    x.gauge_series(
        "twinhub_ml_drift_psi",
        "Population stability index of live inputs against training, per active model and feature.",
        &drift,
    );
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        x.finish(),
    ))
}

/// The server's version and bound listeners, so a client (the dashboard's
/// device page) can show a ready `mosquitto_pub` line. Any signed-in
/// caller may read it.
#[utoipa::path(get, path = "/api/v1/server", tag = "ops", responses((status = 200, body = serde_json::Value), (status = 401)))]
pub async fn server_info(
    axum::extract::State(state): axum::extract::State<AppState>,
    _p: crate::auth::Principal,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listeners": state.listeners.get().cloned().unwrap_or_else(|| serde_json::json!({})),
    }))
}

/// Per-connector state and counters (labels: tenant, connector).
fn connectors_metrics(state: &AppState, x: &mut Exposition) {
    use crate::connectors::Status;
    let all = state.connectors.all_status();
    let series = |f: &dyn Fn(&Status) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
        all.iter()
            .map(|(t, c, s)| (vec![("tenant", t.clone()), ("connector", c.clone())], f(s)))
            .collect()
    };
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    x.gauge_series(
        "twinhub_connector_connected",
        "1 while a connector is connected to its source.",
        &series(&|s| (s.state() == "connected") as u8 as f64),
    );
    x.counter_series(
        "twinhub_connector_points_total",
        "Values a connector stored.",
        &series(&|s| n(&s.points)),
    );
    x.counter_series(
        "twinhub_connector_rejected_total",
        "Values refused by the twin's model.",
        &series(&|s| n(&s.rejected)),
    );
    x.counter_series(
        "twinhub_connector_dropped_total",
        "Values not stored (over quota, or the queue was full).",
        &series(&|s| n(&s.dropped)),
    );
    x.counter_series(
        "twinhub_connector_errors_total",
        "Errors a connector met (connection, subscription, store, write).",
        &series(&|s| n(&s.errors)),
    );
    x.counter_series(
        "twinhub_connector_writes_total",
        "Twin property changes written to the source.",
        &series(&|s| n(&s.writes)),
    );
    x.gauge_series(
        "twinhub_connector_monitored_items",
        "Nodes a connector is subscribed to.",
        &series(&|s| n(&s.items)),
    );
}

/// Per-route counters and backlog (labels: tenant, route).
fn routes_metrics(state: &AppState, x: &mut Exposition) {
    use crate::routes::Stats;
    let all = state.routes.all_stats();
    let series = |f: &dyn Fn(&Stats) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
        all.iter()
            .map(|(t, r, s)| (vec![("tenant", t.clone()), ("route", r.clone())], f(s)))
            .collect()
    };
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    x.counter_series(
        "twinhub_route_delivered_total",
        "Events a route delivered.",
        &series(&|s| n(&s.delivered)),
    );
    x.counter_series(
        "twinhub_route_retries_total",
        "Failed delivery attempts (each retried or parked).",
        &series(&|s| n(&s.retried)),
    );
    x.counter_series(
        "twinhub_route_dead_lettered_total",
        "Events parked in a route's dead letters.",
        &series(&|s| n(&s.dead_lettered)),
    );
    x.counter_series(
        "twinhub_route_dropped_total",
        "Events a full drop_oldest route skipped.",
        &series(&|s| n(&s.dropped)),
    );
    x.gauge_series(
        "twinhub_route_backlog_events",
        "Events waiting for a route.",
        &series(&|s| s.backlog.lock().expect("backlog").0 as f64),
    );
    x.gauge_series(
        "twinhub_route_state",
        "0 ok, 1 retrying, 2 open circuit, 3 paused.",
        &series(&|s| s.state() as u8 as f64),
    );
}
