use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A small plant: two reactors in line1, one in line2, sensors on r1.
struct Mem {
    twins: BTreeMap<String, Value>,
    rels: Vec<Value>,
}

fn plant() -> Mem {
    let t = |id: &str, model: &str, extra: Value| {
        let mut v = json!({"$dtId": id, "$etag": "W/\"1\"", "$metadata": {"$model": model}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        (id.to_string(), v)
    };
    let twins = [
        t("line1", "dtmi:x:Line;1", json!({"name": "Line 1"})),
        t("line2", "dtmi:x:Line;1", json!({"name": "Line 2"})),
        t(
            "r1",
            "dtmi:x:Reactor;1",
            json!({"name": "R-101", "temperature": 372.5, "running": true, "spec": {"volume": 10}}),
        ),
        t(
            "r2",
            "dtmi:x:Reactor;1",
            json!({"name": "R-102", "temperature": 351.0, "running": false}),
        ),
        t(
            "r3",
            "dtmi:x:BigReactor;1",
            json!({"name": "R-201", "temperature": 380.0}),
        ),
        t("s1", "dtmi:x:Sensor;1", json!({"kind": "pressure"})),
    ]
    .into_iter()
    .collect();
    let r = |id: &str, src: &str, name: &str, tgt: &str, extra: Value| {
        let mut v = json!({"$relationshipId": id, "$sourceId": src, "$relationshipName": name, "$targetId": tgt});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    Mem {
        twins,
        rels: vec![
            r("c1", "line1", "contains", "r1", json!({"since": "2020"})),
            r("c2", "line1", "contains", "r2", json!({"since": "2024"})),
            r("c3", "line2", "contains", "r3", json!({})),
            r("h1", "r1", "hasSensor", "s1", json!({})),
        ],
    }
}

impl Graph for Mem {
    fn twin_ids(&self) -> Vec<Arc<str>> {
        self.twins.keys().map(|k| k.as_str().into()).collect()
    }
    fn twin(&self, id: &str) -> Option<Value> {
        self.twins.get(id).cloned()
    }
    fn candidates(&self, hint: &Hint) -> Option<Vec<Arc<str>>> {
        match hint {
            Hint::Id(id) => Some(
                self.twins
                    .contains_key(id)
                    .then(|| id.as_str().into())
                    .into_iter()
                    .collect(),
            ),
            _ => None,
        }
    }
    fn outgoing(&self, source: &str, name: &str) -> Vec<Value> {
        self.rels
            .iter()
            .filter(|r| r["$sourceId"] == source && r["$relationshipName"] == name)
            .cloned()
            .collect()
    }
    fn relationships(&self, source: Option<&str>) -> Vec<Value> {
        self.rels
            .iter()
            .filter(|r| source.is_none_or(|s| r["$sourceId"] == s))
            .cloned()
            .collect()
    }
    fn is_of_model(&self, model: &str, base: &str, exact: bool) -> bool {
        model == base || (!exact && model == "dtmi:x:BigReactor;1" && base == "dtmi:x:Reactor;1")
    }
}

fn run(q: &str) -> Vec<Value> {
    execute(
        &parse(q).unwrap_or_else(|e| panic!("{q}: {e}")),
        &plant(),
        0,
        1000,
    )
    .unwrap_or_else(|e| panic!("{q}: {e}"))
    .items
}

fn ids(v: &[Value]) -> Vec<String> {
    v.iter()
        .map(|t| t["$dtId"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn selects_filters_and_functions() {
    assert_eq!(run("SELECT * FROM DIGITALTWINS").len(), 6);
    assert_eq!(
        ids(&run("SELECT * FROM DIGITALTWINS WHERE $dtId = 'r2'")),
        ["r2"]
    );
    assert_eq!(
        ids(&run(
            "SELECT T FROM DIGITALTWINS T WHERE T.temperature > 370"
        )),
        ["r1", "r3"]
    );
    assert_eq!(
        ids(&run(
            "select t from digitaltwins t where IS_OF_MODEL(t, 'dtmi:x:Reactor;1')"
        )),
        ["r1", "r2", "r3"]
    );
    assert_eq!(
        ids(&run(
            "SELECT T FROM DIGITALTWINS T WHERE IS_OF_MODEL(T, 'dtmi:x:Reactor;1', exact)"
        )),
        ["r1", "r2"]
    );
    assert_eq!(
        ids(&run(
            "SELECT * FROM DIGITALTWINS WHERE IS_OF_MODEL('dtmi:x:Line;1')"
        )),
        ["line1", "line2"]
    );
    assert_eq!(
        ids(&run(
            "SELECT T FROM DIGITALTWINS T WHERE T.running = false OR T.spec.volume >= 10"
        )),
        ["r1", "r2"]
    );
    assert_eq!(
        ids(&run(
            "SELECT T FROM DIGITALTWINS T WHERE NOT IS_DEFINED(T.temperature)"
        )),
        ["line1", "line2", "s1"]
    );
    assert_eq!(
        ids(&run(
            "SELECT T FROM DIGITALTWINS T WHERE T.name IN ['R-101', 'Line 2']"
        )),
        ["line2", "r1"]
    );
    assert_eq!(
        ids(&run(
            "SELECT T FROM DIGITALTWINS T WHERE T.name NIN ['R-101'] AND STARTSWITH(T.name, 'R-')"
        )),
        ["r2", "r3"]
    );
    assert_eq!(
        ids(&run("SELECT T FROM DIGITALTWINS T WHERE IS_OBJECT(T.spec)")),
        ["r1"]
    );
    assert_eq!(ids(&run("SELECT T FROM DIGITALTWINS T WHERE CONTAINS(T.name, '20') AND IS_NUMBER(T.temperature)")), ["r3"]);
    assert_eq!(
        run("SELECT COUNT() FROM DIGITALTWINS T WHERE T.temperature < 375"),
        [json!({"COUNT": 2})]
    );
    assert_eq!(run("SELECT TOP(2) * FROM DIGITALTWINS").len(), 2);
    assert_eq!(
        run("SELECT T.name, T.temperature AS t FROM DIGITALTWINS T WHERE T.$dtId = 'r1'"),
        [json!({"T.name": "R-101", "t": 372.5})]
    );
}

#[test]
fn joins_follow_relationships() {
    let rows = run("SELECT T, R, C FROM DIGITALTWINS T JOIN C RELATED T.contains R WHERE T.$dtId = 'line1' AND R.since > '2021'");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["C"]["$dtId"], "r2");
    assert_eq!(rows[0]["R"]["$relationshipId"], "c2");
    let two = run("SELECT S FROM DIGITALTWINS L JOIN R RELATED L.contains JOIN S RELATED R.hasSensor WHERE L.$dtId = 'line1'");
    assert_eq!(ids(&two), ["s1"]);
    let rels = run("SELECT R FROM RELATIONSHIPS R WHERE R.$sourceId = 'line1'");
    assert_eq!(rels.len(), 2);
    assert_eq!(
        run("SELECT COUNT() FROM RELATIONSHIPS R WHERE R.$relationshipName = 'contains'"),
        [json!({"COUNT": 3})]
    );
}

#[test]
fn paging_continues_where_it_stopped() {
    let q = parse("SELECT * FROM DIGITALTWINS").unwrap();
    let g = plant();
    let p1 = execute(&q, &g, 0, 4).unwrap();
    assert_eq!(p1.items.len(), 4);
    let p2 = execute(&q, &g, p1.next.unwrap(), 4).unwrap();
    assert_eq!(p2.items.len(), 2);
    assert_eq!(p2.next, None);
    let mut all = ids(&p1.items);
    all.extend(ids(&p2.items));
    assert_eq!(all, ids(&run("SELECT * FROM DIGITALTWINS")));
}

#[test]
fn syntax_errors_point_at_the_position() {
    let e = parse("SELECT * FROM DIGITALTWINZ").unwrap_err();
    assert_eq!(e.pos, 14);
    assert!(e.message.contains("DIGITALTWINS"), "{e}");
    let e = parse("SELECT * FROM DIGITALTWINS T WHERE T.x =").unwrap_err();
    assert_eq!(e.pos, 40);
    let e = parse("SELECT * FROM DIGITALTWINS T WHERE FROB(T.x)").unwrap_err();
    assert!(e.message.contains("unknown function"), "{e}");
    let six = "SELECT * FROM DIGITALTWINS T JOIN A RELATED T.r JOIN B RELATED A.r JOIN C RELATED B.r JOIN D RELATED C.r JOIN E RELATED D.r JOIN F RELATED E.r";
    assert!(parse(six).unwrap_err().message.contains("5 JOINs"));
    let e = execute(
        &parse("SELECT * FROM DIGITALTWINS T WHERE X.a = 1").unwrap(),
        &plant(),
        0,
        10,
    )
    .unwrap_err();
    assert!(e.0.contains("'X' is not an alias"), "{e}");
}

proptest! {
    #[test]
    fn garbage_never_panics(s in "\\PC{0,80}") {
        if let Ok(q) = parse(&s) {
            let _ = execute(&q, &plant(), 0, 10);
        }
    }

    /// Comparison filters agree with filtering the documents directly.
    #[test]
    fn numeric_filters_agree_with_a_direct_scan(threshold in 340.0f64..390.0, op in prop_oneof![Just(">"), Just(">="), Just("<"), Just("<="), Just("="), Just("!=")]) {
        let got = ids(&run(&format!("SELECT T FROM DIGITALTWINS T WHERE T.temperature {op} {threshold}")));
        let want: Vec<String> = plant().twins.values().filter(|t| t["temperature"].as_f64().is_some_and(|x| match op {
            ">" => x > threshold, ">=" => x >= threshold, "<" => x < threshold, "<=" => x <= threshold, "=" => x == threshold, _ => x != threshold,
        })).map(|t| t["$dtId"].as_str().unwrap().to_string()).collect();
        prop_assert_eq!(got, want);
    }
}
