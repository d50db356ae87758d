//! One decoded telemetry payload as the pipeline and the fan-out share it:
//! messages (an optional timestamp each) of readings, with every property
//! name stored once. A 2,000-message request of one property holds one
//! name, not 2,000 strings, and the pipeline builds its columnar write
//! batch and its events from it without copying names.

use twinhub_model::{Quality, Value};

/// One value of a message; `name` indexes `Telemetry::names`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: u32,
    pub value: Value,
    pub quality: Quality,
}

/// Messages of readings with interned names. Built by the decoders or
/// from `TelemetryMessage`s; read through `messages()`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Telemetry {
    names: Vec<Box<str>>,
    /// Each message's timestamp (µs) and the end of its readings.
    messages: Vec<(Option<i64>, u32)>,
    readings: Vec<Reading>,
    /// Names to indexes once there are too many for a scan.
    index: Option<std::collections::HashMap<Box<str>, u32>>,
}

/// A message as `Telemetry::messages` yields it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub ts: Option<i64>,
    pub readings: &'a [Reading],
    names: &'a [Box<str>],
}

impl<'a> Message<'a> {
    /// (name, value, quality) of each reading.
    pub fn values(&self) -> impl Iterator<Item = (&'a str, &'a Value, Quality)> + 'a {
        let names = self.names;
        self.readings
            .iter()
            .map(move |r| (&*names[r.name as usize], &r.value, r.quality))
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.values()
            .find(|(n, _, _)| *n == name)
            .map(|(_, v, _)| v)
    }
}

/// One message with owned names: what code that produces a few values
/// (soft sensors, calculated properties, tests) writes.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryMessage {
    pub ts: Option<i64>,
    pub values: Vec<(String, Value, Quality)>,
}

const SCAN_NAMES: usize = 16;

impl Telemetry {
    /// Starts a message; readings pushed next belong to it.
    pub fn begin(&mut self, ts: Option<i64>) {
        self.messages.push((ts, self.readings.len() as u32));
    }

    pub fn set_ts(&mut self, ts: Option<i64>) {
        if let Some(m) = self.messages.last_mut() {
            m.0 = ts;
        }
    }

    /// The index of `name`, added if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(i) = self.find(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(name.into());
        if let Some(ix) = self.index.as_mut() {
            ix.insert(name.into(), i);
        } else if self.names.len() > SCAN_NAMES {
            self.index = Some(
                self.names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), i as u32))
                    .collect(),
            );
        }
        i
    }

    pub fn find(&self, name: &str) -> Option<u32> {
        match &self.index {
            Some(ix) => ix.get(name).copied(),
            None => self
                .names
                .iter()
                .position(|n| &**n == name)
                .map(|i| i as u32),
        }
    }

    /// Adds a reading to the current message; a name already in it is
    /// replaced (the later value wins, as in a JSON object).
    pub fn push(&mut self, name: u32, value: Value, quality: Quality) {
        let start = self.messages.last().map_or(0, |m| m.1 as usize);
        if let Some(r) = self.readings[start..].iter_mut().find(|r| r.name == name) {
            r.value = value;
            r.quality = quality;
            return;
        }
        self.readings.push(Reading {
            name,
            value,
            quality,
        });
    }

    /// Readings in the current message.
    pub fn current_len(&self) -> usize {
        self.readings.len() - self.messages.last().map_or(0, |m| m.1 as usize)
    }

    pub fn messages(&self) -> impl ExactSizeIterator<Item = Message<'_>> + '_ {
        self.messages
            .iter()
            .enumerate()
            .map(move |(i, (ts, start))| {
                let end = self
                    .messages
                    .get(i + 1)
                    .map_or(self.readings.len(), |m| m.1 as usize);
                Message {
                    ts: *ts,
                    readings: &self.readings[*start as usize..end],
                    names: &self.names,
                }
            })
    }

    /// Each message's timestamp, to fill in the ones the sender left out.
    pub fn timestamps_mut(&mut self) -> impl Iterator<Item = &mut Option<i64>> {
        self.messages.iter_mut().map(|m| &mut m.0)
    }

    pub fn names(&self) -> &[Box<str>] {
        &self.names
    }

    pub fn readings(&self) -> &[Reading] {
        &self.readings
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    pub fn points(&self) -> usize {
        self.readings.len()
    }

    /// Appends every message of `other` (its names interned here).
    pub fn extend_from(&mut self, other: &Telemetry) {
        let map: Vec<u32> = other.names.iter().map(|n| self.intern(n)).collect();
        for m in other.messages() {
            self.messages.push((m.ts, self.readings.len() as u32));
            for r in m.readings {
                self.readings.push(Reading {
                    name: map[r.name as usize],
                    value: r.value.clone(),
                    quality: r.quality,
                });
            }
        }
    }

    /// Owned messages (for code that wants them one by one).
    pub fn to_messages(&self) -> Vec<TelemetryMessage> {
        self.messages()
            .map(|m| TelemetryMessage {
                ts: m.ts,
                values: m
                    .values()
                    .map(|(n, v, q)| (n.to_string(), v.clone(), q))
                    .collect(),
            })
            .collect()
    }
}

impl From<Vec<TelemetryMessage>> for Telemetry {
    fn from(msgs: Vec<TelemetryMessage>) -> Telemetry {
        let mut t = Telemetry::default();
        for m in msgs {
            t.begin(m.ts);
            for (n, v, q) in m.values {
                let i = t.intern(&n);
                t.push(i, v, q);
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extending_keeps_every_message_and_reading() {
        let a: Telemetry = vec![TelemetryMessage {
            ts: Some(1),
            values: vec![("t".into(), Value::Number(1.0), Quality::Good)],
        }]
        .into();
        let b: Telemetry = vec![TelemetryMessage {
            ts: Some(2),
            values: vec![
                ("p".into(), Value::Number(2.0), Quality::Bad),
                ("t".into(), Value::Number(3.0), Quality::Good),
            ],
        }]
        .into();
        let mut m = a.clone();
        m.extend_from(&b);
        let mut want = a.to_messages();
        want.extend(b.to_messages());
        assert_eq!(m.to_messages(), want);
        assert_eq!(m.names().len(), 2);
    }

    #[test]
    fn names_are_stored_once_and_later_values_win() {
        let mut t = Telemetry::default();
        for i in 0..40 {
            t.begin(Some(i));
            let a = t.intern("a");
            t.push(a, Value::Number(i as f64), Quality::Good);
            let n = t.intern(&format!("n{}", i % 20));
            t.push(n, Value::Bool(true), Quality::Bad);
            t.push(a, Value::Number(-1.0), Quality::Good);
        }
        assert_eq!(t.names().len(), 21);
        assert_eq!(t.points(), 80);
        let m: Vec<_> = t.messages().collect();
        assert_eq!(m.len(), 40);
        assert_eq!(m[39].get("a"), Some(&Value::Number(-1.0)));
        assert_eq!(m[39].get("n19"), Some(&Value::Bool(true)));
        assert_eq!(Telemetry::from(t.to_messages()), t);
    }
}
