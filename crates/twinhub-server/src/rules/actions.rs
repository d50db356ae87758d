//! What rules do besides raising alarms: calculated properties written back
//! through the pipeline (in the engine's own commit, with its position:
//! exactly once), actions on alarm changes (a property write,
//! a device command, a `rule` event for routes) throttled per rule × twin,
//! and the retention of closed alarms. Actions run once the alarm change
//! is committed; one lost to a crash in between is not repeated (at most
//! once), unlike alarms and calculated values.

use super::alarms::Change;
use super::engine::{Derived, Engine};
use super::{ActionOn, ActionSpec, Rule};
use crate::events::{Draft, Kind};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use twinhub_codec::{Telemetry, TelemetryMessage};

/// One twin's calculated values of a batch, stored with the engine's
/// commit (`Engine::commit`).
pub(super) struct DerivedGroup {
    pub tenant: String,
    pub twin: String,
    pub rules: Vec<Arc<Rule>>,
    pub msgs: Telemetry,
}

impl Engine {
    /// A calculated rule on one telemetry event: evaluated when the event
    /// carries one of the values the expression reads (values the rules
    /// derived themselves do not re-trigger calculated rules, so two such
    /// rules cannot feed each other forever).
    pub(super) fn calculate(
        &mut self,
        rule: &Arc<Rule>,
        twin: &str,
        ts: i64,
        seen: super::evaluate::Seen<'_>,
        derived: &mut Vec<Derived>,
    ) {
        let (Some(expr), Some(out)) = (&rule.expression, &rule.spec.output) else {
            return;
        };
        if seen.source == "rule" {
            return;
        }
        if !super::evaluate::touches(rule, seen) {
            return;
        }
        let view = super::evaluate::TwinView::of(&self.values, &self.twins, &rule.tenant, twin);
        match twinhub_model::rules::expr::with_lookup(&view, |scope| expr.eval_in(scope)) {
            Ok(v) if v.is_null() => {}
            Ok(v) => {
                self.book().record(rule, twin, Ok(()), 0);
                derived.push((
                    rule.tenant.clone(),
                    twin.to_string(),
                    rule.clone(),
                    out.clone(),
                    v,
                    ts,
                ));
            }
            Err(err) => self
                .book()
                .record(rule, twin, Err(err.message), self.clock.now_us()),
        }
    }

    /// Calculated values as telemetry, one group per twin (source
    /// `rule`), with the rules that made them; a value that is not a
    /// telemetry value is the rule's error instead.
    pub(super) fn derived_groups(&self, derived: Vec<Derived>) -> Vec<DerivedGroup> {
        let mut by_twin: HashMap<(String, String), (Vec<Arc<Rule>>, Vec<TelemetryMessage>)> =
            HashMap::new();
        for (tenant, twin, rule, name, value, ts) in derived {
            let v = match &value {
                Value::Number(n) => n.as_f64().map(twinhub_model::Value::Number),
                Value::Bool(b) => Some(twinhub_model::Value::Bool(*b)),
                Value::String(s) => Some(twinhub_model::Value::String(s.clone())),
                _ => None,
            };
            let Some(v) = v else {
                self.book().record(
                    &rule,
                    &twin,
                    Err(format!(
                        "{name}: the expression gave {value}, which is not a telemetry value"
                    )),
                    self.clock.now_us(),
                );
                continue;
            };
            let slot = by_twin.entry((tenant, twin)).or_default();
            slot.0.push(rule);
            slot.1.push(TelemetryMessage {
                ts: Some(ts),
                values: vec![(name, v, Default::default())],
            });
        }
        by_twin
            .into_iter()
            .map(|((tenant, twin), (rules, msgs))| DerivedGroup {
                tenant,
                twin,
                rules,
                msgs: msgs.into(),
            })
            .collect()
    }

    /// Runs the actions of the rules whose alarms changed.
    pub(super) async fn act(&mut self, changes: Vec<Change>) {
        let now = self.clock.now_us();
        let mut events = Vec::new();
        for c in changes {
            let Some(rule) = c
                .alarm
                .rule
                .as_deref()
                .and_then(|r| self.book().get(&c.alarm.tenant, r))
            else {
                continue;
            };
            if rule.spec.actions.is_empty() {
                continue;
            }
            let on = match c.op {
                "raise" => ActionOn::Raise,
                "escalate" => ActionOn::Escalate,
                "clear" => ActionOn::Clear,
                _ => continue,
            };
            let key = (
                rule.tenant.clone(),
                rule.id.clone(),
                c.alarm.originator.clone(),
            );
            let every = rule
                .throttle_us
                .unwrap_or_else(|| self.deps.settings.action_interval_us());
            if self.last_action.get(&key).is_some_and(|t| now - t < every) {
                continue;
            }
            self.last_action.insert(key, now);
            for a in rule.spec.actions.iter().filter(|a| a.on.contains(&on)) {
                if let Err(e) = self.run_action(&rule, &c, a, &mut events).await {
                    self.book().record(&rule, &c.alarm.originator, Err(e), now);
                }
            }
        }
        if let Err(e) = self.store.emit(events).await {
            tracing::warn!(error = %e, "rule events could not be committed");
        }
    }

    async fn run_action(
        &self,
        rule: &Rule,
        c: &Change,
        a: &ActionSpec,
        events: &mut Vec<Draft>,
    ) -> Result<(), String> {
        let (tenant, twin) = (&c.alarm.tenant, &c.alarm.originator);
        if let Some(sp) = &a.set_property {
            let patch = json!([{"op": "add", "path": format!("/{}", sp.name), "value": sp.value}]);
            self.twins
                .patch_twin(tenant, twin, patch, Default::default(), None)
                .await
                .map_err(|e| format!("action set_property {}: {e}", sp.name))?;
        }
        if let Some(cmd) = &a.command {
            let Some(broker) = &self.deps.broker else {
                return Err("action command: the MQTT listener is off".into());
            };
            let device = cmd.device.as_deref().unwrap_or(twin);
            let body = json!({"rule": rule.id, "alarm": c.alarm.doc(), "payload": cmd.payload});
            // Fire and forget: the device's reply is not awaited here.
            let _ = broker.send_command(tenant, device, &cmd.name, body.to_string().into());
        }
        if let Some(data) = &a.event {
            events.push(Draft::new(
                tenant,
                Kind::Rule,
                Some(twin),
                None,
                json!({"rule": rule.id, "op": c.op, "alarm": c.alarm.doc(), "data": data}),
            ));
        }
        Ok(())
    }

    /// Deletes closed alarms older than `rules.alarm_retention`, at most
    /// every ten minutes.
    pub(super) async fn retire_alarms(&mut self) {
        let now = self.clock.now_us();
        if now - self.last_retire < 600_000_000 {
            return;
        }
        self.last_retire = now;
        let before = now - self.deps.settings.alarm_retention_us();
        match self
            .store
            .write(move |ctx| crate::store::rules::delete_closed_alarms(ctx.tx, before))
            .await
        {
            Ok(n) if n > 0 => tracing::info!(alarms = n, "closed alarms past retention deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "closed alarms could not be retired"),
        }
    }
}
