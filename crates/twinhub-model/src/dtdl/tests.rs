//! DTDL examples written from the DTDL v3 specification, and property
//! tests over generated models.

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn parse(v: serde_json::Value) -> Result<Vec<Interface>, Vec<ModelError>> {
    parse_models(serde_json::to_vec(&v).unwrap().as_slice())
}

fn set(v: serde_json::Value) -> Result<ModelSet, Vec<ModelError>> {
    ModelSet::default().with(parse(v)?)
}

fn thermostat() -> serde_json::Value {
    json!({
        "@context": "dtmi:dtdl:context;3",
        "@id": "dtmi:com:example:Thermostat;1",
        "@type": "Interface",
        "displayName": "Thermostat",
        "contents": [
            {"@type": ["Telemetry", "Temperature"], "name": "temperature", "schema": "double", "unit": "degreeCelsius"},
            {"@type": "Property", "name": "targetTemperature", "schema": "double", "writable": true},
            {"@type": "Property", "name": "mode", "schema": {"@type": "Enum", "valueSchema": "string", "enumValues": [
                {"name": "heat", "enumValue": "heat"}, {"name": "cool", "enumValue": "cool"}]}},
            {"@type": "Command", "name": "getMaxMinReport",
             "request": {"name": "since", "schema": "dateTime"},
             "response": {"name": "report", "schema": {"@type": "Object", "fields": [{"name": "maxTemp", "schema": "double"}]}}}
        ]
    })
}

#[test]
fn the_thermostat_example_parses_and_validates_twins() {
    let s = set(thermostat()).unwrap();
    let id = Dtmi::parse("dtmi:com:example:Thermostat;1").unwrap();
    let r = s.resolved(&id).unwrap();
    assert!(r.telemetry.contains_key("temperature"));
    assert!(r.properties["targetTemperature"].1);
    assert!(r.commands.contains("getMaxMinReport"));
    let ok = json!({"targetTemperature": 21.5, "mode": "heat"});
    s.check_twin(&id, ok.as_object().unwrap(), "").unwrap();
    for (bad, element) in [
        (json!({"targetTemperature": "warm"}), "targetTemperature"),
        (json!({"mode": "dry"}), "mode"),
        (json!({"temperature": 20}), "temperature"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let e = s.check_twin(&id, bad.as_object().unwrap(), "").unwrap_err();
        assert_eq!(e.element, element, "{e}");
    }
}

#[test]
fn components_and_extends_from_the_spec() {
    let v = json!([
        thermostat(),
        {
            "@context": "dtmi:dtdl:context;3",
            "@id": "dtmi:com:example:DeviceInformation;1",
            "@type": "Interface",
            "contents": [{"@type": "Property", "name": "manufacturer", "schema": "string"}]
        },
        {
            "@context": ["dtmi:dtdl:context;3", "dtmi:dtdl:extension:quantitativeTypes;1"],
            "@id": "dtmi:com:example:TemperatureController;1",
            "@type": "Interface",
            "extends": "dtmi:com:example:DeviceInformation;1",
            "contents": [
                {"@type": "Component", "name": "thermostat1", "schema": "dtmi:com:example:Thermostat;1"},
                {"@type": "Component", "name": "thermostat2", "schema": "dtmi:com:example:Thermostat;1"},
                {"@type": ["Telemetry", "Temperature"], "name": "workingSet", "schema": "double", "unit": "kelvin"}
            ]
        }
    ]);
    let s = set(v).unwrap();
    let tc = Dtmi::parse("dtmi:com:example:TemperatureController;1").unwrap();
    let base = Dtmi::parse("dtmi:com:example:DeviceInformation;1").unwrap();
    assert!(s.is_a(&tc, &base));
    let twin = json!({"manufacturer": "ACME", "thermostat1": {"$metadata": {}, "targetTemperature": 20}, "thermostat2": {"$metadata": {}}});
    s.check_twin(&tc, twin.as_object().unwrap(), "").unwrap();
    let bad = json!({"thermostat1": {"targetTemperature": true}});
    assert_eq!(
        s.check_twin(&tc, bad.as_object().unwrap(), "")
            .unwrap_err()
            .element,
        "thermostat1.targetTemperature"
    );
    assert!(s.telemetry_schema(&tc, "thermostat1.temperature").is_some());
    assert!(s.telemetry_schema(&tc, "thermostat1.nothing").is_none());
    assert_eq!(s.dependents(&base), vec![tc.clone()]);
}

#[test]
fn complex_schemas_and_named_schemas() {
    let v = json!({
        "@context": "dtmi:dtdl:context;3",
        "@id": "dtmi:com:example:Complex;1",
        "@type": "Interface",
        "schemas": [{"@id": "dtmi:com:example:Point;1", "@type": "Object", "fields": [
            {"name": "x", "schema": "double"}, {"name": "y", "schema": "double"}]}],
        "contents": [
            {"@type": "Property", "name": "location", "schema": "dtmi:com:example:Point;1"},
            {"@type": "Property", "name": "tags", "schema": {"@type": "Map",
                "mapKey": {"name": "tag", "schema": "string"}, "mapValue": {"name": "value", "schema": "integer"}}},
            {"@type": "Property", "name": "history", "schema": {"@type": "Array", "elementSchema": "date"}},
            {"@type": "Property", "name": "interval", "schema": "duration"},
            {"@type": "Property", "name": "opens", "schema": "time"}
        ]
    });
    let s = set(v).unwrap();
    let id = Dtmi::parse("dtmi:com:example:Complex;1").unwrap();
    let good = json!({"location": {"x": 1, "y": 2}, "tags": {"a": 1}, "history": ["2026-01-02"], "interval": "PT5M", "opens": "08:30:00"});
    s.check_twin(&id, good.as_object().unwrap(), "").unwrap();
    for (bad, el) in [
        (json!({"location": {"z": 1}}), "location"),
        (json!({"tags": {"a": 1.5}}), "tags"),
        (json!({"history": ["yesterday"]}), "history"),
        (json!({"interval": "5 minutes"}), "interval"),
    ] {
        let e = s.check_twin(&id, bad.as_object().unwrap(), "").unwrap_err();
        assert_eq!(e.element, el, "{e}");
    }
}

#[test]
fn invalid_models_name_the_interface_element_and_rule() {
    let cases = vec![
        (
            json!({"@context": "dtmi:dtdl:context;3", "@id": "not-a-dtmi", "@type": "Interface"}),
            "@id",
            "DTMI",
        ),
        (
            json!({"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:A;1", "@type": "Interface", "extends": "dtmi:x:Missing;1"}),
            "extends[0]",
            "unresolved",
        ),
        (
            json!({"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:A;1", "@type": "Interface", "contents": [
            {"@type": "Property", "name": "a", "schema": "double"}, {"@type": "Telemetry", "name": "a", "schema": "double"}]}),
            "a",
            "duplicate",
        ),
        (
            json!({"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:A;1", "@type": "Interface", "contents": [
            {"@type": "Property", "name": "a", "schema": "decimal"}]}),
            "contents[0] (a).schema",
            "not a schema",
        ),
        (
            json!({"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:A;1", "@type": "Interface", "contents": [
            {"@type": "Property", "name": "1a", "schema": "double"}]}),
            "contents[0] (1a)",
            "name",
        ),
        (
            json!({"@id": "dtmi:x:A;1", "@type": "Interface"}),
            "@context",
            "context",
        ),
    ];
    for (v, element, rule) in cases {
        let errs = set(v.clone()).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.element == element && e.rule.contains(rule)),
            "{v}: {errs:?}"
        );
        assert!(
            errs.iter().all(|e| e.interface.starts_with("dtmi:x:A;1")
                || e.interface.starts_with('[')
                || e.interface == "not-a-dtmi"),
            "{errs:?}"
        );
    }
}

#[test]
fn extends_cycles_and_depth_are_refused() {
    let cyc = json!([
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:A;1", "@type": "Interface", "extends": "dtmi:x:B;1"},
        {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:B;1", "@type": "Interface", "extends": "dtmi:x:A;1"}
    ]);
    assert!(set(cyc)
        .unwrap_err()
        .iter()
        .any(|e| e.rule.contains("cycle")));
    let chain: Vec<serde_json::Value> = (0..13)
        .map(|i| {
            let mut o = json!({"@context": "dtmi:dtdl:context;3", "@id": format!("dtmi:x:L{i};1"), "@type": "Interface"});
            if i > 0 {
                o["extends"] = json!(format!("dtmi:x:L{};1", i - 1));
            }
            o
        })
        .collect();
    assert!(set(serde_json::Value::Array(chain))
        .unwrap_err()
        .iter()
        .any(|e| e.rule.contains("10 levels")));
}

#[test]
fn relationships_multiplicity_and_inline_interfaces() {
    let v = json!({
        "@context": "dtmi:dtdl:context;3",
        "@id": "dtmi:x:Room;1",
        "@type": "Interface",
        "extends": {"@id": "dtmi:x:Space;1", "@type": "Interface", "contents": [{"@type": "Property", "name": "area", "schema": "double"}]},
        "contents": [{"@type": "Relationship", "name": "isPartOf", "target": "dtmi:x:Space;1", "maxMultiplicity": 1,
                      "properties": [{"@type": "Property", "name": "since", "schema": "date"}]}]
    });
    let s = set(v).unwrap();
    let room = Dtmi::parse("dtmi:x:Room;1").unwrap();
    let r = s.resolved(&room).unwrap();
    assert!(
        r.properties.contains_key("area"),
        "inherited from the inline interface"
    );
    assert_eq!(r.relationships["isPartOf"].max, Some(1));
    let bad = json!({"@context": "dtmi:dtdl:context;3", "@id": "dtmi:y:R;1", "@type": "Interface", "contents": [
        {"@type": "Relationship", "name": "r", "minMultiplicity": 3, "maxMultiplicity": 2}]});
    assert!(set(bad)
        .unwrap_err()
        .iter()
        .any(|e| e.rule.contains("minMultiplicity")));
}

#[test]
fn byte_order_marks_language_maps_and_duplicate_uploads() {
    let mut bytes = vec![0xEF, 0xBB, 0xBF];
    bytes.extend(
        serde_json::to_vec(
            &json!({"@context": "dtmi:dtdl:context;3", "@id": "dtmi:x:A;1", "@type": "Interface",
        "displayName": {"en": "Asset", "ja": "資産"}}),
        )
        .unwrap(),
    );
    let ifaces = parse_models(&bytes).unwrap();
    assert_eq!(ifaces[0].display_name.as_ref().unwrap()["ja"], "資産");
    let s = ModelSet::default().with(ifaces.clone()).unwrap();
    let again = s.with(ifaces).unwrap_err();
    assert!(again[0].rule.contains("already exists"));
}

prop_compose! {
    /// A random but valid chain of interfaces, each extending the previous
    /// one and holding a few uniquely named properties.
    fn valid_models()(n in 1usize..6, props in proptest::collection::vec(1usize..4, 6)) -> serde_json::Value {
        let ifaces: Vec<serde_json::Value> = (0..n).map(|i| {
            let contents: Vec<serde_json::Value> = (0..props[i]).map(|p| json!({"@type": "Property", "name": format!("p{i}_{p}"), "schema": "double"})).collect();
            let mut o = json!({"@context": "dtmi:dtdl:context;3", "@id": format!("dtmi:gen:M{i};1"), "@type": "Interface", "contents": contents});
            if i > 0 { o["extends"] = json!(format!("dtmi:gen:M{};1", i - 1)); }
            o
        }).collect();
        serde_json::Value::Array(ifaces)
    }
}

proptest! {
    #[test]
    fn generated_valid_models_load_and_resolve(v in valid_models()) {
        let n = v.as_array().unwrap().len();
        let s = set(v).unwrap();
        let last = Dtmi::parse(&format!("dtmi:gen:M{};1", n - 1)).unwrap();
        prop_assert_eq!(s.resolved(&last).unwrap().ancestors.len(), n);
    }

    #[test]
    fn removing_any_interface_of_a_chain_is_named_in_the_error(v in valid_models(), k in 0usize..5) {
        let mut arr = v.as_array().unwrap().clone();
        prop_assume!(arr.len() > 1 && k < arr.len() - 1);
        arr.remove(k);
        let errs = set(serde_json::Value::Array(arr)).unwrap_err();
        let missing = format!("dtmi:gen:M{k};1");
        prop_assert!(errs.iter().any(|e| e.rule.contains(&missing)), "{:?}", errs);
    }

    #[test]
    fn the_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_models(&bytes);
    }
}
