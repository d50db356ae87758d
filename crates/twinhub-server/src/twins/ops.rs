//! Writes of the twin graph. Each runs inside the store writer's
//! transaction: validate against the current graph, write the rows, apply
//! the change in memory (undone if the commit fails), and emit the event
//! the writer publishes once committed.

use super::graph::{ModelInfo, Rel, Twin};
use super::{etag, TwinError, TwinGraphs, MAX_RELATIONSHIPS_PER_TWIN, MAX_TWIN_BYTES};
use crate::events::{Draft, Kind};
use crate::store::twins as rows;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use twinhub_model::dtdl::{check_value, parse_models, Dtmi};
use twinhub_model::patch::{apply, parse_patch, PatchOp};

/// A twin event: `data` (with its `op`) plus the twin's id and model.
fn twin_changed(tenant: &str, id: &str, model: &str, mut data: Value) -> Draft {
    data["twin"] = json!(id);
    data["model"] = json!(model);
    Draft::new(tenant, Kind::Twin, Some(id), Some(model), data)
}

/// `If-Match` / `If-None-Match: *` of a request.
#[derive(Debug, Clone, Default)]
pub struct Cond {
    pub if_match: Option<String>,
    pub if_none_match_any: bool,
}

impl Cond {
    fn check(&self, current: Option<&str>) -> Result<(), TwinError> {
        if self.if_none_match_any && current.is_some() {
            return Err(TwinError::Precondition(
                "If-None-Match: * failed: it already exists".into(),
            ));
        }
        if let Some(want) = &self.if_match {
            match current {
                Some(c) if want == "*" || want == c => {}
                Some(_) => {
                    return Err(TwinError::Precondition(
                        "If-Match failed: the etag has changed".into(),
                    ))
                }
                None => {
                    return Err(TwinError::Precondition(
                        "If-Match failed: it does not exist".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}

fn invalid(field: impl Into<String>, rule: impl Into<String>) -> TwinError {
    TwinError::Invalid {
        field: field.into(),
        rule: rule.into(),
    }
}

/// Splits a twin body into properties (components without `$metadata`).
fn content_of(body: &Map<String, Value>) -> Map<String, Value> {
    body.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| {
            let v = match v {
                Value::Object(o) if o.contains_key("$metadata") => Value::Object(
                    o.iter()
                        .filter(|(k, _)| !k.starts_with('$'))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                ),
                v => v.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Metadata after a change: changed values get `now`, unchanged keep
/// their time, removed ones go. Components (objects of a component
/// name) keep per-member times.
fn metadata(
    old: &Map<String, Value>,
    old_meta: &Map<String, Value>,
    new: &Map<String, Value>,
    components: &std::collections::BTreeMap<String, Dtmi>,
    now: &str,
) -> Map<String, Value> {
    let stamp = || json!({"lastUpdateTime": now});
    let mut out = Map::new();
    for (k, v) in new {
        if components.contains_key(k) {
            let (Some(nc), oc) = (v.as_object(), old.get(k).and_then(Value::as_object)) else {
                continue;
            };
            let ocm = old_meta.get(k).and_then(Value::as_object);
            let mut cm = Map::new();
            for (ck, cv) in nc {
                let same = oc.and_then(|o| o.get(ck)) == Some(cv);
                let prev = ocm.and_then(|m| m.get(ck)).cloned();
                cm.insert(
                    ck.clone(),
                    if same {
                        prev.unwrap_or_else(stamp)
                    } else {
                        stamp()
                    },
                );
            }
            out.insert(k.clone(), Value::Object(cm));
        } else {
            let same = old.get(k) == Some(v);
            let prev = old_meta.get(k).cloned();
            out.insert(
                k.clone(),
                if same {
                    prev.unwrap_or_else(stamp)
                } else {
                    stamp()
                },
            );
        }
    }
    out
}

fn twin_row(tenant: &str, t: &Twin) -> rows::TwinRow {
    rows::TwinRow {
        tenant: tenant.to_string(),
        id: t.id.to_string(),
        model: t.model.to_string(),
        etag: t.etag.clone(),
        body: json!({"props": t.props, "meta": t.meta}).to_string(),
    }
}

fn rel_row(tenant: &str, r: &Rel) -> rows::RelationshipRow {
    rows::RelationshipRow {
        tenant: tenant.to_string(),
        source: r.source.to_string(),
        id: r.id.clone(),
        name: r.name.clone(),
        target: r.target.to_string(),
        etag: r.etag.clone(),
        body: Value::Object(r.props.clone()).to_string(),
    }
}

impl TwinGraphs {
    /// Uploads models (one interface or an array); all or none.
    pub async fn add_models(
        self: &Arc<Self>,
        tenant: &str,
        body: &[u8],
    ) -> Result<Vec<Value>, TwinError> {
        let ifaces = parse_models(body).map_err(TwinError::Models)?;
        if ifaces.is_empty() {
            return Err(TwinError::BadRequest("body: holds no interface".into()));
        }
        let (me, tenant) = (self.clone(), tenant.to_string());
        let now = self.clock.now_us();
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let g = all.entry(tenant.clone()).or_default();
                let set = match g.models.with(ifaces.clone()) {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(TwinError::Models(e))),
                };
                let mut out = Vec::new();
                for i in &ifaces {
                    rows::put_model(ctx.tx, &rows::ModelRow { tenant: tenant.clone(), id: i.id.to_string(), body: i.source.to_string(), decommissioned: false, uploaded_at: now })?;
                    out.push(json!({"id": i.id.as_str(), "uploadTime": twinhub_model::time::format_rfc3339(now), "decommissioned": false, "displayName": i.display_name}));
                }
                let old = std::mem::replace(&mut g.models, set);
                for i in &ifaces {
                    g.model_info.insert(i.id.clone(), ModelInfo { uploaded_at: now, decommissioned: false });
                }
                let ids = ifaces.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
                me.undo_on_rollback(ctx, &tenant, move |g| {
                    g.models = old;
                    for id in ids {
                        g.model_info.remove(&id);
                    }
                });
                Ok(Ok(out))
            })
            .await?
    }

    pub async fn decommission(
        self: &Arc<Self>,
        tenant: &str,
        id: &Dtmi,
        flag: bool,
    ) -> Result<(), TwinError> {
        let (me, tenant, id) = (self.clone(), tenant.to_string(), id.clone());
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let Some(g) = all.get_mut(&tenant).filter(|g| g.models.get(&id).is_some()) else {
                    return Ok(Err(TwinError::NotFound(format!("model {id} not found"))));
                };
                let body = g
                    .models
                    .get(&id)
                    .map(|i| i.source.to_string())
                    .unwrap_or_default();
                let info = g.model_info.entry(id.clone()).or_insert(ModelInfo {
                    uploaded_at: 0,
                    decommissioned: false,
                });
                rows::put_model(
                    ctx.tx,
                    &rows::ModelRow {
                        tenant: tenant.clone(),
                        id: id.to_string(),
                        body,
                        decommissioned: flag,
                        uploaded_at: info.uploaded_at,
                    },
                )?;
                let was = info.decommissioned;
                info.decommissioned = flag;
                let i2 = id.clone();
                me.undo_on_rollback(ctx, &tenant, move |g| {
                    if let Some(i) = g.model_info.get_mut(&i2) {
                        i.decommissioned = was;
                    }
                });
                Ok(Ok(()))
            })
            .await?
    }

    /// Deletes a model nothing uses (no twins, no other model refers to it).
    pub async fn delete_model(self: &Arc<Self>, tenant: &str, id: &Dtmi) -> Result<(), TwinError> {
        let (me, tenant, id) = (self.clone(), tenant.to_string(), id.clone());
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let Some(g) = all.get_mut(&tenant).filter(|g| g.models.get(&id).is_some()) else {
                    return Ok(Err(TwinError::NotFound(format!("model {id} not found"))));
                };
                if g.model_in_use(&id) {
                    return Ok(Err(TwinError::Conflict(format!(
                        "model {id} is used by twins; delete or re-model them first"
                    ))));
                }
                let deps = g.models.dependents(&id);
                if !deps.is_empty() {
                    let names: Vec<String> = deps.iter().map(|d| d.to_string()).collect();
                    return Ok(Err(TwinError::Conflict(format!(
                        "model {id} is used by {}",
                        names.join(", ")
                    ))));
                }
                rows::delete_model(ctx.tx, &tenant, id.as_str())?;
                let smaller = g.models.without(&id);
                let old = std::mem::replace(&mut g.models, smaller);
                let info = g.model_info.remove(&id);
                let i2 = id.clone();
                me.undo_on_rollback(ctx, &tenant, move |g| {
                    g.models = old;
                    if let Some(info) = info {
                        g.model_info.insert(i2, info);
                    }
                });
                Ok(Ok(()))
            })
            .await?
    }

    /// Creates or replaces a twin; true when it was created.
    pub async fn put_twin(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        body: Value,
        cond: Cond,
    ) -> Result<(Twin, bool), TwinError> {
        let Value::Object(body) = body else {
            return Err(TwinError::BadRequest(
                "body: a twin is a JSON object".into(),
            ));
        };
        if body.get("$dtId").is_some_and(|d| d != id) {
            return Err(TwinError::BadRequest(
                "$dtId: must match the id in the path".into(),
            ));
        }
        let model = body
            .get("$metadata")
            .and_then(|m| m.get("$model"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                TwinError::BadRequest("$metadata.$model: is required (the twin's model id)".into())
            })?;
        let model = Dtmi::parse(model).map_err(|r| invalid("$metadata.$model", r))?;
        if Value::Object(body.clone()).to_string().len() > MAX_TWIN_BYTES {
            return Err(invalid(
                "body",
                format!("a twin may be at most {MAX_TWIN_BYTES} bytes"),
            ));
        }
        let props = content_of(&body);
        let (me, tenant, id) = (self.clone(), tenant.to_string(), id.to_string());
        let now = self.now();
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let g = all.entry(tenant.clone()).or_default();
                let Some(r) = g.models.resolved(&model).cloned() else {
                    return Ok(Err(invalid(
                        "$metadata.$model",
                        format!("model {model} has not been uploaded"),
                    )));
                };
                let existing = g.twins.get(id.as_str()).cloned();
                if existing.is_none() && g.model_info.get(&model).is_some_and(|i| i.decommissioned)
                {
                    return Ok(Err(invalid(
                        "$metadata.$model",
                        format!("model {model} is decommissioned"),
                    )));
                }
                if let Err(e) = cond.check(existing.as_ref().map(|t| t.etag.as_str())) {
                    return Ok(Err(e));
                }
                if let Err(e) = g.models.check_twin(&model, &props, "") {
                    return Ok(Err(invalid(e.element, e.rule)));
                }
                let empty = Map::new();
                let (old_props, old_meta) = existing
                    .as_ref()
                    .map(|t| (&t.props, &t.meta))
                    .unwrap_or((&empty, &empty));
                let meta = super::ops::metadata(old_props, old_meta, &props, &r.components, &now);
                let twin = Twin {
                    id: id.as_str().into(),
                    model: model.clone(),
                    etag: etag(),
                    props: props.clone(),
                    meta,
                };
                rows::put_twin(ctx.tx, &super::ops::twin_row(&tenant, &twin))?;
                let old = g.put_twin(twin.clone());
                let created = old.is_none();
                let id2 = id.clone();
                me.undo_on_rollback(ctx, &tenant, move |g| match old {
                    Some(o) => {
                        g.put_twin(o);
                    }
                    None => {
                        g.remove_twin(&id2);
                    }
                });
                let op = if created { "create" } else { "replace" };
                ctx.emit(twin_changed(
                    &tenant,
                    &id,
                    &model.to_string(),
                    json!({"op": op, "content": Value::Object(props)}),
                ));
                Ok(Ok((twin, created)))
            })
            .await?
    }

    /// Applies a JSON Patch to a twin's properties (and `$metadata.$model`).
    /// Applies a JSON Patch; `also` writes in the same transaction (the
    /// caller's audit entry), so the change and it commit together.
    pub async fn patch_twin(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        patch: Value,
        cond: Cond,
        also: Option<crate::store::AlsoWrite>,
    ) -> Result<Twin, TwinError> {
        let ops = parse_patch(&patch).map_err(|e| TwinError::BadRequest(e.to_string()))?;
        for (i, op) in ops.iter().enumerate() {
            let p = op.path();
            if p.starts_with("/$") && p != "/$metadata/$model" {
                return Err(invalid(
                    format!("[{i}].path"),
                    "only properties and /$metadata/$model can be patched",
                ));
            }
            if let PatchOp::Move { from, .. } | PatchOp::Copy { from, .. } = op {
                if from.starts_with("/$") {
                    return Err(invalid(
                        format!("[{i}].from"),
                        "only properties can be moved or copied",
                    ));
                }
            }
        }
        let (me, tenant, id) = (self.clone(), tenant.to_string(), id.to_string());
        let now = self.now();
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let g = all.entry(tenant.clone()).or_default();
                let Some(current) = g.twins.get(id.as_str()).cloned() else {
                    return Ok(Err(TwinError::NotFound(format!("twin {id} not found"))));
                };
                if let Err(e) = cond.check(Some(&current.etag)) {
                    return Ok(Err(e));
                }
                let mut doc = Value::Object(current.props.clone());
                doc["$metadata"] = json!({"$model": current.model.as_str()});
                if let Err(e) = apply(&mut doc, &ops) {
                    return Ok(Err(invalid(e.at, e.rule)));
                }
                let model = match doc
                    .pointer("/$metadata/$model")
                    .and_then(Value::as_str)
                    .map(Dtmi::parse)
                {
                    Some(Ok(m)) => m,
                    _ => return Ok(Err(invalid("$metadata.$model", "must remain a model id"))),
                };
                let Some(r) = g.models.resolved(&model).cloned() else {
                    return Ok(Err(invalid(
                        "$metadata.$model",
                        format!("model {model} has not been uploaded"),
                    )));
                };
                let props = content_of(doc.as_object().expect("patched twin stays an object"));
                if let Err(e) = g.models.check_twin(&model, &props, "") {
                    return Ok(Err(invalid(e.element, e.rule)));
                }
                if Value::Object(props.clone()).to_string().len() > MAX_TWIN_BYTES {
                    return Ok(Err(invalid(
                        "body",
                        format!("a twin may be at most {MAX_TWIN_BYTES} bytes"),
                    )));
                }
                let meta = super::ops::metadata(
                    &current.props,
                    &current.meta,
                    &props,
                    &r.components,
                    &now,
                );
                let twin = Twin {
                    id: current.id.clone(),
                    model: model.clone(),
                    etag: etag(),
                    props,
                    meta,
                };
                rows::put_twin(ctx.tx, &super::ops::twin_row(&tenant, &twin))?;
                g.put_twin(twin.clone());
                me.undo_on_rollback(ctx, &tenant, move |g| {
                    g.put_twin(current);
                });
                ctx.emit(twin_changed(
                    &tenant,
                    &id,
                    &model.to_string(),
                    json!({"op": "update", "patch": patch}),
                ));
                if let Some(also) = also {
                    also(ctx)?;
                }
                Ok(Ok(twin))
            })
            .await?
    }

    pub async fn delete_twin(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        cond: Cond,
    ) -> Result<(), TwinError> {
        let (me, tenant, id) = (self.clone(), tenant.to_string(), id.to_string());
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let g = all.entry(tenant.clone()).or_default();
                let Some(current) = g.twins.get(id.as_str()).cloned() else {
                    return Ok(Err(TwinError::NotFound(format!("twin {id} not found"))));
                };
                if let Err(e) = cond.check(Some(&current.etag)) {
                    return Ok(Err(e));
                }
                let n = g.outgoing(&id).count() + g.incoming_of(&id).count();
                if n > 0 {
                    return Ok(Err(TwinError::Conflict(format!(
                        "twin {id} has {n} relationship(s); delete them first"
                    ))));
                }
                rows::delete_twin(ctx.tx, &tenant, &id)?;
                g.remove_twin(&id);
                let (m2, t2) = (me.clone(), tenant.clone());
                let model = current.model.to_string();
                ctx.on_rollback(move |_| {
                    if let Some(g) = m2.tenants.write().expect("twins").get_mut(&t2) {
                        g.put_twin(current);
                    }
                });
                ctx.emit(twin_changed(&tenant, &id, &model, json!({"op": "delete"})));
                Ok(Ok(()))
            })
            .await?
    }

    /// Creates or replaces a relationship; true when created.
    pub async fn put_relationship(
        self: &Arc<Self>,
        tenant: &str,
        source: &str,
        rel_id: &str,
        body: Value,
        cond: Cond,
    ) -> Result<(Rel, bool), TwinError> {
        let Value::Object(body) = body else {
            return Err(TwinError::BadRequest(
                "body: a relationship is a JSON object".into(),
            ));
        };
        let name = body
            .get("$relationshipName")
            .and_then(Value::as_str)
            .ok_or_else(|| TwinError::BadRequest("$relationshipName: is required".into()))?
            .to_string();
        let target = body
            .get("$targetId")
            .and_then(Value::as_str)
            .ok_or_else(|| TwinError::BadRequest("$targetId: is required".into()))?
            .to_string();
        if body.get("$relationshipId").is_some_and(|r| r != rel_id) {
            return Err(TwinError::BadRequest(
                "$relationshipId: must match the id in the path".into(),
            ));
        }
        if body.get("$sourceId").is_some_and(|s| s != source) {
            return Err(TwinError::BadRequest(
                "$sourceId: must match the twin in the path".into(),
            ));
        }
        let props: Map<String, Value> = body
            .into_iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .collect();
        let (me, tenant, source, rel_id) = (
            self.clone(),
            tenant.to_string(),
            source.to_string(),
            rel_id.to_string(),
        );
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let g = all.entry(tenant.clone()).or_default();
                let Some(src) = g.twins.get(source.as_str()) else {
                    return Ok(Err(TwinError::NotFound(format!("twin {source} not found"))));
                };
                let Some(tgt) = g.twins.get(target.as_str()) else {
                    return Ok(Err(invalid(
                        "$targetId",
                        format!("twin {target} does not exist"),
                    )));
                };
                let Some(def) = g
                    .models
                    .resolved(&src.model)
                    .and_then(|r| r.relationships.get(&name))
                    .cloned()
                else {
                    return Ok(Err(invalid(
                        "$relationshipName",
                        format!("{} has no relationship named {name}", src.model),
                    )));
                };
                if let Some(t) = &def.target {
                    if !g.models.is_a(&tgt.model, t) {
                        return Ok(Err(invalid(
                            "$targetId",
                            format!("{target} is a {}, but {name} must target {t}", tgt.model),
                        )));
                    }
                }
                let existing = g.rel(&source, &rel_id).cloned();
                if let Err(e) = cond.check(existing.as_ref().map(|r| r.etag.as_str())) {
                    return Ok(Err(e));
                }
                let same_name = g
                    .outgoing(&source)
                    .filter(|r| r.name == name && r.id != rel_id)
                    .count();
                if let Some(max) = def.max {
                    if same_name as u64 + 1 > max {
                        return Ok(Err(invalid(
                            "$relationshipName",
                            format!("{name} allows at most {max} relationship(s) per twin"),
                        )));
                    }
                }
                if existing.is_none() && g.outgoing(&source).count() >= MAX_RELATIONSHIPS_PER_TWIN {
                    return Ok(Err(invalid(
                        "$relationshipId",
                        format!(
                            "a twin may have at most {MAX_RELATIONSHIPS_PER_TWIN} relationships"
                        ),
                    )));
                }
                for (k, v) in &props {
                    let Some(schema) = def.properties.get(k) else {
                        return Ok(Err(invalid(
                            k.clone(),
                            format!("is not a property of relationship {name}"),
                        )));
                    };
                    if let Err(e) = check_value(&g.models, schema, v, k) {
                        return Ok(Err(invalid(e.path, e.rule)));
                    }
                }
                let rel = Rel {
                    id: rel_id.clone(),
                    source: src.id.clone(),
                    name,
                    target: tgt.id.clone(),
                    etag: etag(),
                    props,
                };
                rows::put_relationship(ctx.tx, &super::ops::rel_row(&tenant, &rel))?;
                let old = g.put_rel(rel.clone());
                let created = old.is_none();
                let s2 = source.clone();
                let r2 = rel_id.clone();
                me.undo_on_rollback(ctx, &tenant, move |g| {
                    g.remove_rel(&s2, &r2);
                    if let Some(o) = old {
                        g.put_rel(o);
                    }
                });
                let op = if created { "create" } else { "replace" };
                ctx.emit(Draft::new(
                    &tenant,
                    Kind::Relationship,
                    Some(&source),
                    None,
                    json!({"op": op, "relationship": rel.doc()}),
                ));
                Ok(Ok((rel, created)))
            })
            .await?
    }

    pub async fn patch_relationship(
        self: &Arc<Self>,
        tenant: &str,
        source: &str,
        rel_id: &str,
        patch: Value,
        cond: Cond,
    ) -> Result<Rel, TwinError> {
        let ops = parse_patch(&patch).map_err(|e| TwinError::BadRequest(e.to_string()))?;
        if let Some((i, _)) = ops
            .iter()
            .enumerate()
            .find(|(_, o)| o.path().starts_with("/$"))
        {
            return Err(invalid(
                format!("[{i}].path"),
                "only relationship properties can be patched",
            ));
        }
        let current = self
            .read(tenant, |g| g.rel(source, rel_id).cloned())
            .ok_or_else(|| {
                TwinError::NotFound(format!("relationship {rel_id} of {source} not found"))
            })?;
        let mut doc = Value::Object(current.props.clone());
        apply(&mut doc, &ops).map_err(|e| invalid(e.at, e.rule))?;
        let mut body = doc.as_object().cloned().unwrap_or_default();
        body.insert("$relationshipName".into(), json!(current.name));
        body.insert("$targetId".into(), json!(current.target.to_string()));
        let cond = Cond {
            if_match: cond.if_match.or(Some(current.etag.clone())),
            if_none_match_any: false,
        };
        self.put_relationship(tenant, source, rel_id, Value::Object(body), cond)
            .await
            .map(|(r, _)| r)
    }

    pub async fn delete_relationship(
        self: &Arc<Self>,
        tenant: &str,
        source: &str,
        rel_id: &str,
        cond: Cond,
    ) -> Result<(), TwinError> {
        let (me, tenant, source, rel_id) = (
            self.clone(),
            tenant.to_string(),
            source.to_string(),
            rel_id.to_string(),
        );
        self.store
            .write(move |ctx| {
                let mut all = me.tenants.write().expect("twins");
                let g = all.entry(tenant.clone()).or_default();
                let Some(current) = g.rel(&source, &rel_id).cloned() else {
                    return Ok(Err(TwinError::NotFound(format!(
                        "relationship {rel_id} of {source} not found"
                    ))));
                };
                if let Err(e) = cond.check(Some(&current.etag)) {
                    return Ok(Err(e));
                }
                rows::delete_relationship(ctx.tx, &tenant, &source, &rel_id)?;
                g.remove_rel(&source, &rel_id);
                let doc = current.doc();
                me.undo_on_rollback(ctx, &tenant, move |g| {
                    g.put_rel(current);
                });
                ctx.emit(Draft::new(
                    &tenant,
                    Kind::Relationship,
                    Some(&source),
                    None,
                    json!({"op": "delete", "relationship": doc}),
                ));
                Ok(Ok(()))
            })
            .await?
    }
}

impl TwinGraphs {
    /// Registers the undo of a change made eagerly to a tenant's graph
    /// inside the writer's transaction (so later writes of the same group
    /// see it), run if the commit fails.
    fn undo_on_rollback(
        self: &Arc<Self>,
        ctx: &mut crate::store::WriteCtx<'_>,
        tenant: &str,
        undo: impl FnOnce(&mut super::TenantGraph) + Send + 'static,
    ) {
        let (me, tenant) = (self.clone(), tenant.to_string());
        ctx.on_rollback(move |_| {
            if let Some(g) = me.tenants.write().expect("twins").get_mut(&tenant) {
                undo(g);
            }
        });
    }
}
