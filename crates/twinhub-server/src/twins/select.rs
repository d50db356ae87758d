//! Which twins something applies to — a soft-sensor binding, a rule: one
//! twin by id, every twin of a DTDL model (`IS_OF_MODEL`: extending models
//! included), or the twins a query returns (membership re-evaluated as the
//! graph changes).

use super::TwinGraphs;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Select {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<String>,
    /// Every twin of this DTDL model (and models extending it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The twins a query returns (`SELECT T FROM DIGITALTWINS T WHERE …`),
    /// re-evaluated as the graph changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl Select {
    /// Checks the selection; for a query, the twins it selects now. Errors
    /// are (field, rule).
    pub fn check(
        &self,
        tenant: &str,
        twins: &TwinGraphs,
        store: &Store,
    ) -> Result<Option<HashSet<String>>, (&'static str, String)> {
        let given = [
            self.twin.is_some(),
            self.model.is_some(),
            self.query.is_some(),
        ];
        if given.iter().filter(|x| **x).count() != 1 {
            return Err(("select", "give exactly one of twin, model or query".into()));
        }
        if let Some(dtmi) = &self.model {
            twinhub_model::dtdl::Dtmi::parse(dtmi)
                .map_err(|rule| ("select.model", rule.to_string()))?;
        }
        match &self.query {
            Some(q) => Ok(Some(
                query_members(tenant, q, twins, store).map_err(|rule| ("select.query", rule))?,
            )),
            None => Ok(None),
        }
    }

    /// Whether `twin` is selected; `members` are a query's twins.
    pub fn matches(
        &self,
        tenant: &str,
        twin: &str,
        twins: &TwinGraphs,
        members: Option<&HashSet<String>>,
    ) -> bool {
        if self.query.is_some() {
            return members.is_some_and(|m| m.contains(twin));
        }
        match (&self.twin, &self.model) {
            (Some(t), _) => t == twin,
            (_, Some(dtmi)) => twins.read(tenant, |g| {
                let (Some(tw), Ok(want)) =
                    (g.twins.get(twin), twinhub_model::dtdl::Dtmi::parse(dtmi))
                else {
                    return false;
                };
                tw.model == want || g.models.is_a(&tw.model, &want)
            }),
            _ => false,
        }
    }

    /// Every twin selected now.
    pub fn twins_now(
        &self,
        tenant: &str,
        twins: &TwinGraphs,
        members: Option<&HashSet<String>>,
    ) -> Vec<String> {
        if self.query.is_some() {
            return members
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default();
        }
        if let Some(t) = &self.twin {
            return vec![t.clone()];
        }
        let Some(Ok(want)) = self.model.as_deref().map(twinhub_model::dtdl::Dtmi::parse) else {
            return Vec::new();
        };
        twins.read(tenant, |g| {
            g.twins_of_model(&want, false)
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    }
}

/// The twin ids a query returns.
pub fn query_members(
    tenant: &str,
    q: &str,
    twins: &TwinGraphs,
    store: &Store,
) -> Result<HashSet<String>, String> {
    let parsed = twinhub_model::query::parse(q).map_err(|e| e.to_string())?;
    let page = twins
        .query(tenant, &parsed, 0, 1_000_000, None, |id| {
            store.latest_of_twin(tenant, id)
        })
        .map_err(|e| e.0)?;
    let mut out = HashSet::new();
    for row in &page.items {
        let id = row.get("$dtId").or_else(|| {
            row.as_object()
                .and_then(|o| o.values().find_map(|v| v.get("$dtId")))
        });
        match id.and_then(|v| v.as_str()) {
            Some(id) => {
                out.insert(id.to_string());
            }
            None => return Err("must return twins (SELECT T FROM DIGITALTWINS T …)".into()),
        }
    }
    Ok(out)
}
