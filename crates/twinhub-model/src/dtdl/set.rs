//! A consistent set of interfaces: reference resolution, `extends`
//! (cycles, depth ≤ 10), name uniqueness across inheritance, and the
//! flattened view twins are validated against.

use super::values::{check_value, ValueError};
use super::{ContentKind, Dtmi, Interface, ModelError, Schema};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// DTDL v3, Limits and exclusions: at most 10 "extends" members in any
/// path (Requirement-ClassInterfacePropertiesExtendsMaxDepthV3).
pub const MAX_EXTENDS_DEPTH: usize = 10;
/// At most 1024 values among all "extends" members of the hierarchy
/// (Requirement-ClassInterfacePropertiesExtendsMaxCountV3).
pub const MAX_EXTENDS_VALUES: usize = 1024;
/// At most 100,000 values among the contents (and their schemas,
/// fields, …) of an interface, including what it inherits.
pub const MAX_CONTENT_VALUES: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub struct RelationshipDef {
    pub target: Option<Dtmi>,
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub properties: BTreeMap<String, Schema>,
}

/// An interface with everything it inherits, by element name.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub id: Dtmi,
    pub properties: BTreeMap<String, (Schema, bool)>,
    pub telemetry: BTreeMap<String, Schema>,
    pub commands: BTreeSet<String>,
    pub relationships: BTreeMap<String, RelationshipDef>,
    pub components: BTreeMap<String, Dtmi>,
    /// This interface and every interface it extends, transitively.
    pub ancestors: BTreeSet<Dtmi>,
    /// Which interface defines each element (for inherited ones, the
    /// ancestor that declares it).
    pub origin: BTreeMap<String, Dtmi>,
}

#[derive(Debug, Clone, Default)]
pub struct ModelSet {
    interfaces: HashMap<Dtmi, Arc<Interface>>,
    resolved: HashMap<Dtmi, Arc<Resolved>>,
    named: HashMap<Dtmi, Schema>,
}

impl ModelSet {
    pub fn get(&self, id: &Dtmi) -> Option<&Arc<Interface>> {
        self.interfaces.get(id)
    }

    pub fn resolved(&self, id: &Dtmi) -> Option<&Arc<Resolved>> {
        self.resolved.get(id)
    }

    pub fn len(&self) -> usize {
        self.interfaces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &Dtmi> {
        self.interfaces.keys()
    }

    /// `model` is `base` or extends it (transitively).
    pub fn is_a(&self, model: &Dtmi, base: &Dtmi) -> bool {
        self.resolved
            .get(model)
            .is_some_and(|r| r.ancestors.contains(base))
    }

    /// Models that extend, embed as a component, or point a relationship
    /// or schema at `id`: deleting `id` would break them.
    pub fn dependents(&self, id: &Dtmi) -> Vec<Dtmi> {
        let mut out: Vec<Dtmi> = self
            .interfaces
            .values()
            .filter(|i| &i.id != id)
            .filter(|i| {
                i.extends.contains(id)
                    || i.contents.iter().any(|c| match &c.kind {
                        ContentKind::Component { schema } => schema == id,
                        ContentKind::Relationship { target, .. } => target.as_ref() == Some(id),
                        _ => false,
                    })
            })
            .map(|i| i.id.clone())
            .collect();
        out.sort();
        out
    }

    pub fn without(&self, id: &Dtmi) -> ModelSet {
        let mut all: Vec<Interface> = self.interfaces.values().map(|i| (**i).clone()).collect();
        all.retain(|i| &i.id != id);
        ModelSet::default().with(all).unwrap_or_default()
    }

    /// This set plus `new`, if together they are consistent. Ids already
    /// present are refused (models are immutable; upload a new version).
    pub fn with(&self, new: Vec<Interface>) -> Result<ModelSet, Vec<ModelError>> {
        let mut errors = Vec::new();
        let mut interfaces = self.interfaces.clone();
        for i in new {
            if interfaces.contains_key(&i.id) {
                errors.push(ModelError { interface: i.id.to_string(), element: "@id".into(), rule: "a model with this id already exists; models are immutable, upload a new version".into() });
                continue;
            }
            interfaces.insert(i.id.clone(), Arc::new(i));
        }
        let mut named = HashMap::new();
        for i in interfaces.values() {
            for (sid, s) in &i.schemas {
                named.insert(sid.clone(), s.clone());
            }
        }
        let set = ModelSet {
            interfaces,
            resolved: HashMap::new(),
            named,
        };
        // References.
        for i in set.interfaces.values() {
            let e = |element: String, rule: String| ModelError {
                interface: i.id.to_string(),
                element,
                rule,
            };
            for (n, x) in i.extends.iter().enumerate() {
                if !set.interfaces.contains_key(x) {
                    errors.push(e(
                        format!("extends[{n}]"),
                        format!("unresolved reference to {x}"),
                    ));
                }
            }
            for c in &i.contents {
                match &c.kind {
                    ContentKind::Component { schema } if !set.interfaces.contains_key(schema) => {
                        errors.push(e(
                            c.name.clone(),
                            format!("unresolved reference to {schema}"),
                        ));
                    }
                    ContentKind::Relationship {
                        target: Some(t), ..
                    } if !set.interfaces.contains_key(t) => {
                        errors.push(e(c.name.clone(), format!("unresolved target {t}")));
                    }
                    ContentKind::Property { schema, .. } | ContentKind::Telemetry { schema } => {
                        set.check_refs(schema, &i.id, &c.name, &mut errors)
                    }
                    ContentKind::Relationship { properties, .. } => {
                        for (_, s) in properties {
                            set.check_refs(s, &i.id, &c.name, &mut errors);
                        }
                    }
                    ContentKind::Command { request, response } => {
                        for (_, s) in request.iter().chain(response.iter()) {
                            set.check_refs(s, &i.id, &c.name, &mut errors);
                        }
                    }
                    _ => {}
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut resolved = HashMap::new();
        for id in set.interfaces.keys() {
            match set.resolve(id, &mut Vec::new()) {
                Ok(r) => {
                    errors.extend(set.check_limits(&r));
                    resolved.insert(id.clone(), Arc::new(r));
                }
                Err(e) => errors.push(e),
            }
        }
        errors.sort_by(|a, b| (&a.interface, &a.element).cmp(&(&b.interface, &b.element)));
        errors.dedup();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(ModelSet { resolved, ..set })
    }

    /// The hierarchy-wide limits of DTDL v3 ("Limits and exclusions").
    fn check_limits(&self, r: &Resolved) -> Vec<ModelError> {
        let mut out = Vec::new();
        let ext: usize = r
            .ancestors
            .iter()
            .filter_map(|a| self.interfaces.get(a))
            .map(|i| i.extends.len())
            .sum();
        if ext > MAX_EXTENDS_VALUES {
            out.push(ModelError {
                interface: r.id.to_string(),
                element: "extends".into(),
                rule: format!("its extends hierarchy names {ext} interfaces; DTDL allows at most {MAX_EXTENDS_VALUES}"),
            });
        }
        let values: usize = r
            .ancestors
            .iter()
            .filter_map(|a| self.interfaces.get(a))
            .flat_map(|i| i.contents.iter())
            .map(|c| 1 + content_values(&c.kind))
            .sum();
        if values > MAX_CONTENT_VALUES {
            out.push(ModelError {
                interface: r.id.to_string(),
                element: "contents".into(),
                rule: format!("its contents, schemas and fields (inherited ones included) hold {values} values; DTDL allows at most {MAX_CONTENT_VALUES}"),
            });
        }
        out
    }

    fn check_refs(&self, s: &Schema, iface: &Dtmi, element: &str, errors: &mut Vec<ModelError>) {
        match s {
            Schema::Ref(r) if !self.named.contains_key(r) => errors.push(ModelError {
                interface: iface.to_string(),
                element: element.to_string(),
                rule: format!("unresolved schema reference {r}"),
            }),
            Schema::Object { fields } => fields
                .iter()
                .for_each(|(_, f)| self.check_refs(f, iface, element, errors)),
            Schema::Map { value, .. } => self.check_refs(value, iface, element, errors),
            Schema::Array { element: el } => self.check_refs(el, iface, element, errors),
            _ => {}
        }
    }

    fn resolve(&self, id: &Dtmi, path: &mut Vec<Dtmi>) -> Result<Resolved, ModelError> {
        if path.contains(id) {
            return Err(ModelError {
                interface: path[0].to_string(),
                element: "extends".into(),
                rule: format!("cycle in extends through {id}"),
            });
        }
        if path.len() > MAX_EXTENDS_DEPTH {
            return Err(ModelError {
                interface: path[0].to_string(),
                element: "extends".into(),
                rule: format!("extends chains may be at most {MAX_EXTENDS_DEPTH} levels deep"),
            });
        }
        let iface = &self.interfaces[id];
        path.push(id.clone());
        let mut r = Resolved {
            id: id.clone(),
            properties: BTreeMap::new(),
            telemetry: BTreeMap::new(),
            commands: BTreeSet::new(),
            relationships: BTreeMap::new(),
            components: BTreeMap::new(),
            ancestors: [id.clone()].into(),
            origin: BTreeMap::new(),
        };
        // DTDL v3 forbids two different definitions of one name; one
        // definition reached through two `extends` paths (a diamond) is
        // one element.
        fn add(
            id: &Dtmi,
            r: &mut Resolved,
            name: &str,
            from: &Dtmi,
            kind: &ContentKind,
        ) -> Result<(), ModelError> {
            if let Some(prev) = r.origin.get(name) {
                if prev == from && from != id {
                    return Ok(());
                }
                return Err(ModelError {
                    interface: id.to_string(),
                    element: name.to_string(),
                    rule: if prev == from {
                        "duplicate name".into()
                    } else {
                        format!("duplicate name: defined by {prev} and by {from}")
                    },
                });
            }
            r.origin.insert(name.to_string(), from.clone());
            match kind {
                ContentKind::Property { schema, writable } => {
                    r.properties
                        .insert(name.to_string(), (schema.clone(), *writable));
                }
                ContentKind::Telemetry { schema } => {
                    r.telemetry.insert(name.to_string(), schema.clone());
                }
                ContentKind::Command { .. } => {
                    r.commands.insert(name.to_string());
                }
                ContentKind::Relationship {
                    target,
                    min,
                    max,
                    properties,
                    ..
                } => {
                    r.relationships.insert(
                        name.to_string(),
                        RelationshipDef {
                            target: target.clone(),
                            min: *min,
                            max: *max,
                            properties: properties.iter().cloned().collect(),
                        },
                    );
                }
                ContentKind::Component { schema } => {
                    r.components.insert(name.to_string(), schema.clone());
                }
            }
            Ok(())
        }
        for base in &iface.extends {
            let b = self.resolve(base, path)?;
            r.ancestors.extend(b.ancestors.iter().cloned());
            let kinds = b
                .properties
                .iter()
                .map(|(n, (s, w))| {
                    (
                        n.clone(),
                        ContentKind::Property {
                            schema: s.clone(),
                            writable: *w,
                        },
                    )
                })
                .chain(
                    b.telemetry
                        .iter()
                        .map(|(n, s)| (n.clone(), ContentKind::Telemetry { schema: s.clone() })),
                )
                .chain(b.commands.iter().map(|n| {
                    (
                        n.clone(),
                        ContentKind::Command {
                            request: None,
                            response: None,
                        },
                    )
                }))
                .chain(b.relationships.iter().map(|(n, d)| {
                    (
                        n.clone(),
                        ContentKind::Relationship {
                            target: d.target.clone(),
                            min: d.min,
                            max: d.max,
                            properties: d.properties.clone().into_iter().collect(),
                            writable: false,
                        },
                    )
                }))
                .chain(
                    b.components
                        .iter()
                        .map(|(n, s)| (n.clone(), ContentKind::Component { schema: s.clone() })),
                );
            let kinds: Vec<(String, ContentKind)> = kinds.collect();
            for (n, k) in kinds {
                let origin = b.origin.get(&n).unwrap_or(base).clone();
                add(id, &mut r, &n, &origin, &k)?;
            }
        }
        for c in &iface.contents {
            add(id, &mut r, &c.name, id, &c.kind)?;
        }
        path.pop();
        Ok(r)
    }

    /// Follows named-schema references.
    pub fn schema<'a>(&'a self, s: &'a Schema) -> &'a Schema {
        let mut s = s;
        for _ in 0..16 {
            match s {
                Schema::Ref(r) => match self.named.get(r) {
                    Some(n) => s = n,
                    None => return s,
                },
                _ => return s,
            }
        }
        s
    }

    /// Checks twin content (properties and components, no `$` keys)
    /// against a model. Telemetry names are refused: devices report them.
    pub fn check_twin(
        &self,
        model: &Dtmi,
        doc: &Map<String, Value>,
        prefix: &str,
    ) -> Result<(), ModelError> {
        let r = self.resolved(model).ok_or_else(|| ModelError {
            interface: model.to_string(),
            element: String::new(),
            rule: "no such model".into(),
        })?;
        for (k, v) in doc {
            if k.starts_with('$') {
                continue;
            }
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let bad = |rule: String| ModelError {
                interface: model.to_string(),
                element: path.clone(),
                rule,
            };
            if let Some((schema, _)) = r.properties.get(k) {
                if !v.is_null() {
                    check_value(self, schema, v, &path)
                        .map_err(|e: ValueError| bad(e.to_string()))?;
                }
            } else if let Some(comp) = r.components.get(k) {
                let obj = v
                    .as_object()
                    .ok_or_else(|| bad("a component must be an object".into()))?;
                self.check_twin(comp, obj, &path)?;
            } else if r.telemetry.contains_key(k) {
                return Err(bad(
                    "is telemetry: devices report it, it cannot be set".into()
                ));
            } else if r.relationships.contains_key(k) {
                return Err(bad("is a relationship: use the relationships API".into()));
            } else {
                return Err(bad(format!("is not a property of {model}")));
            }
        }
        Ok(())
    }

    /// The schema of a telemetry name (dotted into components), if any.
    pub fn telemetry_schema(&self, model: &Dtmi, name: &str) -> Option<&Schema> {
        let r = self.resolved(model)?;
        match name.split_once('.') {
            Some((comp, rest)) => self.telemetry_schema(r.components.get(comp)?, rest),
            None => r
                .telemetry
                .get(name)
                .or_else(|| r.properties.get(name).map(|(s, _)| s)),
        }
    }
}

/// Values under one content element: its schema, fields, enum values,
/// request/response and relationship properties (each counted once).
fn content_values(k: &ContentKind) -> usize {
    match k {
        ContentKind::Property { schema, .. } | ContentKind::Telemetry { schema } => {
            schema_values(schema)
        }
        ContentKind::Command { request, response } => request
            .iter()
            .chain(response.iter())
            .map(|(_, s)| 1 + schema_values(s))
            .sum(),
        ContentKind::Relationship { properties, .. } => {
            properties.iter().map(|(_, s)| 1 + schema_values(s)).sum()
        }
        ContentKind::Component { .. } => 1,
    }
}

fn schema_values(s: &Schema) -> usize {
    1 + match s {
        Schema::Primitive(_) | Schema::Ref(_) => 0,
        Schema::Enum { values, .. } => values.len(),
        Schema::Object { fields } => fields.iter().map(|(_, f)| 1 + schema_values(f)).sum(),
        Schema::Map { value, .. } => 1 + schema_values(value),
        Schema::Array { element } => schema_values(element),
    }
}
