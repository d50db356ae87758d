//! The inheritance rules of the DTDL v3 specification
//! (DTDL.Specification.v3.md), each test named after the requirement it
//! checks. A diamond — one element reached through two `extends` paths —
//! is one element (an element "referentially included in the contents of
//! Interface X" through any path of extends is the same element); two
//! different definitions of one name are refused, naming both.

use super::*;
use serde_json::{json, Value};

fn set(v: Value) -> Result<ModelSet, Vec<ModelError>> {
    ModelSet::default().with(parse_models(serde_json::to_vec(&v).unwrap().as_slice())?)
}

fn iface(id: &str, extends: &[&str], contents: Value) -> Value {
    let mut o = json!({"@context": "dtmi:dtdl:context;3", "@id": id, "@type": "Interface", "contents": contents});
    if !extends.is_empty() {
        o["extends"] = json!(extends);
    }
    o
}

/// D defines `contents`; B and C extend D; A extends B and C.
fn diamond(contents: Value) -> Value {
    json!([
        iface("dtmi:x:D;1", &[], contents),
        iface("dtmi:x:B;1", &["dtmi:x:D;1"], json!([])),
        iface("dtmi:x:C;1", &["dtmi:x:D;1"], json!([])),
        iface("dtmi:x:A;1", &["dtmi:x:B;1", "dtmi:x:C;1"], json!([])),
    ])
}

fn resolved(s: &ModelSet, id: &str) -> std::sync::Arc<Resolved> {
    s.resolved(&Dtmi::parse(id).unwrap()).unwrap().clone()
}

#[test]
fn requirement_name_unique_among_interface_contents_v3_a_diamond_is_one_element() {
    let mut models = diamond(json!([
        {"@type": "Property", "name": "p", "schema": "double", "writable": true},
        {"@type": "Telemetry", "name": "t", "schema": "double"},
        {"@type": "Command", "name": "reset"},
        {"@type": "Relationship", "name": "feeds", "target": "dtmi:x:D;1"},
        {"@type": "Component", "name": "jacket", "schema": "dtmi:x:J;1"}
    ]));
    models.as_array_mut().unwrap().push(iface(
        "dtmi:x:J;1",
        &[],
        json!([{"@type": "Property", "name": "coolant", "schema": "string"}]),
    ));
    let s = set(models).unwrap();
    let a = resolved(&s, "dtmi:x:A;1");
    let d = Dtmi::parse("dtmi:x:D;1").unwrap();
    assert!(a.properties.contains_key("p"));
    assert!(a.telemetry.contains_key("t"));
    assert!(a.commands.contains("reset"));
    assert!(a.relationships.contains_key("feeds"));
    assert!(a.components.contains_key("jacket"));
    for n in ["p", "t", "reset", "feeds", "jacket"] {
        assert_eq!(a.origin[n], d, "{n} is D's element");
    }
    assert!(s.is_a(&Dtmi::parse("dtmi:x:A;1").unwrap(), &d));
}

#[test]
fn requirement_name_unique_among_interface_contents_v3_a_deeper_diamond() {
    // A extends B and C; B extends D; C extends E, which extends D.
    let s = set(json!([
        iface(
            "dtmi:x:D;1",
            &[],
            json!([{"@type": "Property", "name": "p", "schema": "double"}])
        ),
        iface("dtmi:x:E;1", &["dtmi:x:D;1"], json!([])),
        iface("dtmi:x:B;1", &["dtmi:x:D;1"], json!([])),
        iface("dtmi:x:C;1", &["dtmi:x:E;1"], json!([])),
        iface("dtmi:x:A;1", &["dtmi:x:B;1", "dtmi:x:C;1"], json!([])),
    ]))
    .unwrap();
    assert!(resolved(&s, "dtmi:x:A;1").properties.contains_key("p"));
}

#[test]
fn requirement_name_unique_among_interface_contents_v3_two_definitions_are_refused() {
    let errs = set(json!([
        iface(
            "dtmi:x:B;1",
            &[],
            json!([{"@type": "Property", "name": "p", "schema": "double"}])
        ),
        iface(
            "dtmi:x:C;1",
            &[],
            json!([{"@type": "Property", "name": "p", "schema": "double"}])
        ),
        iface("dtmi:x:A;1", &["dtmi:x:B;1", "dtmi:x:C;1"], json!([])),
    ]))
    .unwrap_err();
    assert!(
        errs.iter().any(|e| e.interface == "dtmi:x:A;1"
            && e.element == "p"
            && e.rule.contains("dtmi:x:B;1")
            && e.rule.contains("dtmi:x:C;1")),
        "{errs:?}"
    );
    // Redefining an inherited name is a second definition too.
    let errs = set(json!([
        iface(
            "dtmi:x:D;1",
            &[],
            json!([{"@type": "Telemetry", "name": "t", "schema": "double"}])
        ),
        iface(
            "dtmi:x:A;1",
            &["dtmi:x:D;1"],
            json!([{"@type": "Property", "name": "t", "schema": "double"}])
        ),
    ]))
    .unwrap_err();
    assert!(
        errs.iter().any(|e| e.element == "t"
            && e.rule.contains("dtmi:x:D;1")
            && e.rule.contains("dtmi:x:A;1")),
        "{errs:?}"
    );
}

fn chain(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                let ext = format!("dtmi:x:L{};1", i.max(1) - 1);
                let exts: Vec<&str> = if i > 0 { vec![ext.as_str()] } else { vec![] };
                iface(&format!("dtmi:x:L{i};1"), &exts, json!([]))
            })
            .collect(),
    )
}

#[test]
fn requirement_class_interface_properties_extends_max_depth_v3() {
    // L10 → … → L0 is a path of 10 "extends" members: allowed.
    assert!(set(chain(11)).is_ok());
    // One more is not.
    let errs = set(chain(12)).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.element == "extends" && e.rule.contains("10")),
        "{errs:?}"
    );
}

#[test]
fn requirement_class_interface_properties_extends_self_reference_v3() {
    let errs = set(iface("dtmi:x:A;1", &["dtmi:x:A;1"], json!([]))).unwrap_err();
    assert!(errs.iter().any(|e| e.rule.contains("cycle")), "{errs:?}");
}

#[test]
fn requirement_class_interface_properties_extends_max_count_v3() {
    let bases = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| iface(&format!("dtmi:x:B{i};1"), &[], json!([])))
            .collect()
    };
    let with = |n: usize| {
        let ids: Vec<String> = (0..n).map(|i| format!("dtmi:x:B{i};1")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut all = bases(n);
        all.push(iface("dtmi:x:A;1", &refs, json!([])));
        set(Value::Array(all))
    };
    assert!(with(1024).is_ok());
    let errs = with(1025).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.interface == "dtmi:x:A;1" && e.rule.contains("1024")),
        "{errs:?}"
    );
}

#[test]
fn limits_contents_values_including_extends_at_most_100000() {
    // Two bases of 50,001 contents each: fine alone, too many together.
    let base = |id: &str, prefix: &str| {
        let contents: Vec<Value> = (0..25_001)
            .map(|i| json!({"@type": "Telemetry", "name": format!("{prefix}{i}"), "schema": "double"}))
            .collect();
        iface(id, &[], Value::Array(contents))
    };
    let errs = set(json!([
        base("dtmi:x:B;1", "b"),
        base("dtmi:x:C;1", "c"),
        iface("dtmi:x:A;1", &["dtmi:x:B;1", "dtmi:x:C;1"], json!([])),
    ]))
    .unwrap_err();
    assert_eq!(errs.len(), 1, "only A breaks the limit: {errs:?}");
    assert!(
        errs[0].interface == "dtmi:x:A;1" && errs[0].rule.contains("100000"),
        "{errs:?}"
    );
}

#[test]
fn requirement_class_interface_id_duplicate_v3_across_an_upload() {
    // Two interfaces with one @id.
    let errs = parse_models(
        serde_json::to_vec(&json!([
            iface("dtmi:x:A;1", &[], json!([])),
            iface("dtmi:x:A;1", &[], json!([]))
        ]))
        .unwrap()
        .as_slice(),
    )
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.element == "@id" && e.rule.contains("unique")),
        "{errs:?}"
    );
    // An inline schema that takes an interface's @id.
    let errs = parse_models(
        serde_json::to_vec(&json!([
            iface("dtmi:x:A;1", &[], json!([])),
            iface("dtmi:x:B;1", &[], json!([{"@type": "Property", "name": "p",
                "schema": {"@id": "dtmi:x:A;1", "@type": "Object", "fields": [{"name": "f", "schema": "double"}]}}]))
        ]))
        .unwrap()
        .as_slice(),
    )
    .unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.interface == "dtmi:x:B;1" && e.rule.contains("dtmi:x:A;1")),
        "{errs:?}"
    );
}
