//! The live event stream: Server-Sent Events of telemetry, twin, device
//! (and later alarm) events, filtered by the caller's tenant and
//! permissions, resumable with `Last-Event-ID`.

use super::error::ApiError;
use super::extract::ApiQuery;
use super::AppState;
use crate::auth::{Perm, Principal};
use crate::events::{Event, Kind};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::Stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated: telemetry, twin, relationship, alarm, device (default all).
    pub types: Option<String>,
    /// Only events of this twin.
    pub twin: Option<String>,
    /// Only events of twins of this model.
    pub model: Option<String>,
    /// System admins: another tenant.
    pub tenant: Option<String>,
}

const TYPES: &[&str] = &[
    "telemetry",
    "twin",
    "relationship",
    "alarm",
    "device",
    "rule",
];

struct Filter {
    tenant: String,
    types: Vec<String>,
    twin: Option<String>,
    model: Option<String>,
    /// For scoped principals: which twins' events, and which twins'
    /// telemetry, they may see (events without a twin are not theirs).
    events_scope: Option<super::scope::TwinFilter>,
    telemetry_scope: Option<super::scope::TwinFilter>,
}

impl Filter {
    fn in_scope(&self, e: &Event) -> bool {
        let scope = if e.kind == Kind::Telemetry {
            &self.telemetry_scope
        } else {
            &self.events_scope
        };
        match scope {
            None => true,
            Some(f) => e.twin.as_deref().is_some_and(|t| f(t)),
        }
    }

    fn matches(&self, e: &Event) -> bool {
        e.tenant == self.tenant
            && self.in_scope(e)
            && self.types.iter().any(|t| t == e.kind.as_str())
            && self
                .twin
                .as_deref()
                .is_none_or(|t| e.twin.as_deref() == Some(t))
            && self
                .model
                .as_deref()
                .is_none_or(|m| e.model.as_deref() == Some(m))
    }
}

fn sse(e: &Event) -> SseEvent {
    SseEvent::default()
        .id(e.id.to_string())
        .event(e.kind.as_str())
        .json_data(e)
        .unwrap_or_else(|_| SseEvent::default().comment("unserialisable event"))
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, description = "text/event-stream of events: id, event (the type) and data (JSON)"), (status = 400), (status = 401)))]
pub async fn events(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let tenant = p.tenant_scope(q.tenant.as_deref());
    let events_scope = state.twin_filter(&p, Perm::EventsRead, &tenant)?;
    let mut types: Vec<String> = match &q.types {
        Some(t) => t
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        None => TYPES.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(bad) = types.iter().find(|t| !TYPES.contains(&t.as_str())) {
        return Err(ApiError::field(
            "types",
            &format!("unknown event type '{bad}'; use {}", TYPES.join(", ")),
        ));
    }
    let telemetry_scope = if types.iter().any(|t| t == "telemetry") && q.types.is_some() {
        state.twin_filter(&p, Perm::TelemetryRead, &tenant)?
    } else {
        match state.twin_filter(&p, Perm::TelemetryRead, &tenant) {
            Ok(f) => f,
            Err(_) => {
                types.retain(|t| t != "telemetry");
                None
            }
        }
    };
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let filter = Arc::new(Filter {
        tenant,
        types,
        twin: q.twin,
        model: q.model,
        events_scope,
        telemetry_scope,
    });
    // Without telemetry, from the changes' own queue: a telemetry flood
    // does not push alarms out of it.
    let (backlog, rx) = if filter.types.iter().any(|t| t == "telemetry") {
        state.events.subscribe(last_id)
    } else {
        state.events.subscribe_changes(last_id)
    };
    let shutdown = state.shutdown.clone();
    let last_sent = last_id.unwrap_or(0);
    let bus = state.events.clone();
    let stream = futures_util::stream::unfold(
        (backlog.into_iter(), rx, shutdown, last_sent, filter),
        move |(mut backlog, mut rx, mut shutdown, mut last, filter)| {
            let bus = bus.clone();
            async move {
                loop {
                    if let Some(e) = backlog.next() {
                        if filter.matches(&e) {
                            last = e.id;
                            return Some((Ok(sse(&e)), (backlog, rx, shutdown, last, filter)));
                        }
                        continue;
                    }
                    let e = tokio::select! {
                        r = rx.recv() => r,
                        _ = shutdown.changed() => return None,
                    };
                    match e {
                        Ok(e) if e.id > last && filter.matches(&e) => {
                            last = e.id;
                            return Some((Ok(sse(&e)), (backlog, rx, shutdown, last, filter)));
                        }
                        Ok(_) => continue,
                        Err(RecvError::Lagged(n)) => {
                            bus.dropped.add("sse", n);
                            let ev = SseEvent::default()
                                .event("lagged")
                                .data(format!("{{\"missed\":{n}}}"));
                            return Some((Ok(ev), (backlog, rx, shutdown, last, filter)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
