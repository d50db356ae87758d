//! A route as written (the API's body) and as checked: which events it
//! selects, the sink it delivers to, batching, retry and the backlog
//! policy. Pure: checked once when the route is saved.

use crate::events::{Event, Kind};
use crate::twins::select::Select;
use crate::twins::TwinGraphs;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::time::Duration;
use twinhub_model::rules::expr::{with_lookup, Bound, Expr, Found, Lookup};
use twinhub_model::time::parse_duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub select: SelectSpec,
    pub sink: SinkSpec,
    /// Used when the sink has failed `retry.fallback_after` times in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<SinkSpec>,
    /// A MiniJinja template that shapes what the receiver gets from each
    /// event (`event` is the envelope; its fields are also top-level
    /// names); it must render JSON. Table sinks keep the envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// What happens when the backlog reaches `max_backlog` events:
    /// `block` (telemetry ingest answers 503 until it drains; the default)
    /// or `drop_oldest` (counted, and announced as a route event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_full: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backlog: Option<u64>,
    #[serde(default)]
    pub paused: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelectSpec {
    /// Event types: telemetry, twin, relationship, alarm, presence, rule
    /// (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// A CEL expression over `event` (the envelope) and, for telemetry,
    /// the values of the event's last message by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    /// Function routes: the function names they answer (default: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
}

/// The sink: `kind` and that kind's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkSpec {
    pub kind: String,
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    /// Tries of one batch before it goes to the dead letters (0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Failures in a row that open the circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_after: Option<u32>,
    /// How long an open circuit waits before one probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<String>,
    /// Failures in a row after which the fallback sink is tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_after: Option<u32>,
}

/// Why a route was refused: the field and the rule (status 400 or 422).
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub status: u16,
    pub field: String,
    pub rule: String,
}

pub fn refuse(status: u16, field: &str, rule: impl Into<String>) -> SpecError {
    SpecError {
        status,
        field: field.into(),
        rule: rule.into(),
    }
}

/// Retry timing, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub initial: Duration,
    pub max_backoff: Duration,
    pub max_attempts: u32,
    pub circuit_after: u32,
    pub open_for: Duration,
    pub fallback_after: u32,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            initial: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            max_attempts: 20,
            circuit_after: 5,
            open_for: Duration::from_secs(30),
            fallback_after: 3,
        }
    }
}

impl Retry {
    /// The wait before attempt `n` (1-based, after `n` failures), with
    /// ±25 % jitter so many routes do not retry in step.
    pub fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let base =
            self.initial.as_secs_f64() * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64((capped * (0.75 + 0.5 * jitter.clamp(0.0, 1.0))).max(0.001))
    }
}

/// How a route picks its events, compiled.
#[derive(Debug, Clone)]
pub struct Selection {
    pub kinds: Option<HashSet<Kind>>,
    pub twins: Option<Select>,
    pub condition: Option<Expr>,
}

pub const ON_FULL: [&str; 2] = ["block", "drop_oldest"];

fn duration(field: &str, v: &Option<String>, default: Duration) -> Result<Duration, SpecError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s)
            .map(|us| Duration::from_micros(us as u64))
            .map_err(|rule| refuse(400, field, rule)),
    }
}

fn kind_of(name: &str) -> Option<Kind> {
    Some(match name {
        "telemetry" => Kind::Telemetry,
        "twin" => Kind::Twin,
        "relationship" => Kind::Relationship,
        "alarm" => Kind::Alarm,
        "presence" | "device" => Kind::Device,
        "rule" => Kind::Rule,
        _ => return None,
    })
}

/// The envelope's `type` for an event kind (presence for device events).
pub fn type_name(k: Kind) -> &'static str {
    match k {
        Kind::Device => "presence",
        k => k.as_str(),
    }
}

impl RouteSpec {
    pub fn selection(&self) -> Result<Selection, SpecError> {
        let s = &self.select;
        let kinds = if s.types.is_empty() {
            None
        } else {
            let mut set = HashSet::new();
            for t in &s.types {
                set.insert(kind_of(t).ok_or_else(|| {
                    refuse(
                        400,
                        "select.types",
                        format!("unknown type {t}: use telemetry, twin, relationship, alarm, presence or rule"),
                    )
                })?);
            }
            Some(set)
        };
        let given = [s.twin.is_some(), s.model.is_some(), s.query.is_some()];
        let twins = match given.iter().filter(|x| **x).count() {
            0 => None,
            1 => Some(Select {
                twin: s.twin.clone(),
                model: s.model.clone(),
                query: s.query.clone(),
            }),
            _ => {
                return Err(refuse(
                    400,
                    "select",
                    "give at most one of twin, model or query",
                ))
            }
        };
        let condition = s
            .condition
            .as_deref()
            .map(|c| Expr::compile(c).map_err(|e| refuse(422, "select.condition", e.to_string())))
            .transpose()?;
        Ok(Selection {
            kinds,
            twins,
            condition,
        })
    }

    pub fn retry(&self) -> Result<Retry, SpecError> {
        let d = Retry::default();
        let Some(r) = &self.retry else {
            return Ok(d);
        };
        let out = Retry {
            initial: duration("retry.initial", &r.initial, d.initial)?,
            max_backoff: duration("retry.max_backoff", &r.max_backoff, d.max_backoff)?,
            max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
            circuit_after: r.circuit_after.unwrap_or(d.circuit_after).max(1),
            open_for: duration("retry.open_for", &r.open_for, d.open_for)?,
            fallback_after: r.fallback_after.unwrap_or(d.fallback_after).max(1),
        };
        if out.initial > out.max_backoff {
            return Err(refuse(
                400,
                "retry.initial",
                "must not exceed retry.max_backoff",
            ));
        }
        Ok(out)
    }

    /// (max events per delivery, linger).
    pub fn batching(&self) -> Result<(usize, Duration), SpecError> {
        let b = self.batch.as_ref();
        let max = b.and_then(|b| b.max).unwrap_or(100);
        if !(1..=10_000).contains(&max) {
            return Err(refuse(400, "batch.max", "must be between 1 and 10000"));
        }
        let linger = duration(
            "batch.linger",
            &b.and_then(|b| b.linger.clone()),
            Duration::from_millis(50),
        )?;
        if linger > Duration::from_secs(60) {
            return Err(refuse(400, "batch.linger", "must be at most 60s"));
        }
        Ok((max, linger))
    }

    pub fn drops_oldest(&self) -> Result<bool, SpecError> {
        match self.on_full.as_deref() {
            None | Some("block") => Ok(false),
            Some("drop_oldest") => Ok(true),
            Some(other) => Err(refuse(
                400,
                "on_full",
                format!("unknown policy {other}: use {}", ON_FULL.join(" or ")),
            )),
        }
    }
}

impl Selection {
    /// Whether the route takes `e` (`members`: a query selection's twins).
    pub fn admits(&self, e: &Event, twins: &TwinGraphs, members: Option<&HashSet<String>>) -> bool {
        if self.kinds.as_ref().is_some_and(|k| !k.contains(&e.kind)) {
            return false;
        }
        if let Some(sel) = &self.twins {
            let Some(t) = e.twin.as_deref() else {
                return false;
            };
            if !sel.matches(&e.tenant, t, twins, members) {
                return false;
            }
        }
        match &self.condition {
            None => true,
            Some(expr) => condition_holds(expr, &envelope(e)),
        }
    }
}

/// The event as routes deliver it: `{id, type, tenant, twin, model, ts,
/// data}`. `id` is stable across redeliveries (receivers deduplicate by
/// it); `ts` is the commit time in epoch ms.
/// Whether a route's condition holds for an event's envelope (an error is
/// false). Its last message's values are there by name and the envelope
/// as `event` (which wins over a value of that name), each converted for
/// CEL only if the condition reads it: most conditions name a value or
/// two, and the envelope converted for every event was most of the cost.
fn condition_holds(expr: &Expr, env: &Value) -> bool {
    struct EventView<'a> {
        env: &'a Value,
        values: Option<&'a Map<String, Value>>,
    }
    impl Lookup for EventView<'_> {
        fn find(&self, name: &str) -> Option<Found<'_>> {
            let v = match name {
                "event" => self.env,
                name => self.values?.get(name)?,
            };
            Some(Found::Made(Bound::from_json(v)))
        }
    }
    let view = EventView {
        env,
        values: env["data"]["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|last| last["values"].as_object()),
    };
    with_lookup(&view, |scope| expr.eval_bool_in(scope)).unwrap_or(false)
}

pub fn envelope(e: &Event) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(e.id.to_string()));
    m.insert("type".into(), Value::String(type_name(e.kind).into()));
    m.insert("tenant".into(), Value::String(e.tenant.clone()));
    m.insert(
        "twin".into(),
        e.twin.clone().map(Value::String).unwrap_or(Value::Null),
    );
    if let Some(model) = &e.model {
        m.insert("model".into(), Value::String(model.clone()));
    }
    m.insert("ts".into(), twinhub_model::time::to_epoch_ms_json(e.at));
    m.insert(
        "data".into(),
        serde_json::to_value(&e.data).unwrap_or(Value::Null),
    );
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_bounded_jitter() {
        let r = Retry::default();
        assert_eq!(r.backoff(1, 0.5), Duration::from_millis(500));
        assert_eq!(r.backoff(2, 0.5), Duration::from_secs(1));
        assert_eq!(r.backoff(30, 0.5), Duration::from_secs(60));
        for f in 1..40 {
            for j in [0.0, 0.3, 1.0] {
                let d = r.backoff(f, j).as_secs_f64();
                let mid = r.backoff(f, 0.5).as_secs_f64();
                assert!(d >= mid * 0.75 - 1e-9 && d <= mid * 1.25 + 1e-9);
            }
        }
    }

    #[test]
    fn templates_render_json_from_the_envelope() {
        let t = Template::compile(
            r#"{"IDOC": {"DOCNUM": "{{ id }}", "MATNR": {{ twin | tojson }}, "TEMP": {{ data.messages[-1]["values"].temperature }}}}"#,
        )
        .unwrap();
        let env = serde_json::json!({"id": "42", "twin": "press-1", "data": {"messages": [{"values": {"temperature": 71.5}}]}});
        assert_eq!(
            t.render(&env).unwrap(),
            serde_json::json!({"IDOC": {"DOCNUM": "42", "MATNR": "press-1", "TEMP": 71.5}})
        );
        assert!(
            t.render(&serde_json::json!({})).is_err(),
            "renders invalid JSON without data"
        );
        let e = Template::compile("{% for x in %}").err().unwrap();
        assert_eq!((e.status, e.field.as_str()), (422, "template"));
        let spin = Template::compile(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}1",
        )
        .unwrap();
        assert!(
            spin.render(&serde_json::json!({})).is_err(),
            "fuel stops it"
        );
    }

    #[test]
    fn conditions_read_the_last_messages_values_and_the_envelope() {
        let env = serde_json::json!({"id": "42", "type": "telemetry", "twin": "press-1",
            "data": {"messages": [{"values": {"temperature": 40.0}},
                                  {"values": {"temperature": 71.5, "event": "shadowed"}}]}});
        let holds = |src: &str| condition_holds(&Expr::compile(src).unwrap(), &env);
        assert!(holds("temperature > 50"));
        assert!(!holds("temperature > 80"));
        assert!(holds(
            "event.twin == 'press-1' && event.type == 'telemetry'"
        ));
        assert!(holds("event.data.messages[0].values.temperature == 40.0"));
        // A name not there is an error, and an error is false.
        assert!(!holds("pressure > 1.0"));
        assert!(!holds("event.nope == 1.0"));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let spec = |v: Value| serde_json::from_value::<RouteSpec>(v).unwrap();
        let base = serde_json::json!({"sink": {"kind": "webhook", "url": "http://x"}});
        let mut s = spec(base.clone());
        s.select.types = vec!["telemetry".into(), "bogus".into()];
        assert_eq!(s.selection().unwrap_err().field, "select.types");
        let mut s = spec(base.clone());
        s.select.twin = Some("a".into());
        s.select.model = Some("dtmi:x;1".into());
        assert_eq!(s.selection().unwrap_err().field, "select");
        let mut s = spec(base.clone());
        s.select.condition = Some("temperature >".into());
        assert_eq!(s.selection().unwrap_err().status, 422);
        let mut s = spec(base.clone());
        s.batch = Some(BatchSpec {
            max: Some(0),
            linger: None,
        });
        assert_eq!(s.batching().unwrap_err().field, "batch.max");
        let mut s = spec(base.clone());
        s.on_full = Some("panic".into());
        assert_eq!(s.drops_oldest().unwrap_err().field, "on_full");
        let mut s = spec(base);
        s.retry = Some(RetrySpec {
            initial: Some("2m".into()),
            max_backoff: Some("1m".into()),
            max_attempts: None,
            circuit_after: None,
            open_for: None,
            fallback_after: None,
        });
        assert_eq!(s.retry().unwrap_err().field, "retry.initial");
    }
}

/// A route's mapping template, compiled once.
pub struct Template {
    env: minijinja::Environment<'static>,
}

/// Work one rendering may do (loops, filters): a template cannot hang
/// the route.
const TEMPLATE_FUEL: u64 = 200_000;

impl Template {
    pub fn compile(src: &str) -> Result<Template, SpecError> {
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        env.add_template_owned("route", src.to_string())
            .map_err(|e| {
                let at = e.line().map(|l| format!(" (line {l})")).unwrap_or_default();
                refuse(
                    422,
                    "template",
                    format!("{}{at}", e.detail().unwrap_or("does not parse")),
                )
            })?;
        Ok(Template { env })
    }

    /// The document for one envelope: the template's output, as JSON.
    pub fn render(&self, env: &Value) -> Result<Value, String> {
        let tmpl = self.env.get_template("route").map_err(|e| e.to_string())?;
        let mut ctx = env.as_object().cloned().unwrap_or_default();
        ctx.insert("event".into(), env.clone());
        let text = tmpl
            .render(minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| {
                format!(
                    "the template failed: {}",
                    e.detail().unwrap_or("render error")
                )
            })?;
        serde_json::from_str(&text).map_err(|e| format!("the template did not render JSON ({e})"))
    }
}
