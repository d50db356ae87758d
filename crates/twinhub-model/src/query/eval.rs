//! Query evaluation over a `Graph` of twins and relationships: candidate
//! twins come from an index when the filter allows (id, model, property
//! value), JOINs follow relationships, rows are filtered, counted, paged
//! and projected in the shapes Azure Digital Twins uses.

use super::parser::{CmpOp, Expr, Operand, Path, Query, Select, Source};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// What the evaluator needs from the twin store of one tenant.
pub trait Graph {
    /// Every twin id, sorted.
    fn twin_ids(&self) -> Vec<Arc<str>>;
    /// The twin as the API shows it (live telemetry included).
    fn twin(&self, id: &str) -> Option<Value>;
    /// Twin ids satisfying the hint, sorted; None when not indexed.
    fn candidates(&self, hint: &Hint) -> Option<Vec<Arc<str>>>;
    /// Relationships of a source twin with this name, as the API shows them.
    fn outgoing(&self, source: &str, name: &str) -> Vec<Value>;
    /// All relationships (of one source when given), sorted.
    fn relationships(&self, source: Option<&str>) -> Vec<Value>;
    /// The twin's model is `base` (or, unless exact, extends it).
    fn is_of_model(&self, model: &str, base: &str, exact: bool) -> bool;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Hint {
    Id(String),
    Model(String, bool),
    Prop(String, Value),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct QueryError(pub String);

#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    /// Offset of the next page, when there is one.
    pub next: Option<usize>,
}

type Row = Vec<(String, Value)>;

struct Ctx<'a> {
    g: &'a dyn Graph,
    aliases: Vec<String>,
    root: String,
}

impl Ctx<'_> {
    /// (alias, steps) of a path: the first step names an alias unless the
    /// query has a single unnamed source.
    fn split<'p>(&self, p: &'p Path) -> Result<(String, &'p [String]), QueryError> {
        if self.aliases.iter().any(|a| a == &p.steps[0]) {
            return Ok((p.steps[0].clone(), &p.steps[1..]));
        }
        if self.root.is_empty() {
            return Ok((String::new(), &p.steps[..]));
        }
        Err(QueryError(format!(
            "'{}' is not an alias of this query (aliases: {})",
            p.steps[0],
            self.aliases.join(", ")
        )))
    }

    fn resolve(&self, row: &Row, p: &Path) -> Result<Option<Value>, QueryError> {
        let (alias, steps) = self.split(p)?;
        let Some((_, doc)) = row.iter().find(|(a, _)| *a == alias) else {
            return Ok(None);
        };
        let mut cur = doc;
        for s in steps {
            match cur.get(s) {
                Some(v) => cur = v,
                None => return Ok(None),
            }
        }
        Ok(Some(cur.clone()))
    }

    fn operand(&self, row: &Row, o: &Operand) -> Result<Option<Value>, QueryError> {
        match o {
            Operand::Lit(v) => Ok(Some(v.clone())),
            Operand::Path(p) => self.resolve(row, p),
        }
    }

    fn eval(&self, row: &Row, e: &Expr) -> Result<bool, QueryError> {
        Ok(match e {
            Expr::And(a, b) => self.eval(row, a)? && self.eval(row, b)?,
            Expr::Or(a, b) => self.eval(row, a)? || self.eval(row, b)?,
            Expr::Not(a) => !self.eval(row, a)?,
            Expr::Cmp(l, op, r) => match (self.operand(row, l)?, self.operand(row, r)?) {
                (Some(a), Some(b)) => compare(&a, *op, &b),
                _ => false,
            },
            Expr::In(l, list, negate) => match self.operand(row, l)? {
                Some(v) => list.iter().any(|x| compare(&v, CmpOp::Eq, x)) != *negate,
                None => false,
            },
            Expr::Func(f, args) => self.func(row, f, args)?,
        })
    }

    fn func(&self, row: &Row, f: &str, args: &[Operand]) -> Result<bool, QueryError> {
        if f == "IS_OF_MODEL" {
            let (target, model, exact) = self.model_args(args)?;
            let doc = row.iter().find(|(a, _)| *a == target).map(|(_, d)| d);
            let twin_model = doc
                .and_then(|d| d.pointer("/$metadata/$model"))
                .and_then(Value::as_str);
            return Ok(twin_model.is_some_and(|m| self.g.is_of_model(m, &model, exact)));
        }
        let arg = |i: usize| -> Result<Option<Value>, QueryError> {
            args.get(i)
                .map(|a| self.operand(row, a))
                .transpose()
                .map(Option::flatten)
        };
        let need = |n: usize| -> Result<(), QueryError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(QueryError(format!(
                    "{f} takes {n} argument{}",
                    if n == 1 { "" } else { "s" }
                )))
            }
        };
        Ok(match f {
            "IS_DEFINED" => {
                need(1)?;
                arg(0)?.is_some()
            }
            "IS_NULL" => {
                need(1)?;
                matches!(arg(0)?, Some(Value::Null))
            }
            "IS_BOOL" => {
                need(1)?;
                matches!(arg(0)?, Some(Value::Bool(_)))
            }
            "IS_NUMBER" => {
                need(1)?;
                matches!(arg(0)?, Some(Value::Number(_)))
            }
            "IS_STRING" => {
                need(1)?;
                matches!(arg(0)?, Some(Value::String(_)))
            }
            "IS_OBJECT" => {
                need(1)?;
                matches!(arg(0)?, Some(Value::Object(_)))
            }
            "IS_PRIMITIVE" => {
                need(1)?;
                matches!(
                    arg(0)?,
                    Some(Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))
                )
            }
            "STARTSWITH" | "ENDSWITH" | "CONTAINS" => {
                need(2)?;
                match (arg(0)?, arg(1)?) {
                    (Some(Value::String(s)), Some(Value::String(x))) => match f {
                        "STARTSWITH" => s.starts_with(&x),
                        "ENDSWITH" => s.ends_with(&x),
                        _ => s.contains(&x),
                    },
                    _ => false,
                }
            }
            _ => return Err(QueryError(format!("unknown function {f}"))),
        })
    }

    /// IS_OF_MODEL([alias,] 'dtmi' [, exact]).
    fn model_args(&self, args: &[Operand]) -> Result<(String, String, bool), QueryError> {
        let mut it = args.iter().peekable();
        let target = match it.peek() {
            Some(Operand::Path(p)) if p.steps.len() == 1 && self.aliases.contains(&p.steps[0]) => {
                it.next();
                p.steps[0].clone()
            }
            _ if self.root.is_empty() => String::new(),
            _ => self.root.clone(),
        };
        let model = match it.next() {
            Some(Operand::Lit(Value::String(m))) => m.clone(),
            _ => return Err(QueryError(
                "IS_OF_MODEL needs a model id string, e.g. IS_OF_MODEL(T, 'dtmi:example:Room;1')"
                    .into(),
            )),
        };
        let exact = match it.next() {
            None => false,
            Some(Operand::Path(p))
                if p.steps.len() == 1 && p.steps[0].eq_ignore_ascii_case("exact") =>
            {
                true
            }
            _ => {
                return Err(QueryError(
                    "the third argument of IS_OF_MODEL can only be exact".into(),
                ))
            }
        };
        Ok((target, model, exact))
    }
}

fn compare(a: &Value, op: CmpOp, b: &Value) -> bool {
    use std::cmp::Ordering::*;
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .zip(y.as_f64())
            .and_then(|(x, y)| x.partial_cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Equal),
        _ => None,
    };
    match (op, ord) {
        (CmpOp::Eq, Some(o)) => o == Equal,
        (CmpOp::Ne, Some(o)) => o != Equal,
        (CmpOp::Ne, None) => a != b && !a.is_null() && !b.is_null(),
        (CmpOp::Lt, Some(o)) => o == Less,
        (CmpOp::Le, Some(o)) => o != Greater,
        (CmpOp::Gt, Some(o)) => o == Greater,
        (CmpOp::Ge, Some(o)) => o != Less,
        _ => false,
    }
}

/// Conjuncts of the filter that an index can answer for the root alias.
fn hints(ctx: &Ctx<'_>, e: &Expr, out: &mut Vec<Hint>) {
    match e {
        Expr::And(a, b) => {
            hints(ctx, a, out);
            hints(ctx, b, out);
        }
        Expr::Cmp(Operand::Path(p), CmpOp::Eq, Operand::Lit(v))
        | Expr::Cmp(Operand::Lit(v), CmpOp::Eq, Operand::Path(p)) => {
            if let Ok((alias, steps)) = ctx.split(p) {
                if alias == ctx.root && steps.len() == 1 {
                    if steps[0] == "$dtId" {
                        if let Value::String(s) = v {
                            out.push(Hint::Id(s.clone()));
                        }
                    } else if !v.is_object() && !v.is_array() {
                        out.push(Hint::Prop(steps[0].clone(), v.clone()));
                    }
                }
            }
        }
        Expr::Func(f, args) if f == "IS_OF_MODEL" => {
            if let Ok((target, model, exact)) = ctx.model_args(args) {
                if target == ctx.root {
                    out.push(Hint::Model(model, exact));
                }
            }
        }
        _ => {}
    }
}

/// Runs a query; `offset` rows are skipped and at most `page` returned.
pub fn execute(q: &Query, g: &dyn Graph, offset: usize, page: usize) -> Result<Page, QueryError> {
    let root = q.alias.clone().unwrap_or_default();
    let mut aliases: Vec<String> = q.alias.iter().cloned().collect();
    for j in &q.joins {
        if q.alias.is_none() {
            return Err(QueryError(
                "JOIN needs an alias for the FROM collection (FROM DIGITALTWINS T JOIN …)".into(),
            ));
        }
        for a in std::iter::once(&j.target).chain(j.rel_alias.iter()) {
            if aliases.contains(a) {
                return Err(QueryError(format!("alias '{a}' is used twice")));
            }
            aliases.push(a.clone());
        }
        if !aliases.contains(&j.source) {
            return Err(QueryError(format!(
                "JOIN follows '{}', which is not an alias of this query",
                j.source
            )));
        }
    }
    let ctx = Ctx {
        g,
        aliases,
        root: root.clone(),
    };
    // Validate paths and functions once, on an empty row.
    if let Some(f) = &q.filter {
        ctx.eval(&Vec::new(), f)?;
    }
    if let Select::Items(items) = &q.select {
        for (p, _) in items {
            ctx.split(p)?;
        }
    }
    let mut rows_seen = 0usize;
    let mut items = Vec::new();
    let mut count = 0usize;
    let limit = q.top.unwrap_or(usize::MAX);
    let mut more = false;
    let mut visit = |row: &Row| -> Result<bool, QueryError> {
        if let Some(f) = &q.filter {
            if !ctx.eval(row, f)? {
                return Ok(true);
            }
        }
        if count >= limit {
            return Ok(false);
        }
        count += 1;
        if matches!(q.select, Select::Count) {
            return Ok(true);
        }
        rows_seen += 1;
        if rows_seen <= offset {
            return Ok(true);
        }
        if items.len() >= page {
            more = true;
            return Ok(false);
        }
        items.push(project(&ctx, q, row)?);
        Ok(true)
    };
    match q.source {
        Source::Relationships => {
            let source = q.filter.as_ref().and_then(|f| relationship_source(&ctx, f));
            for r in g.relationships(source.as_deref()) {
                if !visit(&vec![(root.clone(), r)])? {
                    break;
                }
            }
        }
        Source::Twins => {
            let mut hs = Vec::new();
            if let Some(f) = &q.filter {
                hints(&ctx, f, &mut hs);
            }
            hs.sort_by_key(|h| match h {
                Hint::Id(_) => 0,
                Hint::Prop(..) => 1,
                Hint::Model(..) => 2,
            });
            let ids = hs
                .iter()
                .find_map(|h| g.candidates(h))
                .unwrap_or_else(|| g.twin_ids());
            'outer: for id in ids {
                let Some(doc) = g.twin(&id) else { continue };
                let mut rows = vec![vec![(root.clone(), doc)]];
                for j in &q.joins {
                    let mut next = Vec::new();
                    for row in rows {
                        let src = row
                            .iter()
                            .find(|(a, _)| *a == j.source)
                            .and_then(|(_, d)| d.get("$dtId"))
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        let Some(src) = src else { continue };
                        for rel in g.outgoing(&src, &j.relationship) {
                            let Some(target) = rel
                                .get("$targetId")
                                .and_then(Value::as_str)
                                .and_then(|t| g.twin(t))
                            else {
                                continue;
                            };
                            let mut r = row.clone();
                            r.push((j.target.clone(), target));
                            if let Some(ra) = &j.rel_alias {
                                r.push((ra.clone(), rel));
                            }
                            next.push(r);
                        }
                    }
                    rows = next;
                }
                for row in &rows {
                    if !visit(row)? {
                        break 'outer;
                    }
                }
            }
        }
    }
    if matches!(q.select, Select::Count) {
        return Ok(Page {
            items: vec![json!({"COUNT": count})],
            next: None,
        });
    }
    Ok(Page {
        next: more.then_some(offset + items.len()),
        items,
    })
}

fn relationship_source(ctx: &Ctx<'_>, e: &Expr) -> Option<String> {
    match e {
        Expr::And(a, b) => relationship_source(ctx, a).or_else(|| relationship_source(ctx, b)),
        Expr::Cmp(Operand::Path(p), CmpOp::Eq, Operand::Lit(Value::String(s))) => {
            let (alias, steps) = ctx.split(p).ok()?;
            (alias == ctx.root && steps.len() == 1 && steps[0] == "$sourceId").then(|| s.clone())
        }
        _ => None,
    }
}

fn project(ctx: &Ctx<'_>, q: &Query, row: &Row) -> Result<Value, QueryError> {
    match &q.select {
        Select::All | Select::Count => {
            if row.len() == 1 {
                Ok(row[0].1.clone())
            } else {
                Ok(Value::Object(row.iter().cloned().collect()))
            }
        }
        Select::Items(items) => {
            if items.len() == 1
                && items[0].1.is_none()
                && items[0].0.steps.len() == 1
                && ctx.aliases.contains(&items[0].0.steps[0])
            {
                let alias = &items[0].0.steps[0];
                return Ok(row
                    .iter()
                    .find(|(a, _)| a == alias)
                    .map(|(_, d)| d.clone())
                    .unwrap_or(Value::Null));
            }
            let mut m = Map::new();
            for (p, name) in items {
                if let Some(v) = ctx.resolve(row, p)? {
                    m.insert(name.clone().unwrap_or_else(|| p.label()), v);
                }
            }
            Ok(Value::Object(m))
        }
    }
}
