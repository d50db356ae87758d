//! JSON-LD → `Interface`s. Accepts one interface or an array, inline
//! interfaces in `extends` and component schemas, `@type` arrays carrying
//! semantic types, language maps, and a UTF-8 byte-order mark. Every
//! error names the interface, the element and the rule.

use super::{Content, ContentKind, Dtmi, Interface, LangText, ModelError, Primitive, Schema};
use serde_json::{Map, Value};

struct Ctx<'a> {
    iface: String,
    errors: &'a mut Vec<ModelError>,
    /// Inline interfaces found while parsing (extends, component schemas).
    inline: Vec<Interface>,
}

impl Ctx<'_> {
    fn err(&mut self, element: &str, rule: impl Into<String>) {
        self.errors.push(ModelError {
            interface: self.iface.clone(),
            element: element.to_string(),
            rule: rule.into(),
        });
    }
}

const CONTEXTS: &[&str] = &["dtmi:dtdl:context;3", "dtmi:dtdl:context;2"];

/// Parses a model upload: bytes of one interface or an array of them.
pub fn parse_models(bytes: &[u8]) -> Result<Vec<Interface>, Vec<ModelError>> {
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| {
        vec![ModelError {
            interface: "body".into(),
            element: String::new(),
            rule: format!(
                "must be valid JSON (line {} column {})",
                e.line(),
                e.column()
            ),
        }]
    })?;
    let items = match doc {
        Value::Array(a) => a,
        v @ Value::Object(_) => vec![v],
        _ => {
            return Err(vec![ModelError {
                interface: "body".into(),
                element: String::new(),
                rule: "must be a DTDL interface or an array of interfaces".into(),
            }])
        }
    };
    let mut errors = Vec::new();
    unique_ids(&items, &mut errors);
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            errors.push(ModelError {
                interface: format!("[{i}]"),
                element: String::new(),
                rule: "must be a JSON object".into(),
            });
            continue;
        };
        check_context(obj, &format!("[{i}]"), &mut errors);
        let mut ctx = Ctx {
            iface: obj
                .get("@id")
                .and_then(Value::as_str)
                .unwrap_or(&format!("[{i}]"))
                .to_string(),
            errors: &mut errors,
            inline: Vec::new(),
        };
        if let Some(iface) = interface(obj, &mut ctx) {
            out.push(iface);
        }
        out.append(&mut ctx.inline);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Every element's "@id" is unique among all elements of the model
/// (Requirement-ClassInterfaceIdDuplicateV3 and its siblings for every
/// element class): interfaces, inline interfaces, named and inline
/// schemas, contents.
fn unique_ids(items: &[Value], errors: &mut Vec<ModelError>) {
    fn walk<'a>(
        v: &'a Value,
        top: &str,
        seen: &mut std::collections::HashMap<&'a str, String>,
        errors: &mut Vec<ModelError>,
    ) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(id)) = o.get("@id") {
                    if let Some(first) = seen.insert(id.as_str(), top.to_string()) {
                        errors.push(ModelError {
                            interface: top.to_string(),
                            element: "@id".into(),
                            rule: format!("{id} is also the @id of another element (in {first}); an @id must be unique among all elements of the model"),
                        });
                    }
                }
                for (k, x) in o {
                    if k != "@id" {
                        walk(x, top, seen, errors);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, top, seen, errors)),
            _ => {}
        }
    }
    let mut seen = std::collections::HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let top = item
            .get("@id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("[{i}]"));
        walk(item, &top, &mut seen, errors);
    }
}

fn check_context(obj: &Map<String, Value>, at: &str, errors: &mut Vec<ModelError>) {
    let ok = match obj.get("@context") {
        Some(Value::String(c)) => CONTEXTS.contains(&c.as_str()),
        Some(Value::Array(cs)) => {
            cs.first()
                .and_then(Value::as_str)
                .is_some_and(|c| CONTEXTS.contains(&c))
                && cs
                    .iter()
                    .all(|c| c.as_str().is_some_and(|s| s.starts_with("dtmi:")))
        }
        _ => false,
    };
    if !ok {
        let iface = obj
            .get("@id")
            .and_then(Value::as_str)
            .unwrap_or(at)
            .to_string();
        errors.push(ModelError {
            interface: iface,
            element: "@context".into(),
            rule: "must be dtmi:dtdl:context;3 (or ;2), optionally followed by extension contexts"
                .into(),
        });
    }
}

/// `@type` as (main type, extra semantic types).
fn types(obj: &Map<String, Value>) -> Option<(String, Vec<String>)> {
    match obj.get("@type")? {
        Value::String(t) => Some((t.clone(), Vec::new())),
        Value::Array(ts) => {
            let all: Vec<String> = ts
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            let main = all
                .iter()
                .find(|t| {
                    matches!(
                        t.as_str(),
                        "Interface"
                            | "Property"
                            | "Telemetry"
                            | "Command"
                            | "Relationship"
                            | "Component"
                            | "Enum"
                            | "Object"
                            | "Map"
                            | "Array"
                            | "CommandPayload"
                            | "Field"
                            | "EnumValue"
                            | "MapKey"
                            | "MapValue"
                    )
                })?
                .clone();
            Some((
                main.clone(),
                all.into_iter().filter(|t| *t != main).collect(),
            ))
        }
        _ => None,
    }
}

fn lang_text(v: Option<&Value>) -> Option<LangText> {
    match v? {
        Value::String(s) => Some([("en".to_string(), s.clone())].into()),
        Value::Object(m) => Some(
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect(),
        ),
        _ => None,
    }
}

fn dtmi_of(v: &Value, ctx: &mut Ctx<'_>, element: &str) -> Option<Dtmi> {
    match v.as_str().map(Dtmi::parse) {
        Some(Ok(d)) => Some(d),
        Some(Err(rule)) => {
            ctx.err(element, rule);
            None
        }
        None => {
            ctx.err(element, "must be a DTMI string");
            None
        }
    }
}

fn interface(obj: &Map<String, Value>, ctx: &mut Ctx<'_>) -> Option<Interface> {
    match types(obj) {
        Some((t, _)) if t == "Interface" => {}
        _ => {
            ctx.err("@type", "must be Interface");
            return None;
        }
    }
    let id = dtmi_of(obj.get("@id").unwrap_or(&Value::Null), ctx, "@id")?;
    let mut extends = Vec::new();
    let ext_values: Vec<Value> = match obj.get("extends") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(v) => vec![v.clone()],
    };
    for (i, e) in ext_values.iter().enumerate() {
        let at = format!("extends[{i}]");
        match e {
            Value::Object(inner) => {
                if let Some(sub) = inline_interface(inner, ctx, &at) {
                    extends.push(sub);
                }
            }
            v => {
                if let Some(d) = dtmi_of(v, ctx, &at) {
                    extends.push(d);
                }
            }
        }
    }
    let mut schemas = Vec::new();
    if let Some(list) = obj.get("schemas") {
        for (i, s) in list
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![list.clone()])
            .iter()
            .enumerate()
        {
            let at = format!("schemas[{i}]");
            let Some(so) = s.as_object() else {
                ctx.err(&at, "must be a complex schema object with an @id");
                continue;
            };
            let Some(sid) = so
                .get("@id")
                .and_then(|v| dtmi_of(v, ctx, &format!("{at}.@id")))
            else {
                if so.get("@id").is_none() {
                    ctx.err(&at, "a schema under schemas needs an @id");
                }
                continue;
            };
            if let Some(schema) = complex_schema(so, ctx, &at) {
                schemas.push((sid, schema));
            }
        }
    }
    let mut contents = Vec::new();
    if let Some(list) = obj.get("contents") {
        let Some(arr) = list.as_array() else {
            ctx.err("contents", "must be an array");
            return None;
        };
        for (i, c) in arr.iter().enumerate() {
            let at = match c.get("name").and_then(Value::as_str) {
                Some(n) => format!("contents[{i}] ({n})"),
                None => format!("contents[{i}]"),
            };
            match c.as_object() {
                Some(co) => {
                    if let Some(content) = content(co, ctx, &at) {
                        contents.push(content);
                    }
                }
                None => ctx.err(&at, "must be an object"),
            }
        }
    }
    Some(Interface {
        id,
        extends,
        contents,
        schemas,
        display_name: lang_text(obj.get("displayName")),
        description: lang_text(obj.get("description")),
        source: Value::Object(obj.clone()),
    })
}

fn inline_interface(obj: &Map<String, Value>, ctx: &mut Ctx<'_>, at: &str) -> Option<Dtmi> {
    let Some(id) = obj.get("@id") else {
        ctx.err(at, "an inline interface needs an @id");
        return None;
    };
    let id = dtmi_of(id, ctx, &format!("{at}.@id"))?;
    let mut inner = obj.clone();
    inner
        .entry("@context")
        .or_insert_with(|| Value::String("dtmi:dtdl:context;3".into()));
    let saved = std::mem::replace(&mut ctx.iface, id.to_string());
    let parsed = interface(&inner, ctx);
    ctx.iface = saved;
    if let Some(i) = parsed {
        ctx.inline.push(i);
    }
    Some(id)
}

fn name_of(obj: &Map<String, Value>, ctx: &mut Ctx<'_>, at: &str) -> Option<String> {
    match obj.get("name").and_then(Value::as_str) {
        Some(n) if super::valid_name(n) => Some(n.to_string()),
        Some(_) => {
            ctx.err(at, "name must start with a letter and hold only letters, digits and _ (not ending with _), at most 512 characters");
            None
        }
        None => {
            ctx.err(at, "needs a name");
            None
        }
    }
}

fn content(obj: &Map<String, Value>, ctx: &mut Ctx<'_>, at: &str) -> Option<Content> {
    let Some((t, semantic)) = types(obj) else {
        ctx.err(
            at,
            "@type must be Property, Telemetry, Command, Relationship or Component",
        );
        return None;
    };
    let name = name_of(obj, ctx, at)?;
    let kind = match t.as_str() {
        "Property" => ContentKind::Property {
            schema: schema_field(obj, "schema", ctx, at)?,
            writable: obj
                .get("writable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        },
        "Telemetry" => ContentKind::Telemetry {
            schema: schema_field(obj, "schema", ctx, at)?,
        },
        "Command" => {
            let payload = |key: &str, ctx: &mut Ctx<'_>| -> Option<Option<(String, Schema)>> {
                match obj.get(key) {
                    None => Some(None),
                    Some(Value::Object(p)) => {
                        let pat = format!("{at}.{key}");
                        let n = name_of(p, ctx, &pat)?;
                        Some(Some((n, schema_field(p, "schema", ctx, &pat)?)))
                    }
                    Some(_) => {
                        ctx.err(&format!("{at}.{key}"), "must be a CommandPayload object");
                        None
                    }
                }
            };
            ContentKind::Command {
                request: payload("request", ctx)?,
                response: payload("response", ctx)?,
            }
        }
        "Relationship" => {
            let target = match obj.get("target") {
                None => None,
                Some(v) => Some(dtmi_of(v, ctx, &format!("{at}.target"))?),
            };
            let num = |k: &str, ctx: &mut Ctx<'_>| -> Option<Option<u64>> {
                match obj.get(k) {
                    None => Some(None),
                    Some(v) => match v.as_u64() {
                        Some(n) => Some(Some(n)),
                        None => {
                            ctx.err(&format!("{at}.{k}"), "must be a non-negative integer");
                            None
                        }
                    },
                }
            };
            let (min, max) = (num("minMultiplicity", ctx)?, num("maxMultiplicity", ctx)?);
            if let (Some(a), Some(b)) = (min, max) {
                if a > b {
                    ctx.err(at, "minMultiplicity must not exceed maxMultiplicity");
                }
            }
            if max == Some(0) {
                ctx.err(&format!("{at}.maxMultiplicity"), "must be at least 1");
            }
            let mut properties = Vec::new();
            if let Some(ps) = obj.get("properties") {
                for (i, p) in ps
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    let pat = format!("{at}.properties[{i}]");
                    let Some(po) = p.as_object() else {
                        ctx.err(&pat, "must be a Property object");
                        continue;
                    };
                    if let (Some(n), Some(s)) = (
                        name_of(po, ctx, &pat),
                        schema_field(po, "schema", ctx, &pat),
                    ) {
                        properties.push((n, s));
                    }
                }
            }
            ContentKind::Relationship {
                target,
                min,
                max,
                properties,
                writable: obj
                    .get("writable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        }
        "Component" => {
            let schema = match obj.get("schema") {
                Some(Value::Object(inner)) => {
                    inline_interface(inner, ctx, &format!("{at}.schema"))?
                }
                Some(v) => dtmi_of(v, ctx, &format!("{at}.schema"))?,
                None => {
                    ctx.err(at, "a Component needs a schema (an interface DTMI)");
                    return None;
                }
            };
            ContentKind::Component { schema }
        }
        other => {
            ctx.err(at, format!("@type {other} is not allowed in contents"));
            return None;
        }
    };
    Some(Content {
        name,
        kind,
        semantic_types: semantic,
        unit: obj.get("unit").and_then(Value::as_str).map(str::to_string),
        display_name: lang_text(obj.get("displayName")),
        description: lang_text(obj.get("description")),
    })
}

fn schema_field(
    obj: &Map<String, Value>,
    key: &str,
    ctx: &mut Ctx<'_>,
    at: &str,
) -> Option<Schema> {
    match obj.get(key) {
        Some(v) => schema(v, ctx, &format!("{at}.{key}")),
        None => {
            ctx.err(at, format!("needs a {key}"));
            None
        }
    }
}

fn schema(v: &Value, ctx: &mut Ctx<'_>, at: &str) -> Option<Schema> {
    match v {
        Value::String(s) => {
            if let Some(p) = Primitive::parse(s) {
                return Some(Schema::Primitive(p));
            }
            if s.starts_with("dtmi:") {
                return dtmi_of(v, ctx, at).map(Schema::Ref);
            }
            ctx.err(at, format!("'{s}' is not a schema: use boolean, date, dateTime, double, duration, float, integer, long, string, time, a complex schema or a schema DTMI"));
            None
        }
        Value::Object(o) => complex_schema(o, ctx, at),
        _ => {
            ctx.err(at, "must be a schema name or a schema object");
            None
        }
    }
}

fn complex_schema(o: &Map<String, Value>, ctx: &mut Ctx<'_>, at: &str) -> Option<Schema> {
    let t = types(o).map(|(t, _)| t).unwrap_or_default();
    match t.as_str() {
        "Enum" => {
            let value = match o.get("valueSchema").and_then(Value::as_str) {
                Some("integer") => Primitive::Integer,
                Some("string") => Primitive::String,
                _ => {
                    ctx.err(&format!("{at}.valueSchema"), "must be integer or string");
                    return None;
                }
            };
            let mut values = Vec::new();
            for (i, ev) in o
                .get("enumValues")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let eat = format!("{at}.enumValues[{i}]");
                let Some(eo) = ev.as_object() else { continue };
                let n = name_of(eo, ctx, &eat)?;
                let val = eo.get("enumValue").cloned().unwrap_or(Value::Null);
                let good = match value {
                    Primitive::Integer => val.as_i64().is_some(),
                    _ => val.is_string(),
                };
                if !good {
                    ctx.err(
                        &eat,
                        format!(
                            "enumValue must be a{} matching valueSchema",
                            if value == Primitive::Integer {
                                "n integer"
                            } else {
                                " string"
                            }
                        ),
                    );
                }
                if values
                    .iter()
                    .any(|(vn, vv): &(String, Value)| *vn == n || *vv == val)
                {
                    ctx.err(&eat, "enum names and values must be unique");
                }
                values.push((n, val));
            }
            Some(Schema::Enum { value, values })
        }
        "Object" => {
            let mut fields = Vec::new();
            for (i, f) in o
                .get("fields")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let fat = format!("{at}.fields[{i}]");
                let Some(fo) = f.as_object() else { continue };
                let n = name_of(fo, ctx, &fat)?;
                if fields
                    .iter()
                    .any(|(fname, _): &(String, Schema)| *fname == n)
                {
                    ctx.err(&fat, format!("duplicate field name '{n}'"));
                }
                fields.push((n, schema_field(fo, "schema", ctx, &fat)?));
            }
            Some(Schema::Object { fields })
        }
        "Map" => {
            let key = o.get("mapKey").and_then(Value::as_object);
            let value = o.get("mapValue").and_then(Value::as_object);
            let (Some(k), Some(v)) = (key, value) else {
                ctx.err(at, "a Map needs mapKey and mapValue");
                return None;
            };
            if k.get("schema").and_then(Value::as_str) != Some("string") {
                ctx.err(&format!("{at}.mapKey.schema"), "must be string");
            }
            let kn = name_of(k, ctx, &format!("{at}.mapKey"))?;
            let vn = name_of(v, ctx, &format!("{at}.mapValue"))?;
            Some(Schema::Map {
                key_name: kn,
                value_name: vn,
                value: Box::new(schema_field(v, "schema", ctx, &format!("{at}.mapValue"))?),
            })
        }
        "Array" => Some(Schema::Array {
            element: Box::new(schema_field(o, "elementSchema", ctx, at)?),
        }),
        _ => {
            ctx.err(at, "@type must be Enum, Object, Map or Array");
            None
        }
    }
}
