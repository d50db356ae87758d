//! `ai.onnx.ml` TreeEnsembleRegressor and TreeEnsembleClassifier, compiled
//! into flat node arrays. Also gives each tree's own output, for the
//! seed's per-tree prediction interval.

use super::{Attrs, Op};
use crate::tensor::{Data, Tensor};
use crate::OnnxError;
use std::collections::HashMap;

#[derive(Clone, Copy, PartialEq, Debug)]
#[repr(u8)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

#[derive(Clone, Debug)]
/// 16 bytes, so a depth-10 tree (2,047 nodes) fits in 32 KB of cache.
struct Node {
    threshold: f32,
    true_child: u32,
    false_child: u32,
    feature: u16,
    mode: Mode,
    missing_true: bool,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
}

/// The compiled trees of one ensemble.
#[derive(Debug)]
pub struct Trees {
    nodes: Vec<Node>,
    /// Range into `weights` per node (leaves only).
    leaf_ranges: Vec<(u32, u32)>,
    roots: Vec<u32>,
    /// (target or class index, weight) for each leaf entry.
    weights: Vec<(u32, f32)>,
    pub n_outputs: usize,
    pub n_features: usize,
    base_values: Vec<f32>,
    aggregate: Aggregate,
    pub post: PostTransform,
}

fn floats_or_tensor(a: &Attrs, name: &str) -> Result<Option<Vec<f32>>, OnnxError> {
    if let Some(v) = a.floats(name) {
        return Ok(Some(v.to_vec()));
    }
    match a.tensor(&format!("{name}_as_tensor")) {
        Some(t) => Ok(Some(Tensor::from_proto(t)?.as_f32()?.to_vec())),
        None => Ok(None),
    }
}

fn post_transform(a: &Attrs) -> Result<PostTransform, OnnxError> {
    Ok(match a.string("post_transform").unwrap_or("NONE") {
        "NONE" => PostTransform::None,
        "SOFTMAX" => PostTransform::Softmax,
        "LOGISTIC" => PostTransform::Logistic,
        "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
        other => return Err(OnnxError::Unsupported(format!("post_transform {other}"))),
    })
}

impl Trees {
    /// Builds from the node attributes plus the leaf table named by
    /// `prefix` ("target" for regressors, "class" for classifiers).
    fn build(a: &Attrs, prefix: &str, n_outputs: usize) -> Result<Trees, OnnxError> {
        let ints = |n: &str| -> Result<&[i64], OnnxError> {
            a.ints(n)
                .ok_or_else(|| OnnxError::Invalid(format!("tree ensemble lacks {n}")))
        };
        let tree_ids = ints("nodes_treeids")?;
        let node_ids = ints("nodes_nodeids")?;
        let features = ints("nodes_featureids")?;
        let trues = ints("nodes_truenodeids")?;
        let falses = ints("nodes_falsenodeids")?;
        let values = floats_or_tensor(a, "nodes_values")?
            .ok_or_else(|| OnnxError::Invalid("tree ensemble lacks nodes_values".into()))?;
        let modes = a
            .strings("nodes_modes")
            .ok_or_else(|| OnnxError::Invalid("tree ensemble lacks nodes_modes".into()))?;
        let missing = a.ints("nodes_missing_value_tracks_true").unwrap_or(&[]);
        let n = tree_ids.len();
        if [
            node_ids.len(),
            features.len(),
            trues.len(),
            falses.len(),
            values.len(),
            modes.len(),
        ]
        .iter()
        .any(|l| *l != n)
        {
            return Err(OnnxError::Invalid(
                "tree ensemble node arrays differ in length".into(),
            ));
        }
        let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
        let mut tree_order: Vec<i64> = Vec::new();
        for i in 0..n {
            if index.insert((tree_ids[i], node_ids[i]), i as u32).is_some() {
                return Err(OnnxError::Invalid(format!(
                    "tree {} has node {} twice",
                    tree_ids[i], node_ids[i]
                )));
            }
            if tree_order.last() != Some(&tree_ids[i]) && !tree_order.contains(&tree_ids[i]) {
                tree_order.push(tree_ids[i]);
            }
        }
        let child = |tree: i64, id: i64| -> Result<u32, OnnxError> {
            index.get(&(tree, id)).copied().ok_or_else(|| {
                OnnxError::Invalid(format!("tree {tree} refers to missing node {id}"))
            })
        };
        let mut nodes = Vec::with_capacity(n);
        let mut n_features = 0usize;
        for i in 0..n {
            let mode = match modes[i].as_str() {
                "BRANCH_LEQ" => Mode::Leq,
                "BRANCH_LT" => Mode::Lt,
                "BRANCH_GTE" => Mode::Gte,
                "BRANCH_GT" => Mode::Gt,
                "BRANCH_EQ" => Mode::Eq,
                "BRANCH_NEQ" => Mode::Neq,
                "LEAF" => Mode::Leaf,
                other => return Err(OnnxError::Unsupported(format!("tree node mode {other}"))),
            };
            let (t, f) = if mode == Mode::Leaf {
                (0, 0)
            } else {
                n_features = n_features.max(features[i].max(0) as usize + 1);
                (
                    child(tree_ids[i], trues[i])?,
                    child(tree_ids[i], falses[i])?,
                )
            };
            nodes.push(Node {
                feature: u16::try_from(features[i].max(0)).map_err(|_| {
                    OnnxError::Unsupported(format!(
                        "trees over more than 65,535 features ({})",
                        features[i]
                    ))
                })?,
                threshold: values[i],
                mode,
                true_child: t,
                false_child: f,
                missing_true: missing.get(i).copied().unwrap_or(0) != 0,
            });
        }
        // Leaf weights, grouped per leaf.
        let l_trees = ints(&format!("{prefix}_treeids"))?;
        let l_nodes = ints(&format!("{prefix}_nodeids"))?;
        let l_ids = ints(&format!("{prefix}_ids"))?;
        let l_weights = floats_or_tensor(a, &format!("{prefix}_weights"))?
            .ok_or_else(|| OnnxError::Invalid(format!("tree ensemble lacks {prefix}_weights")))?;
        if [l_nodes.len(), l_ids.len(), l_weights.len()]
            .iter()
            .any(|l| *l != l_trees.len())
        {
            return Err(OnnxError::Invalid(
                "tree ensemble leaf arrays differ in length".into(),
            ));
        }
        let mut per_leaf: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
        for i in 0..l_trees.len() {
            let at = child(l_trees[i], l_nodes[i])? as usize;
            if l_ids[i] < 0 || l_ids[i] as usize >= n_outputs {
                return Err(OnnxError::Invalid(format!(
                    "{prefix}_ids holds {} but there are {n_outputs} outputs",
                    l_ids[i]
                )));
            }
            per_leaf[at].push((l_ids[i] as u32, l_weights[i]));
        }
        let mut weights = Vec::with_capacity(l_trees.len());
        let mut leaf_ranges = vec![(0u32, 0u32); n];
        for (i, w) in per_leaf.into_iter().enumerate() {
            let start = weights.len() as u32;
            weights.extend(w);
            leaf_ranges[i] = (start, weights.len() as u32);
        }
        // A tree's root is its node no other node points to.
        let mut is_child = vec![false; n];
        for nd in &nodes {
            if nd.mode != Mode::Leaf {
                is_child[nd.true_child as usize] = true;
                is_child[nd.false_child as usize] = true;
            }
        }
        let mut roots = Vec::with_capacity(tree_order.len());
        for t in &tree_order {
            let root = (0..n)
                .find(|i| tree_ids[*i] == *t && !is_child[*i])
                .ok_or_else(|| OnnxError::Invalid(format!("tree {t} has no root")))?;
            roots.push(root as u32);
        }
        // Cycles would loop forever: every walk must end within n steps.
        let depth_ok = roots.iter().all(|r| walk_bounded(&nodes, *r, n));
        if !depth_ok {
            return Err(OnnxError::Invalid("a tree has a cycle".into()));
        }
        let aggregate = match a.string("aggregate_function").unwrap_or("SUM") {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => {
                return Err(OnnxError::Unsupported(format!(
                    "aggregate_function {other}"
                )))
            }
        };
        let base_values = floats_or_tensor(a, "base_values")?.unwrap_or_default();
        if !base_values.is_empty() && base_values.len() != n_outputs {
            return Err(OnnxError::Invalid(
                "base_values does not match the outputs".into(),
            ));
        }
        Ok(Trees {
            nodes,
            leaf_ranges,
            roots,
            weights,
            n_outputs,
            n_features,
            base_values,
            aggregate,
            post: post_transform(a)?,
        })
    }

    /// Whether the trees average (a random forest: AVERAGE, or SUM of
    /// pre-scaled weights with no base value) rather than boost, so that
    /// each tree's own output is a prediction.
    pub fn averaging(&self) -> bool {
        self.aggregate == Aggregate::Average
            || (self.aggregate == Aggregate::Sum && self.base_values.iter().all(|b| *b == 0.0))
    }

    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// The index of the leaf `row` reaches from `root`.
    #[inline]
    fn leaf_of(&self, root: u32, row: &[f32]) -> u32 {
        let mut i = root;
        loop {
            let n = &self.nodes[i as usize];
            if n.mode == Mode::Leaf {
                return i;
            }
            let x = row[n.feature as usize];
            let go_true = if x.is_nan() {
                n.missing_true
            } else {
                match n.mode {
                    Mode::Leq => x <= n.threshold,
                    Mode::Lt => x < n.threshold,
                    Mode::Gte => x >= n.threshold,
                    Mode::Gt => x > n.threshold,
                    Mode::Eq => x == n.threshold,
                    Mode::Neq => x != n.threshold,
                    Mode::Leaf => unreachable!(),
                }
            };
            i = if go_true { n.true_child } else { n.false_child };
        }
    }

    /// The leaf of every (row, tree), trees outermost so each tree's nodes
    /// stay in cache across the rows of a batch.
    fn leaves(&self, x: &[f32], rows: usize, cols: usize) -> Vec<u32> {
        let n = self.roots.len();
        let mut out = vec![0u32; rows * n];
        for (t, root) in self.roots.iter().enumerate() {
            for r in 0..rows {
                let row = &x[r * cols..(r + 1) * cols];
                out[r * n + t] = self.leaf_of(*root, row);
            }
        }
        out
    }

    /// Aggregated raw scores (rows × outputs, before the post transform)
    /// and, when asked, each tree's own prediction of output 0 per row.
    /// Sums run in f64 and round once, so long ensembles stay within one
    /// float32 step of the exact value. An averaging ensemble's weights are
    /// pre-scaled by 1/n_trees, so a SUM ensemble's trees scale back.
    pub fn eval(
        &self,
        x: &[f32],
        rows: usize,
        cols: usize,
        per_tree: bool,
    ) -> (Vec<f32>, Option<Vec<Vec<f32>>>) {
        let leaves = self.leaves(x, rows, cols);
        let n = self.roots.len();
        let k = self.n_outputs;
        let init = match self.aggregate {
            Aggregate::Min => f64::INFINITY,
            Aggregate::Max => f64::NEG_INFINITY,
            _ => 0.0,
        };
        let scale = match self.aggregate {
            Aggregate::Sum => n as f32,
            _ => 1.0,
        };
        let base0 = self.base_values.first().copied().unwrap_or(0.0);
        let mut out = vec![0f32; rows * k];
        let mut trees = per_tree.then(|| Vec::with_capacity(rows));
        let mut acc = vec![init; k];
        let mut seen = vec![false; k];
        for r in 0..rows {
            acc.fill(init);
            seen.fill(false);
            let mut mine = per_tree.then(|| Vec::with_capacity(n));
            for leaf in &leaves[r * n..(r + 1) * n] {
                let (a, b) = self.leaf_ranges[*leaf as usize];
                let mut w0 = 0f32;
                for (t, w) in &self.weights[a as usize..b as usize] {
                    let (o, wf) = (&mut acc[*t as usize], *w as f64);
                    match self.aggregate {
                        Aggregate::Sum | Aggregate::Average => *o += wf,
                        Aggregate::Min => *o = o.min(wf),
                        Aggregate::Max => *o = o.max(wf),
                    }
                    seen[*t as usize] = true;
                    if *t == 0 {
                        w0 += w;
                    }
                }
                if let Some(m) = mine.as_mut() {
                    m.push(base0 + w0 * scale);
                }
            }
            for i in 0..k {
                let mut v = acc[i];
                if self.aggregate == Aggregate::Average {
                    v /= n.max(1) as f64;
                }
                if !seen[i] {
                    v = 0.0;
                }
                out[r * k + i] =
                    (v + self.base_values.get(i).copied().unwrap_or(0.0) as f64) as f32;
            }
            if let (Some(t), Some(m)) = (trees.as_mut(), mine) {
                t.push(m);
            }
        }
        (out, trees)
    }
}

fn walk_bounded(nodes: &[Node], root: u32, limit: usize) -> bool {
    // Depth-first over the tree with a step budget.
    let mut stack = vec![root];
    let mut steps = 0usize;
    while let Some(i) = stack.pop() {
        steps += 1;
        if steps > limit {
            return false;
        }
        let n = &nodes[i as usize];
        if n.mode != Mode::Leaf {
            stack.push(n.true_child);
            stack.push(n.false_child);
        }
    }
    true
}

fn apply_post(post: PostTransform, v: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => v.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp())),
        PostTransform::Softmax | PostTransform::SoftmaxZero => {
            let m = v.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            for x in v.iter_mut() {
                *x = if post == PostTransform::SoftmaxZero && *x == 0.0 {
                    0.0
                } else {
                    (*x - m).exp()
                };
                s += *x;
            }
            if s > 0.0 {
                v.iter_mut().for_each(|x| *x /= s);
            }
        }
    }
}

fn rows_of(x: &Tensor, need: usize) -> Result<(usize, usize, &[f32]), OnnxError> {
    let v = x.as_f32()?;
    let (rows, cols) = x.rows_cols();
    if cols < need {
        return Err(OnnxError::Invalid(format!(
            "the trees read feature {} but rows have {cols} values",
            need - 1
        )));
    }
    Ok((rows, cols, v))
}

pub struct TreeRegressor(pub Trees);

impl TreeRegressor {
    pub fn build(a: &Attrs) -> Result<Self, OnnxError> {
        let n_targets = a.output_count("TreeEnsembleRegressor", "n_targets")?;
        Ok(TreeRegressor(Trees::build(a, "target", n_targets)?))
    }
}

impl Op for TreeRegressor {
    fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let t = &self.0;
        let (rows, cols, v) = rows_of(inputs[0], t.n_features)?;
        let (mut out, _) = t.eval(v, rows, cols, false);
        for o in out.chunks_mut(t.n_outputs) {
            apply_post(t.post, o);
        }
        Ok(vec![Tensor::f32(vec![rows, t.n_outputs], out)])
    }

    fn trees(&self) -> Option<&Trees> {
        Some(&self.0)
    }
}

pub struct TreeClassifier {
    trees: Trees,
    labels: Vec<i64>,
    /// One weight column for two classes: scores are for class 1.
    binary: bool,
}

impl TreeClassifier {
    pub fn build(a: &Attrs) -> Result<Self, OnnxError> {
        if a.strings("classlabels_strings")
            .is_some_and(|s| !s.is_empty())
        {
            return Err(OnnxError::Unsupported(
                "TreeEnsembleClassifier with string class labels (train with integer labels)"
                    .into(),
            ));
        }
        let labels = a
            .ints("classlabels_int64s")
            .ok_or_else(|| OnnxError::Invalid("classifier lacks classlabels_int64s".into()))?
            .to_vec();
        let ids = a.ints("class_ids").unwrap_or(&[]);
        let distinct = {
            let mut d: Vec<i64> = ids.to_vec();
            d.sort_unstable();
            d.dedup();
            d.len()
        };
        let binary = labels.len() == 2 && distinct == 1;
        let trees = Trees::build(a, "class", labels.len())?;
        Ok(TreeClassifier {
            trees,
            labels,
            binary,
        })
    }
}

impl Op for TreeClassifier {
    fn class_labels(&self) -> Option<&[i64]> {
        Some(&self.labels)
    }

    fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let t = &self.trees;
        let k = self.labels.len();
        let (rows, cols, v) = rows_of(inputs[0], t.n_features)?;
        let mut probs = vec![0.0f32; rows * k];
        let mut labels = Vec::with_capacity(rows);
        let (all, _) = t.eval(v, rows, cols, false);
        for r in 0..rows {
            let scores = &all[r * k..(r + 1) * k];
            let o = &mut probs[r * k..(r + 1) * k];
            if self.binary {
                // onnxruntime's binary case: the single column scores the
                // positive class.
                let id = self
                    .trees
                    .weights
                    .first()
                    .map(|w| w.0 as usize)
                    .unwrap_or(1);
                let mut s = scores[id];
                if t.post == PostTransform::Logistic {
                    s = 1.0 / (1.0 + (-s).exp());
                }
                o[1] = s;
                o[0] = 1.0 - s;
            } else {
                o.copy_from_slice(scores);
                apply_post(t.post, o);
            }
            let best = o
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
                )
                .0;
            labels.push(self.labels[best]);
        }
        Ok(vec![
            Tensor {
                shape: vec![rows],
                data: Data::I64(labels),
            },
            Tensor::f32(vec![rows, k], probs),
        ])
    }
}
