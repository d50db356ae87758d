//! The query evaluator's view of one tenant's graph: candidate twins from
//! the indexes, documents with live telemetry merged in.

use super::graph::TenantGraph;
use super::TwinGraphs;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use twinhub_model::dtdl::Dtmi;
use twinhub_model::query::{execute, Graph, Hint, Page, Query, QueryError};
use twinhub_model::Point;

/// Subtrees a scoped caller may see: `(root, relationship names)`.
pub type Scope = [(String, Vec<String>)];

struct View<'a, L: Fn(&str) -> Vec<(String, Point)>> {
    g: &'a TenantGraph,
    live: L,
    /// The twins a scoped caller sees; the query sees no others, so
    /// aggregates and pages count only these.
    visible: Option<HashSet<Arc<str>>>,
}

impl<L: Fn(&str) -> Vec<(String, Point)>> View<'_, L> {
    fn sees(&self, id: &str) -> bool {
        self.visible.as_ref().is_none_or(|v| v.contains(id))
    }
}

impl<L: Fn(&str) -> Vec<(String, Point)>> Graph for View<'_, L> {
    fn twin_ids(&self) -> Vec<Arc<str>> {
        match &self.visible {
            // Kept in the graph's order, so pages are stable.
            Some(v) => self
                .g
                .twins
                .keys()
                .filter(|k| v.contains(&***k))
                .cloned()
                .collect(),
            None => self.g.twins.keys().cloned().collect(),
        }
    }

    fn twin(&self, id: &str) -> Option<Value> {
        if !self.sees(id) {
            return None;
        }
        let t = self.g.twins.get(id)?;
        Some(TwinGraphs::render(Some(t), id, &(self.live)(id)))
    }

    fn candidates(&self, hint: &Hint) -> Option<Vec<Arc<str>>> {
        let mut c = self.candidates_unscoped(hint)?;
        c.retain(|id| self.sees(id));
        Some(c)
    }

    fn outgoing(&self, source: &str, name: &str) -> Vec<Value> {
        self.g
            .outgoing(source)
            .filter(|r| r.name == name && self.sees(&r.source) && self.sees(&r.target))
            .map(|r| r.doc())
            .collect()
    }

    fn relationships(&self, source: Option<&str>) -> Vec<Value> {
        match source {
            Some(s) => self
                .g
                .outgoing(s)
                .filter(|r| self.sees(&r.source) && self.sees(&r.target))
                .map(|r| r.doc())
                .collect(),
            None => {
                let mut sources: Vec<&Arc<str>> =
                    self.g.out.keys().filter(|s| self.sees(s)).collect();
                sources.sort();
                sources
                    .into_iter()
                    .flat_map(|s| self.g.outgoing(s))
                    .filter(|r| self.sees(&r.target))
                    .map(|r| r.doc())
                    .collect()
            }
        }
    }

    fn is_of_model(&self, model: &str, base: &str, exact: bool) -> bool {
        if model == base {
            return true;
        }
        !exact
            && matches!((Dtmi::parse(model), Dtmi::parse(base)), (Ok(m), Ok(b)) if self.g.models.is_a(&m, &b))
    }
}

impl<L: Fn(&str) -> Vec<(String, Point)>> View<'_, L> {
    fn candidates_unscoped(&self, hint: &Hint) -> Option<Vec<Arc<str>>> {
        match hint {
            Hint::Id(id) => Some(
                self.g
                    .twins
                    .get_key_value(id.as_str())
                    .map(|(k, _)| k.clone())
                    .into_iter()
                    .collect(),
            ),
            Hint::Model(m, exact) => Some(
                Dtmi::parse(m)
                    .map(|m| self.g.twins_of_model(&m, *exact))
                    .unwrap_or_default(),
            ),
            Hint::Prop(p, v) => self.g.twins_with(p, v),
        }
    }
}

impl TwinGraphs {
    /// Runs a parsed query in a tenant; `live` gives a twin's telemetry.
    /// With a `scope`, the query sees only the twins under its roots.
    pub fn query(
        &self,
        tenant: &str,
        q: &Query,
        offset: usize,
        page: usize,
        scope: Option<&Scope>,
        live: impl Fn(&str) -> Vec<(String, Point)>,
    ) -> Result<Page, QueryError> {
        self.read(tenant, |g| {
            let visible = scope.map(|roots| {
                let mut v = HashSet::new();
                for (root, rels) in roots {
                    g.subtree(root, rels, &mut v);
                }
                v
            });
            execute(q, &View { g, live, visible }, offset, page)
        })
    }
}
