//! One tenant's twin graph in memory: models, twins, relationships, and the
//! indexes queries use (by model, by scalar property value, outgoing and
//! incoming relationships).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use twinhub_model::dtdl::{Dtmi, ModelSet};

#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub uploaded_at: i64,
    pub decommissioned: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Twin {
    pub id: Arc<str>,
    pub model: Dtmi,
    pub etag: String,
    /// Properties and components (no `$` keys).
    pub props: Map<String, Value>,
    /// Per-property metadata (`lastUpdateTime`), nested for components.
    pub meta: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rel {
    pub id: String,
    pub source: Arc<str>,
    pub name: String,
    pub target: Arc<str>,
    pub etag: String,
    pub props: Map<String, Value>,
}

impl Rel {
    /// The relationship as the API shows it.
    pub fn doc(&self) -> Value {
        let mut m = Map::new();
        m.insert("$relationshipId".into(), Value::String(self.id.clone()));
        m.insert("$etag".into(), Value::String(self.etag.clone()));
        m.insert("$sourceId".into(), Value::String(self.source.to_string()));
        m.insert("$relationshipName".into(), Value::String(self.name.clone()));
        m.insert("$targetId".into(), Value::String(self.target.to_string()));
        for (k, v) in &self.props {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

/// Normalised scalar for the property-value index (1 and 1.0 are equal).
pub fn prop_key(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(format!("s{s}")),
        Value::Number(n) => n.as_f64().map(|f| format!("n{}", f.to_bits())),
        Value::Bool(b) => Some(format!("b{b}")),
        _ => None,
    }
}

#[derive(Default)]
pub struct TenantGraph {
    pub models: ModelSet,
    pub model_info: HashMap<Dtmi, ModelInfo>,
    pub twins: BTreeMap<Arc<str>, Twin>,
    by_model: HashMap<Dtmi, BTreeSet<Arc<str>>>,
    by_prop: HashMap<(String, String), BTreeSet<Arc<str>>>,
    /// source → relationship id → relationship.
    pub out: HashMap<Arc<str>, BTreeMap<String, Rel>>,
    /// target → (source, relationship id).
    pub incoming: HashMap<Arc<str>, BTreeSet<(Arc<str>, String)>>,
}

impl TenantGraph {
    pub fn put_twin(&mut self, t: Twin) -> Option<Twin> {
        let old = self.remove_twin(&t.id);
        self.by_model
            .entry(t.model.clone())
            .or_default()
            .insert(t.id.clone());
        for (k, v) in &t.props {
            if let Some(pk) = prop_key(v) {
                self.by_prop
                    .entry((k.clone(), pk))
                    .or_default()
                    .insert(t.id.clone());
            }
        }
        self.twins.insert(t.id.clone(), t);
        old
    }

    pub fn remove_twin(&mut self, id: &str) -> Option<Twin> {
        let t = self.twins.remove(id)?;
        if let Some(set) = self.by_model.get_mut(&t.model) {
            set.remove(id);
        }
        for (k, v) in &t.props {
            if let Some(pk) = prop_key(v) {
                if let Some(set) = self.by_prop.get_mut(&(k.clone(), pk)) {
                    set.remove(id);
                }
            }
        }
        Some(t)
    }

    pub fn put_rel(&mut self, r: Rel) -> Option<Rel> {
        let old = self.remove_rel(&r.source, &r.id);
        self.incoming
            .entry(r.target.clone())
            .or_default()
            .insert((r.source.clone(), r.id.clone()));
        self.out
            .entry(r.source.clone())
            .or_default()
            .insert(r.id.clone(), r);
        old
    }

    pub fn remove_rel(&mut self, source: &str, id: &str) -> Option<Rel> {
        let r = self.out.get_mut(source)?.remove(id)?;
        if self.out.get(source).is_some_and(BTreeMap::is_empty) {
            self.out.remove(source);
        }
        if let Some(inc) = self.incoming.get_mut(&*r.target) {
            inc.remove(&(r.source.clone(), r.id.clone()));
            if inc.is_empty() {
                self.incoming.remove(&*r.target);
            }
        }
        Some(r)
    }

    pub fn rel(&self, source: &str, id: &str) -> Option<&Rel> {
        self.out.get(source)?.get(id)
    }

    pub fn outgoing(&self, source: &str) -> impl Iterator<Item = &Rel> {
        self.out.get(source).into_iter().flat_map(|m| m.values())
    }

    /// Whether `twin` is `root` or reached from it through relationships
    /// named in `rels` (walks up the incoming relationships).
    pub fn under(&self, root: &str, rels: &[String], twin: &str) -> bool {
        if twin == root {
            return true;
        }
        let mut seen: std::collections::HashSet<Arc<str>> = Default::default();
        let mut stack: Vec<Arc<str>> = vec![twin.into()];
        while let Some(t) = stack.pop() {
            for r in self.incoming_of(&t) {
                if !rels.contains(&r.name) {
                    continue;
                }
                if &*r.source == root {
                    return true;
                }
                if seen.insert(r.source.clone()) {
                    stack.push(r.source.clone());
                }
            }
        }
        false
    }

    /// `root` and every twin reached from it through relationships named
    /// in `rels` (the twins a scope covers).
    pub fn subtree(
        &self,
        root: &str,
        rels: &[String],
        into: &mut std::collections::HashSet<Arc<str>>,
    ) {
        let Some((root, _)) = self.twins.get_key_value(root) else {
            return;
        };
        if !into.insert(root.clone()) {
            return;
        }
        let mut stack = vec![root.clone()];
        while let Some(t) = stack.pop() {
            for r in self.outgoing(&t) {
                if rels.contains(&r.name) && into.insert(r.target.clone()) {
                    stack.push(r.target.clone());
                }
            }
        }
    }

    pub fn incoming_of(&self, target: &str) -> impl Iterator<Item = &Rel> {
        self.incoming
            .get(target)
            .into_iter()
            .flat_map(|s| s.iter())
            .filter_map(|(src, id)| self.rel(src, id))
    }

    pub fn twins_of_model(&self, model: &Dtmi, exact: bool) -> Vec<Arc<str>> {
        let mut out: BTreeSet<Arc<str>> = BTreeSet::new();
        for (m, ids) in &self.by_model {
            if m == model || (!exact && self.models.is_a(m, model)) {
                out.extend(ids.iter().cloned());
            }
        }
        out.into_iter().collect()
    }

    pub fn twins_with(&self, prop: &str, v: &Value) -> Option<Vec<Arc<str>>> {
        let pk = prop_key(v)?;
        Some(
            self.by_prop
                .get(&(prop.to_string(), pk))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
        )
    }

    pub fn model_in_use(&self, model: &Dtmi) -> bool {
        self.by_model.get(model).is_some_and(|s| !s.is_empty())
    }
}
