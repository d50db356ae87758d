//! Rule expressions in CEL (the Common Expression Language, through the
//! `cel` crate): no side effects, no unbounded loops, compiled once when a
//! rule is saved. See docs/design/rules.md for the variables a rule sees.
//!
//! Numbers are doubles (every telemetry value is), and CEL does not mix
//! int and double in arithmetic: `temperature * 2` is refused when the
//! rule is saved (write `2.0`); comparisons mix freely
//! (`temperature > 375`).

use cel::common::types::{CelBool, CelDouble, CelNull, CelString};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Program, Value as Cel};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Why an expression was refused at save, with its position (1-based).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (line {line}, column {column})")]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The maps a rule binds besides plain names (see docs/design/rules.md).
pub const MAPS: [&str; 4] = ["props", "related", "twin", "event"];

/// A compiled expression.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// The variables of one evaluation: names bound to JSON values.
pub type Vars<'a> = [(&'a str, &'a Value)];

thread_local! {
    /// The built-in functions, made once per thread: a fresh root context
    /// per evaluation would cost ~20× the evaluation itself.
    static ROOT: Context<'static, 'static> = Context::default();
}

impl Expr {
    /// Parses `src` and tries it once with every variable it names bound
    /// to a number, so type errors (int and double mixed in arithmetic)
    /// are refused now rather than on the first event. The maps a rule
    /// provides (`props`, `related`, `twin`, `event`) are left out of the
    /// trial.
    pub fn compile(src: &str) -> Result<Expr, CompileError> {
        if src.trim().is_empty() {
            return Err(CompileError {
                line: 1,
                column: 1,
                message: "must not be empty".into(),
            });
        }
        if src.len() > 4096 {
            return Err(CompileError {
                line: 1,
                column: 4097,
                message: "is longer than 4096 characters".into(),
            });
        }
        let program = Program::compile(src).map_err(|e| {
            let first = e.errors.first();
            CompileError {
                line: first.map_or(1, |e| e.pos.0.max(1) as usize),
                column: first.map_or(1, |e| e.pos.1.max(1) as usize),
                message: first.map_or_else(|| e.to_string(), |e| e.msg.clone()),
            }
        })?;
        let expr = Expr {
            source: src.into(),
            program: Arc::new(program),
        };
        let names: Vec<String> = expr
            .program
            .references()
            .variables()
            .into_iter()
            .filter(|v| !MAPS.contains(v))
            .map(str::to_string)
            .collect();
        let one = serde_json::json!(1.0);
        let vars: Vec<(&str, &Value)> = names.iter().map(|n| (n.as_str(), &one)).collect();
        if let Err(e) = expr.eval(&vars) {
            if e.is_type_error {
                return Err(CompileError {
                    line: 1,
                    column: 1,
                    message: format!(
                        "{}; numbers are doubles, so write literals in arithmetic as 2.0, not 2",
                        e.message
                    ),
                });
            }
        }
        Ok(expr)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names the expression reads.
    pub fn variables(&self) -> Vec<String> {
        self.program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Evaluates to a JSON value.
    pub fn eval(&self, vars: &Vars<'_>) -> Result<Value, EvalError> {
        with_scope(vars, |scope| self.eval_in(scope))
    }

    /// Evaluates over variables bound once by [`with_scope`].
    pub fn eval_in(&self, scope: &Scope<'_>) -> Result<Value, EvalError> {
        match self.program.execute(&scope.0) {
            Ok(v) => Ok(from_cel(&v)),
            Err(e) => {
                use cel::ExecutionError as E;
                let is_type_error = matches!(
                    e,
                    E::UnsupportedBinaryOperator(..)
                        | E::NoSuchOverload(..)
                        | E::ValuesNotComparable(..)
                );
                Err(EvalError {
                    message: e.to_string(),
                    is_type_error,
                })
            }
        }
    }

    /// A condition over variables bound once by [`with_scope`].
    pub fn eval_bool_in(&self, scope: &Scope<'_>) -> Result<bool, EvalError> {
        as_bool(self.eval_in(scope)?)
    }

    /// Evaluates a condition: true, false, or an error (a result that is
    /// not a boolean is one).
    pub fn eval_bool(&self, vars: &Vars<'_>) -> Result<bool, EvalError> {
        as_bool(self.eval(vars)?)
    }
}

fn as_bool(v: Value) -> Result<bool, EvalError> {
    match v {
        Value::Bool(b) => Ok(b),
        other => Err(EvalError {
            message: format!("the condition gave {other}, not true or false"),
            is_type_error: true,
        }),
    }
}

/// Variables bound for several expressions of one evaluation (a
/// condition and its clear read the same values: binding them is most of
/// an evaluation's cost).
pub struct Scope<'a>(Context<'a, 'a>);

/// A value kept bound between evaluations (a twin's live value): every
/// evaluation reads it in place, none converts it again.
#[derive(Debug, Clone)]
pub enum Bound {
    Number(CelDouble),
    Bool(CelBool),
    Text(CelString<'static>),
    Other(Box<dyn Val>),
}

impl Bound {
    pub fn from_json(v: &Value) -> Bound {
        match v {
            Value::Number(n) => Bound::Number(n.as_f64().unwrap_or(f64::NAN).into()),
            Value::Bool(b) => Bound::Bool((*b).into()),
            Value::String(s) => Bound::Text(s.clone().into()),
            Value::Null => Bound::Other(Box::new(CelNull)),
            other => Bound::Other(
                Box::<dyn Val>::try_from(to_cel(other)).unwrap_or_else(|_| Box::new(CelNull)),
            ),
        }
    }

    pub fn from_value(v: &crate::Value) -> Bound {
        match v {
            crate::Value::Number(n) => Bound::Number((*n).into()),
            crate::Value::Bool(b) => Bound::Bool((*b).into()),
            crate::Value::String(s) => Bound::Text(s.clone().into()),
        }
    }

    /// Sets it to `v`; a text that did not change is kept (a status sent
    /// with every message is not copied with every message).
    pub fn set(&mut self, v: &crate::Value) {
        match (&mut *self, v) {
            (Bound::Number(x), crate::Value::Number(n)) => *x = (*n).into(),
            (Bound::Bool(x), crate::Value::Bool(b)) => *x = (*b).into(),
            (Bound::Text(x), crate::Value::String(s)) if x.inner() == s.as_str() => {}
            _ => *self = Bound::from_value(v),
        }
    }

    pub fn as_val(&self) -> &dyn Val {
        match self {
            Bound::Number(x) => x,
            Bound::Bool(x) => x,
            Bound::Text(x) => x,
            Bound::Other(x) => x.as_ref(),
        }
    }

    fn into_val(self) -> Box<dyn Val> {
        match self {
            Bound::Number(x) => Box::new(x),
            Bound::Bool(x) => Box::new(x),
            Bound::Text(x) => Box::new(x),
            Bound::Other(x) => x,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Bound::Number(x) => {
                serde_json::Number::from_f64(**x).map_or(Value::Null, Value::Number)
            }
            Bound::Bool(x) => Value::Bool(**x),
            Bound::Text(x) => Value::String(x.inner().to_string()),
            Bound::Other(x) => Cel::try_from(x.as_ref()).map_or(Value::Null, |v| from_cel(&v)),
        }
    }
}

/// A name's value for one evaluation: one kept bound, or one made for it
/// (a map of the twin's properties, a stored property).
pub enum Found<'a> {
    Kept(&'a Bound),
    Made(Bound),
}

/// Where an evaluation finds its variables, asked only for the names the
/// expression reads, when it reads them: nothing is bound up front.
pub trait Lookup: Send + Sync {
    fn find(&self, name: &str) -> Option<Found<'_>>;
}

struct Resolver<'a>(&'a dyn Lookup);

impl VariableResolver for Resolver<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        Some(match self.0.find(name)? {
            Found::Kept(b) => CowVal::Borrowed(b.as_val()),
            Found::Made(b) => CowVal::Owned(b.into_val()),
        })
    }
}

/// Runs `f` over variables found through `lookup` as they are read.
pub fn with_lookup<R>(lookup: &dyn Lookup, f: impl FnOnce(&Scope<'_>) -> R) -> R {
    let resolver = Resolver(lookup);
    ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        ctx.set_variable_resolver(&resolver);
        f(&Scope(ctx))
    })
}

/// Binds `vars` once and runs `f` over them.
pub fn with_scope<R>(vars: &Vars<'_>, f: impl FnOnce(&Scope<'_>) -> R) -> R {
    ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        for (name, v) in vars {
            ctx.add_variable_from_value(*name, to_cel(v));
        }
        f(&Scope(ctx))
    })
}

/// A run-time error: a missing property, a type mismatch, a division by
/// zero. The rule is marked failing for that twin; other rules go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub message: String,
    pub is_type_error: bool,
}

fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(o) => {
            let m: HashMap<String, Cel> = o.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            m.into()
        }
    }
}

fn from_cel(v: &Cel) -> Value {
    match v {
        Cel::Null => Value::Null,
        Cel::Bool(b) => Value::Bool(*b),
        Cel::Int(i) => serde_json::json!(*i),
        Cel::UInt(u) => serde_json::json!(*u),
        Cel::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Cel::String(s) => Value::String(s.to_string()),
        Cel::List(l) => Value::Array(l.iter().map(from_cel).collect()),
        Cel::Map(m) => Value::Object(
            m.map
                .iter()
                .map(|(k, v)| (key_text(k), from_cel(v)))
                .collect(),
        ),
        other => Value::String(format!("{other:?}")),
    }
}

fn key_text(k: &cel::objects::Key) -> String {
    use cel::objects::Key;
    match k {
        Key::String(s) => s.to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_over_properties_and_related_twins() {
        let e = Expr::compile("temperature > 375 && related.isPartOf.state == 'running'").unwrap();
        let (t, rel) = (json!(376.5), json!({"isPartOf": {"state": "running"}}));
        assert!(e
            .eval_bool(&[("temperature", &t), ("related", &rel)])
            .unwrap());
        let cold = json!(370);
        assert!(!e
            .eval_bool(&[("temperature", &cold), ("related", &rel)])
            .unwrap());
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = Expr::compile("temperature >\n  && x").unwrap_err();
        assert_eq!((err.line, err.column), (2, 3), "{err}");
        assert!(err.message.contains("&&"), "{err}");
        assert!(Expr::compile("  ").is_err());
    }

    #[test]
    fn int_and_double_mixed_in_arithmetic_is_refused_at_save() {
        let err = Expr::compile("temperature * 2 > 700").unwrap_err();
        assert!(err.message.contains("2.0"), "{err}");
        assert!(Expr::compile("temperature * 2.0 > 700").is_ok());
    }

    #[test]
    fn run_time_errors_are_errors_not_answers() {
        let e = Expr::compile("props.pressure > 5").unwrap();
        let props = json!({"temperature": 1});
        let err = e.eval_bool(&[("props", &props)]).unwrap_err();
        assert!(err.message.contains("pressure"), "{err}");
        let e = Expr::compile("temperature").unwrap();
        assert!(e.eval_bool(&[("temperature", &json!(1))]).is_err());
        assert_eq!(e.eval(&[("temperature", &json!(1.5))]).unwrap(), json!(1.5));
    }

    /// A lookup over kept values, as the rule engine keeps a twin's.
    struct Kept(HashMap<&'static str, Bound>);

    impl Lookup for Kept {
        fn find(&self, name: &str) -> Option<Found<'_>> {
            match name {
                "related" => Some(Found::Made(Bound::from_json(
                    &json!({"isPartOf": {"state": "running"}}),
                ))),
                n => self.0.get(n).map(Found::Kept),
            }
        }
    }

    #[test]
    fn kept_values_evaluate_as_bound_ones() {
        let e = Expr::compile(
            "temperature > 375 && related.isPartOf.state == 'running' && status == 'on'",
        )
        .unwrap();
        let mut kept = Kept(HashMap::from([
            (
                "temperature",
                Bound::from_value(&crate::Value::Number(376.5)),
            ),
            ("status", Bound::from_json(&json!("on"))),
        ]));
        assert_eq!(with_lookup(&kept, |s| e.eval_bool_in(s)), Ok(true));
        // Set in place, as each message does.
        kept.0
            .get_mut("temperature")
            .unwrap()
            .set(&crate::Value::Number(370.0));
        assert_eq!(with_lookup(&kept, |s| e.eval_bool_in(s)), Ok(false));
        kept.0
            .get_mut("temperature")
            .unwrap()
            .set(&crate::Value::Number(380.0));
        kept.0
            .get_mut("status")
            .unwrap()
            .set(&crate::Value::String("off".into()));
        assert_eq!(with_lookup(&kept, |s| e.eval_bool_in(s)), Ok(false));
        // A value may change type; it is read as what it is now.
        kept.0
            .get_mut("status")
            .unwrap()
            .set(&crate::Value::Bool(true));
        let flag = Expr::compile("status").unwrap();
        assert_eq!(with_lookup(&kept, |s| flag.eval_bool_in(s)), Ok(true));
        assert_eq!(kept.0["status"].to_json(), json!(true));
        assert_eq!(kept.0["temperature"].to_json(), json!(380.0));
    }

    #[test]
    fn a_name_not_found_fails_naming_it() {
        let e = Expr::compile("pressure > 5.0").unwrap();
        let kept = Kept(HashMap::new());
        let err = with_lookup(&kept, |s| e.eval_bool_in(s)).unwrap_err();
        assert!(err.message.contains("pressure"), "{err:?}");
        let e = Expr::compile("temperature * 1.8 - 459.67").unwrap();
        let kept = Kept(HashMap::from([(
            "temperature",
            Bound::from_json(&json!(300)),
        )]));
        let v = with_lookup(&kept, |s| e.eval_in(s)).unwrap();
        assert!((v.as_f64().unwrap() - 80.33).abs() < 1e-9, "{v}");
    }
}
