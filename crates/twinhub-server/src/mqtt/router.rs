//! The subscription trie: one per tenant, so tenants never see each
//! other's topics. Matching walks the topic's levels once, collecting
//! exact, `+` and `#` subscribers. Pure; property-tested against the
//! reference matcher in `topic.rs`.

use std::collections::HashMap;
use std::sync::Arc;

/// One subscription of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct Sub {
    pub client: Arc<str>,
    /// The filter as subscribed (without `$share/group/`).
    pub filter: Arc<str>,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub sub_id: Option<usize>,
    pub share: Option<Arc<str>>,
    /// Who reads through it: a wildcard may match topics the subscriber
    /// may not read, so each message is checked against this.
    pub reader: super::acl::Reader,
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    hash: Vec<Sub>,
    here: Vec<Sub>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.here.is_empty()
    }
}

#[derive(Default, Debug)]
pub struct Router {
    tenants: HashMap<Arc<str>, Node>,
    count: usize,
}

fn same(a: &Sub, b: &Sub) -> bool {
    a.client == b.client && a.share == b.share
}

impl Router {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces (same client, same share group, same filter) a
    /// subscription. Returns true when it replaced one.
    pub fn subscribe(&mut self, tenant: &Arc<str>, sub: Sub) -> bool {
        let mut node = self.tenants.entry(tenant.clone()).or_default();
        let filter = sub.filter.clone();
        let mut levels = filter.split('/').peekable();
        let list = loop {
            let level = levels.next().expect("split yields at least one level");
            let last = levels.peek().is_none();
            if level == "#" {
                break &mut node.hash;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            if last {
                break &mut node.here;
            }
        };
        match list.iter_mut().find(|s| same(s, &sub)) {
            Some(s) => {
                *s = sub;
                true
            }
            None => {
                list.push(sub);
                self.count += 1;
                false
            }
        }
    }

    pub fn unsubscribe(
        &mut self,
        tenant: &str,
        filter: &str,
        client: &str,
        share: Option<&str>,
    ) -> bool {
        let Some(root) = self.tenants.get_mut(tenant) else {
            return false;
        };
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove(root, &levels, client, share);
        if removed {
            self.count -= 1;
            if root.is_empty() {
                self.tenants.remove(tenant);
            }
        }
        removed
    }

    /// Every subscription matching `topic` in `tenant`.
    pub fn matches(&self, tenant: &str, topic: &str, out: &mut Vec<Sub>) {
        let Some(root) = self.tenants.get(tenant) else {
            return;
        };
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        collect(root, &levels, 0, dollar, out);
    }
}

fn remove(node: &mut Node, levels: &[&str], client: &str, share: Option<&str>) -> bool {
    let hit = |s: &Sub| &*s.client == client && s.share.as_deref() == share;
    let (first, rest) = (levels[0], &levels[1..]);
    if first == "#" {
        let before = node.hash.len();
        node.hash.retain(|s| !hit(s));
        return node.hash.len() != before;
    }
    let child = if first == "+" {
        match node.plus.as_deref_mut() {
            Some(c) => c,
            None => return false,
        }
    } else {
        match node.children.get_mut(first) {
            Some(c) => c,
            None => return false,
        }
    };
    let removed = if rest.is_empty() {
        let before = child.here.len();
        child.here.retain(|s| !hit(s));
        child.here.len() != before
    } else {
        remove(child, rest, client, share)
    };
    if removed && child.is_empty() {
        if first == "+" {
            node.plus = None;
        } else {
            node.children.remove(first);
        }
    }
    removed
}

fn collect(node: &Node, levels: &[&str], depth: usize, dollar: bool, out: &mut Vec<Sub>) {
    // [MQTT-4.7.2-1]: wildcards at the first level never match `$` topics.
    let wild_ok = !(dollar && depth == 0);
    if wild_ok {
        out.extend(node.hash.iter().cloned());
    }
    let Some((first, rest)) = levels.split_first() else {
        return;
    };
    if let Some(child) = node.children.get(*first) {
        if rest.is_empty() {
            out.extend(child.here.iter().cloned());
            // "a/#" matches "a" too.
            out.extend(child.hash.iter().cloned());
        } else {
            collect(child, rest, depth + 1, dollar, out);
        }
    }
    if wild_ok {
        if let Some(child) = node.plus.as_deref() {
            if rest.is_empty() {
                out.extend(child.here.iter().cloned());
                out.extend(child.hash.iter().cloned());
            } else {
                collect(child, rest, depth + 1, dollar, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topic::matches;
    use proptest::prelude::*;

    fn sub(client: &str, filter: &str) -> Sub {
        Sub {
            client: client.into(),
            filter: filter.into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            sub_id: None,
            share: None,
            reader: crate::mqtt::acl::Reader::All,
        }
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$x".to_string())
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut l, hash)| {
                if hash {
                    l.push("#".into());
                }
                l.join("/")
            })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_the_reference_matcher(
            filters in proptest::collection::vec(filter(), 1..12),
            topic in proptest::collection::vec(level(), 1..5),
            removed in proptest::collection::vec(any::<bool>(), 12),
        ) {
            let topic = topic.join("/");
            let t: Arc<str> = "t1".into();
            let mut r = Router::default();
            for (i, f) in filters.iter().enumerate() {
                r.subscribe(&t, sub(&format!("c{i}"), f));
            }
            for (i, f) in filters.iter().enumerate() {
                if removed[i] {
                    let removed_one = r.unsubscribe("t1", f, &format!("c{i}"), None);
                    prop_assert!(removed_one);
                }
            }
            let mut got = Vec::new();
            r.matches("t1", &topic, &mut got);
            let mut got: Vec<String> = got.into_iter().map(|s| s.client.to_string()).collect();
            got.sort();
            let mut want: Vec<String> = filters.iter().enumerate()
                .filter(|(i, f)| !removed[*i] && matches(&topic, f))
                .map(|(i, _)| format!("c{i}")).collect();
            want.sort();
            prop_assert_eq!(got, want);
            let mut other = Vec::new();
            r.matches("t2", &topic, &mut other);
            prop_assert!(other.is_empty(), "tenants are separate");
        }
    }

    #[test]
    fn resubscribing_replaces() {
        let t: Arc<str> = "t".into();
        let mut r = Router::default();
        assert!(!r.subscribe(&t, sub("c", "a/+")));
        let mut s2 = sub("c", "a/+");
        s2.qos = 2;
        assert!(r.subscribe(&t, s2));
        assert_eq!(r.len(), 1);
        let mut out = Vec::new();
        r.matches("t", "a/x", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].qos, 2);
        assert!(r.unsubscribe("t", "a/+", "c", None));
        assert!(r.is_empty());
        assert!(!r.unsubscribe("t", "a/+", "c", None));
    }
}
