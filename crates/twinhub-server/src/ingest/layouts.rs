//! Binary layouts, kept in memory so a frame is decoded without a store
//! read: a device's own (`PUT /api/v1/devices/{id}/layout`), and named
//! layouts (`PUT /api/v1/layouts/{id}`) that list their devices or name a
//! DTDL model — every device whose twin is of that model (or extends it)
//! uses it. A device's own layout wins, then a named one listing it, then
//! one of its model (by layout id when several match).

use crate::store::{Store, StoreError};
use crate::twins::TwinGraphs;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use twinhub_codec::layout::Layout;
use twinhub_codec::DecodeError;
use twinhub_model::dtdl::Dtmi;

/// A named layout and what it applies to.
pub struct Named {
    pub layout: Arc<Layout>,
    pub body: String,
    pub devices: Vec<String>,
    pub model: Option<Dtmi>,
}

pub struct Layouts {
    store: Store,
    twins: Arc<TwinGraphs>,
    /// device → (tenant, layout, body as declared)
    own: RwLock<HashMap<String, (String, Arc<Layout>, String)>>,
    named: RwLock<BTreeMap<(String, String), Named>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("{}: {}", .0.field, .0.rule)]
    Invalid(DecodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn bad(field: impl Into<String>, rule: impl Into<String>) -> DecodeError {
    DecodeError {
        field: field.into(),
        rule: rule.into(),
    }
}

/// A named layout's body: the layout language plus `devices` and `model`.
fn parse_named(body: &[u8]) -> Result<Named, DecodeError> {
    let mut v: Value =
        serde_json::from_slice(body).map_err(|e| bad("layout", format!("is not JSON: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(bad("layout", "must be a JSON object"));
    };
    let mut devices = Vec::new();
    if let Some(d) = obj.remove("devices") {
        let Value::Array(list) = d else {
            return Err(bad("devices", "must be an array of device ids"));
        };
        for (i, x) in list.iter().enumerate() {
            let id = x
                .as_str()
                .ok_or_else(|| bad(format!("devices[{i}]"), "must be a device id"))?;
            twinhub_model::ids::check_id(&format!("devices[{i}]"), id)
                .map_err(|e| bad(e.field, e.rule))?;
            devices.push(id.to_string());
        }
    }
    let model = match obj.remove("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => {
            Some(Dtmi::parse(&m).map_err(|rule| bad("model", rule.to_string()))?)
        }
        Some(_) => return Err(bad("model", "must be a DTDL model id (dtmi:…;1)")),
    };
    if devices.is_empty() && model.is_none() {
        return Err(bad(
            "devices",
            "a named layout lists its devices, or names a model, or both",
        ));
    }
    let layout = Layout::parse(v.to_string().as_bytes())?;
    Ok(Named {
        layout: Arc::new(layout),
        body: String::from_utf8_lossy(body).into_owned(),
        devices,
        model,
    })
}

impl Layouts {
    pub fn load(store: Store, twins: Arc<TwinGraphs>) -> Result<Arc<Layouts>, StoreError> {
        let mut own = HashMap::new();
        for (tenant, device, body) in store.read(|c| crate::store::registry::load_layouts(c))? {
            match Layout::parse(body.as_bytes()) {
                Ok(l) => {
                    own.insert(device, (tenant, Arc::new(l), body));
                }
                Err(e) => {
                    tracing::error!(device, error = %e.rule, "stored layout no longer parses")
                }
            }
        }
        let mut named = BTreeMap::new();
        for (tenant, id, body) in store.read(|c| crate::store::registry::load_named_layouts(c))? {
            match parse_named(body.as_bytes()) {
                Ok(n) => {
                    named.insert((tenant, id), n);
                }
                Err(e) => {
                    tracing::error!(layout = id, error = %e.rule, "stored layout no longer parses")
                }
            }
        }
        Ok(Arc::new(Layouts {
            store,
            twins,
            own: RwLock::new(own),
            named: RwLock::new(named),
        }))
    }

    /// Checks and stores a device's own layout (errors name the field).
    pub async fn put(&self, tenant: &str, device: &str, body: &[u8]) -> Result<(), PutError> {
        let layout = Layout::parse(body).map_err(PutError::Invalid)?;
        let text = String::from_utf8_lossy(body).into_owned();
        let (t, d, b) = (tenant.to_string(), device.to_string(), text.clone());
        self.store
            .write(move |ctx| crate::store::registry::put_layout(ctx.tx, &t, &d, Some(&b)))
            .await?;
        self.own.write().expect("layouts").insert(
            device.to_string(),
            (tenant.to_string(), Arc::new(layout), text),
        );
        Ok(())
    }

    /// The device's own layout as declared (JSON), if it has one.
    pub fn declared(&self, tenant: &str, device: &str) -> Option<String> {
        let m = self.own.read().expect("layouts");
        m.get(device)
            .filter(|(t, _, _)| t == tenant)
            .map(|(_, _, b)| b.clone())
    }

    /// Checks and stores a named layout; true when it is new.
    pub async fn put_named(&self, tenant: &str, id: &str, body: &[u8]) -> Result<bool, PutError> {
        let n = parse_named(body).map_err(PutError::Invalid)?;
        let (t, i, b) = (tenant.to_string(), id.to_string(), n.body.clone());
        self.store
            .write(move |ctx| crate::store::registry::put_named_layout(ctx.tx, &t, &i, Some(&b)))
            .await?;
        Ok(self
            .named
            .write()
            .expect("layouts")
            .insert((tenant.to_string(), id.to_string()), n)
            .is_none())
    }

    pub fn named(&self, tenant: &str, id: &str) -> Option<String> {
        self.named
            .read()
            .expect("layouts")
            .get(&(tenant.to_string(), id.to_string()))
            .map(|n| n.body.clone())
    }

    /// (id, body) of a tenant's named layouts, by id.
    pub fn list_named(&self, tenant: &str) -> Vec<(String, String)> {
        self.named
            .read()
            .expect("layouts")
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), n)| (id.clone(), n.body.clone()))
            .collect()
    }

    pub async fn delete_named(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let (t, i) = (tenant.to_string(), id.to_string());
        let gone = self
            .store
            .write(move |ctx| crate::store::registry::put_named_layout(ctx.tx, &t, &i, None))
            .await?;
        self.named
            .write()
            .expect("layouts")
            .remove(&(tenant.to_string(), id.to_string()));
        Ok(gone)
    }

    /// The layout a device's frames are decoded with.
    pub fn for_device(&self, tenant: &str, device: &str, twin: &str) -> Option<Arc<Layout>> {
        if let Some((t, l, _)) = self.own.read().expect("layouts").get(device) {
            if t == tenant {
                return Some(l.clone());
            }
        }
        let named = self.named.read().expect("layouts");
        let mine = || named.iter().filter(|((t, _), _)| t == tenant);
        if let Some((_, n)) = mine().find(|(_, n)| n.devices.iter().any(|d| d == device)) {
            return Some(n.layout.clone());
        }
        let models: Vec<(&Dtmi, &Arc<Layout>)> = mine()
            .filter_map(|(_, n)| Some((n.model.as_ref()?, &n.layout)))
            .collect();
        if models.is_empty() {
            return None;
        }
        self.twins.read(tenant, |g| {
            let model = &g.twins.get(twin)?.model;
            models
                .iter()
                .find(|(m, _)| g.models.is_a(model, m))
                .map(|(_, l)| (*l).clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_layouts_name_what_they_apply_to() {
        let f = r#""fields": [{"name": "t", "type": "i16", "offset": 0}]"#;
        let ok =
            parse_named(format!(r#"{{{f}, "devices": ["d1"], "model": "dtmi:x:Y;1"}}"#).as_bytes())
                .unwrap();
        assert_eq!(ok.devices, vec!["d1"]);
        assert_eq!(ok.model.unwrap().as_str(), "dtmi:x:Y;1");
        for (body, field) in [
            (format!("{{{f}}}"), "devices"),
            (format!(r#"{{{f}, "devices": "d1"}}"#), "devices"),
            (format!(r#"{{{f}, "devices": ["bad id"]}}"#), "devices[0]"),
            (format!(r#"{{{f}, "model": "nope"}}"#), "model"),
            (
                r#"{"fields": [{"name": "t", "type": "i17", "offset": 0}], "devices": ["d"]}"#
                    .to_string(),
                "fields[0].type",
            ),
        ] {
            let e = parse_named(body.as_bytes()).err().unwrap();
            assert_eq!(e.field, field, "{body}: {e:?}");
        }
    }
}
