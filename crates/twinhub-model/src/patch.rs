//! JSON Patch (RFC 6902) over `serde_json::Value`, applied all or nothing.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum PatchOp {
    Add { path: String, value: Value },
    Remove { path: String },
    Replace { path: String, value: Value },
    Move { from: String, path: String },
    Copy { from: String, path: String },
    Test { path: String, value: Value },
}

impl PatchOp {
    pub fn path(&self) -> &str {
        match self {
            PatchOp::Add { path, .. }
            | PatchOp::Remove { path }
            | PatchOp::Replace { path, .. }
            | PatchOp::Move { path, .. }
            | PatchOp::Copy { path, .. }
            | PatchOp::Test { path, .. } => path,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{at}: {rule}")]
pub struct PatchError {
    pub at: String,
    pub rule: String,
}

fn err(at: impl Into<String>, rule: impl Into<String>) -> PatchError {
    PatchError {
        at: at.into(),
        rule: rule.into(),
    }
}

/// Parses a patch document: an array of operation objects.
pub fn parse_patch(doc: &Value) -> Result<Vec<PatchOp>, PatchError> {
    let ops = doc
        .as_array()
        .ok_or_else(|| err("body", "a JSON Patch is an array of operations"))?;
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let at = format!("[{i}]");
            let o = op
                .as_object()
                .ok_or_else(|| err(&at, "must be an object"))?;
            let s = |k: &str| -> Result<String, PatchError> {
                o.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("{at}.{k}"), "is required and must be a string"))
            };
            let value = || {
                o.get("value")
                    .cloned()
                    .ok_or_else(|| err(format!("{at}.value"), "is required"))
            };
            let path = s("path")?;
            pointer(&path).map_err(|r| err(format!("{at}.path"), r))?;
            Ok(match s("op")?.as_str() {
                "add" => PatchOp::Add {
                    path,
                    value: value()?,
                },
                "remove" => PatchOp::Remove { path },
                "replace" => PatchOp::Replace {
                    path,
                    value: value()?,
                },
                "move" => PatchOp::Move {
                    from: s("from")?,
                    path,
                },
                "copy" => PatchOp::Copy {
                    from: s("from")?,
                    path,
                },
                "test" => PatchOp::Test {
                    path,
                    value: value()?,
                },
                other => {
                    return Err(err(
                        format!("{at}.op"),
                        format!("'{other}' is not add, remove, replace, move, copy or test"),
                    ))
                }
            })
        })
        .collect()
}

/// The reference tokens of a JSON Pointer ("" is the whole document).
pub fn pointer(p: &str) -> Result<Vec<String>, &'static str> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let rest = p.strip_prefix('/').ok_or("a JSON Pointer starts with /")?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index(arr: &[Value], tok: &str, allow_end: bool, at: &str) -> Result<usize, PatchError> {
    if allow_end && tok == "-" {
        return Ok(arr.len());
    }
    let i: usize = tok
        .parse()
        .map_err(|_| err(at, "array index must be a number"))?;
    if (tok.len() > 1 && tok.starts_with('0')) || i > arr.len() || (!allow_end && i == arr.len()) {
        return Err(err(at, "array index out of range"));
    }
    Ok(i)
}

fn parent<'a>(doc: &'a mut Value, toks: &[String], at: &str) -> Result<&'a mut Value, PatchError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| err(at, format!("'{t}' does not exist")))?,
            Value::Array(a) => {
                let i = index(a, t, false, at)?;
                &mut a[i]
            }
            _ => {
                return Err(err(
                    at,
                    format!("'{t}' is inside a value that is neither object nor array"),
                ))
            }
        };
    }
    Ok(cur)
}

fn get(doc: &Value, path: &str) -> Result<Value, PatchError> {
    doc.pointer(path)
        .cloned()
        .ok_or_else(|| err(path, "does not exist"))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    let toks = pointer(path).map_err(|r| err(path, r))?;
    let Some((last, init)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = index(a, last, true, path)?;
            a.insert(i, value);
        }
        _ => return Err(err(path, "the parent is neither object nor array")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    let toks = pointer(path).map_err(|r| err(path, r))?;
    let (last, init) = toks
        .split_last()
        .ok_or_else(|| err(path, "cannot remove the whole document"))?;
    match parent(doc, init, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| err(path, "does not exist")),
        Value::Array(a) => {
            let i = index(a, last, false, path)?;
            Ok(a.remove(i))
        }
        _ => Err(err(path, "does not exist")),
    }
}

/// Applies every operation or none (the document is unchanged on error).
pub fn apply(doc: &mut Value, ops: &[PatchOp]) -> Result<(), PatchError> {
    let mut work = doc.clone();
    for op in ops {
        match op {
            PatchOp::Add { path, value } => add(&mut work, path, value.clone())?,
            PatchOp::Remove { path } => {
                remove(&mut work, path)?;
            }
            PatchOp::Replace { path, value } => {
                get(&work, path)?;
                if path.is_empty() {
                    work = value.clone();
                } else {
                    remove(&mut work, path)?;
                    add(&mut work, path, value.clone())?;
                }
            }
            PatchOp::Move { from, path } => {
                if path.starts_with(&format!("{from}/")) {
                    return Err(err(path, "cannot move a value into itself"));
                }
                let v = remove(&mut work, from)?;
                add(&mut work, path, v)?;
            }
            PatchOp::Copy { from, path } => {
                let v = get(&work, from)?;
                add(&mut work, path, v)?;
            }
            PatchOp::Test { path, value } => {
                if &get(&work, path)? != value {
                    return Err(err(path, "test failed: the value differs"));
                }
            }
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn run(doc: Value, patch: Value) -> Result<Value, PatchError> {
        let mut d = doc;
        apply(&mut d, &parse_patch(&patch)?)?;
        Ok(d)
    }

    /// Examples from RFC 6902 appendix A.
    #[test]
    fn rfc_6902_examples() {
        assert_eq!(
            run(
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux"}])
            )
            .unwrap(),
            json!({"baz": "qux", "foo": "bar"})
        );
        assert_eq!(
            run(
                json!({"foo": ["bar", "baz"]}),
                json!([{"op": "add", "path": "/foo/1", "value": "qux"}])
            )
            .unwrap(),
            json!({"foo": ["bar", "qux", "baz"]})
        );
        assert_eq!(
            run(
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "remove", "path": "/baz"}])
            )
            .unwrap(),
            json!({"foo": "bar"})
        );
        assert_eq!(
            run(
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "replace", "path": "/baz", "value": "boo"}])
            )
            .unwrap(),
            json!({"baz": "boo", "foo": "bar"})
        );
        assert_eq!(
            run(
                json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
                json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}])
            )
            .unwrap(),
            json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}})
        );
        assert_eq!(
            run(
                json!({"foo": ["bar"]}),
                json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}])
            )
            .unwrap(),
            json!({"foo": ["bar", ["abc", "def"]]})
        );
        assert!(run(
            json!({"baz": "qux"}),
            json!([{"op": "test", "path": "/baz", "value": "bar"}])
        )
        .is_err());
        assert!(run(
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz/bat", "value": "qux"}])
        )
        .is_err());
        assert_eq!(
            run(
                json!({"/": 9, "~1": 10}),
                json!([{"op": "test", "path": "/~01", "value": 10}])
            )
            .unwrap(),
            json!({"/": 9, "~1": 10})
        );
        assert_eq!(
            run(
                json!({"foo": 1}),
                json!([{"op": "copy", "from": "/foo", "path": "/bar"}])
            )
            .unwrap(),
            json!({"foo": 1, "bar": 1})
        );
    }

    #[test]
    fn failures_change_nothing_and_name_the_place() {
        let mut d = json!({"a": 1});
        let ops = parse_patch(&json!([{"op": "replace", "path": "/a", "value": 2}, {"op": "remove", "path": "/missing"}])).unwrap();
        let e = apply(&mut d, &ops).unwrap_err();
        assert_eq!(e.at, "/missing");
        assert_eq!(d, json!({"a": 1}), "all or nothing");
        assert_eq!(
            parse_patch(&json!([{"op": "jump", "path": "/a"}]))
                .unwrap_err()
                .at,
            "[0].op"
        );
        assert_eq!(
            parse_patch(&json!([{"op": "add", "path": "a"}]))
                .unwrap_err()
                .at,
            "[0].path"
        );
        assert_eq!(parse_patch(&json!({})).unwrap_err().at, "body");
    }

    proptest! {
        /// add then remove of a fresh key restores the document.
        #[test]
        fn add_remove_round_trips(keys in proptest::collection::btree_map("[a-z]{1,5}", 0i64..100, 0..8), k in "[A-Z]{1,5}", v in 0i64..100) {
            let doc = json!(keys);
            let p = format!("/{k}");
            let added = run(doc.clone(), json!([{"op": "add", "path": p, "value": v}])).unwrap();
            prop_assert_eq!(added.pointer(&p), Some(&json!(v)));
            prop_assert_eq!(run(added, json!([{"op": "remove", "path": p}])).unwrap(), doc);
        }
    }
}
