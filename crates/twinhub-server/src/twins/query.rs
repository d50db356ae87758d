//! The query evaluator's view of one tenant's graph: candidate twins from
//! the indexes, documents with live telemetry merged in.

use super::graph::TenantGraph;
use super::TwinGraphs;
use serde_json::Value;
use std::sync::Arc;
use twinhub_model::dtdl::Dtmi;
use twinhub_model::query::{execute, Graph, Hint, Page, Query, QueryError};
use twinhub_model::Point;

struct View<'a, L: Fn(&str) -> Vec<(String, Point)>> {
    g: &'a TenantGraph,
    live: L,
}

impl<L: Fn(&str) -> Vec<(String, Point)>> Graph for View<'_, L> {
    fn twin_ids(&self) -> Vec<Arc<str>> {
        self.g.twins.keys().cloned().collect()
    }

    fn twin(&self, id: &str) -> Option<Value> {
        let t = self.g.twins.get(id)?;
        Some(TwinGraphs::render(Some(t), id, &(self.live)(id)))
    }

    fn candidates(&self, hint: &Hint) -> Option<Vec<Arc<str>>> {
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

    fn outgoing(&self, source: &str, name: &str) -> Vec<Value> {
        self.g
            .outgoing(source)
            .filter(|r| r.name == name)
            .map(|r| r.doc())
            .collect()
    }

    fn relationships(&self, source: Option<&str>) -> Vec<Value> {
        match source {
            Some(s) => self.g.outgoing(s).map(|r| r.doc()).collect(),
            None => {
                let mut sources: Vec<&Arc<str>> = self.g.out.keys().collect();
                sources.sort();
                sources
                    .into_iter()
                    .flat_map(|s| self.g.outgoing(s))
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

impl TwinGraphs {
    /// Runs a parsed query in a tenant; `live` gives a twin's telemetry.
    pub fn query(
        &self,
        tenant: &str,
        q: &Query,
        offset: usize,
        page: usize,
        live: impl Fn(&str) -> Vec<(String, Point)>,
    ) -> Result<Page, QueryError> {
        self.read(tenant, |g| execute(q, &View { g, live }, offset, page))
    }
}
