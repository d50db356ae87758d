//! Rule expressions in CEL (the Common Expression Language, through the
//! `cel` crate): no side effects, no unbounded loops, compiled once when a
//! rule is saved. See docs/design/rules.md for the variables a rule sees.
//!
//! Numbers are doubles (every telemetry value is), and CEL does not mix
//! int and double in arithmetic: `temperature * 2` is refused when the
//! rule is saved (write `2.0`); comparisons mix freely
//! (`temperature > 375`).

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
pub struct Scope<'a>(Context<'a, 'static>);

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
}
