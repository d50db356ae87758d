//! A loaded ONNX model: the graph compiled into steps over numbered value
//! slots, run per request without locks (a `Model` is immutable and shared).

use crate::ops::{self, Op};
use crate::proto::{elem, ModelProto};
use crate::tensor::Tensor;
use crate::OnnxError;
use prost::Message;
use std::borrow::Cow;
use std::collections::HashMap;

struct Step {
    op: Box<dyn Op>,
    name: String,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
}

pub struct Model {
    steps: Vec<Step>,
    constants: Vec<(usize, Tensor)>,
    n_slots: usize,
    input: usize,
    /// Features per row when the graph declares it.
    pub n_features: Option<usize>,
    outputs: Vec<(String, usize)>,
    /// The step whose trees give the per-tree interval of output 0.
    interval_step: Option<usize>,
    /// A classifier's labels, in the order of its probabilities.
    pub class_labels: Option<Vec<i64>>,
}

/// What one run produced.
pub struct Run {
    pub outputs: Vec<(String, Tensor)>,
    /// Per row, each tree's own prediction (when asked for and available).
    pub per_tree: Option<Vec<Vec<f32>>>,
}

impl Model {
    /// Parses and compiles a model. Every operator the graph uses must be
    /// one this crate runs; otherwise the error names them all.
    pub fn load(bytes: &[u8]) -> Result<Model, OnnxError> {
        let m = ModelProto::decode(bytes)
            .map_err(|e| OnnxError::Invalid(format!("not an ONNX model: {e}")))?;
        let g = m
            .graph
            .ok_or_else(|| OnnxError::Invalid("the model has no graph".into()))?;
        for o in &m.opset_import {
            if !["", "ai.onnx", "ai.onnx.ml"].contains(&o.domain.as_str()) {
                return Err(OnnxError::Unsupported(format!("operator set {}", o.domain)));
            }
        }
        let mut slots: HashMap<String, usize> = HashMap::new();
        let slot = |name: &str, slots: &mut HashMap<String, usize>| -> usize {
            let n = slots.len();
            *slots.entry(name.to_string()).or_insert(n)
        };
        let mut constants = Vec::new();
        for t in &g.initializer {
            let s = slot(&t.name, &mut slots);
            constants.push((s, Tensor::from_proto(t)?));
        }
        let inputs: Vec<_> = g
            .input
            .iter()
            .filter(|i| !g.initializer.iter().any(|t| t.name == i.name))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(OnnxError::Unsupported(format!(
                "models with {} inputs (one float feature matrix is supported)",
                inputs.len()
            )));
        };
        let tt = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        if let Some(t) = tt {
            if t.elem_type != elem::FLOAT && t.elem_type != elem::DOUBLE {
                return Err(OnnxError::Unsupported(format!(
                    "input {} of element type {} (float features are supported)",
                    input.name, t.elem_type
                )));
            }
        }
        let n_features = tt
            .and_then(|t| t.shape.as_ref())
            .and_then(|s| s.dim.get(1))
            .and_then(|d| d.dim_value)
            .filter(|v| *v > 0)
            .map(|v| v as usize);
        let input_slot = slot(&input.name, &mut slots);
        let mut steps = Vec::with_capacity(g.node.len());
        let mut unsupported = Vec::new();
        let mut defined: Vec<bool> = vec![false; slots.len()];
        for (s, _) in &constants {
            defined[*s] = true;
        }
        defined[input_slot] = true;
        for node in &g.node {
            let mut ins = Vec::new();
            for name in &node.input {
                if name.is_empty() {
                    continue;
                }
                let s = slot(name, &mut slots);
                if defined.get(s) != Some(&true) {
                    return Err(OnnxError::Invalid(format!(
                        "node {} reads {name} before anything writes it",
                        node.name
                    )));
                }
                ins.push(s);
            }
            let outs: Vec<usize> = node.output.iter().map(|n| slot(n, &mut slots)).collect();
            defined.resize(slots.len(), false);
            for o in &outs {
                defined[*o] = true;
            }
            match ops::build(node) {
                Ok(op) => steps.push(Step {
                    op,
                    name: format!("{} ({})", node.name, node.op_type),
                    inputs: ins,
                    outputs: outs,
                }),
                Err(OnnxError::Unsupported(what)) => {
                    if !unsupported.contains(&what) {
                        unsupported.push(what)
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !unsupported.is_empty() {
            return Err(OnnxError::Unsupported(unsupported.join(", ")));
        }
        let mut outputs = Vec::new();
        for o in &g.output {
            let s = *slots.get(&o.name).ok_or_else(|| {
                OnnxError::Invalid(format!("output {} is never computed", o.name))
            })?;
            outputs.push((o.name.clone(), s));
        }
        if outputs.is_empty() {
            return Err(OnnxError::Invalid("the model has no outputs".into()));
        }
        let first_out = outputs[0].1;
        let interval_step = steps.iter().position(|s| {
            s.outputs.first() == Some(&first_out)
                && s.op.trees().is_some_and(|t| {
                    t.n_outputs == 1
                        && t.post == crate::ops::tree::PostTransform::None
                        && t.averaging()
                })
        });
        let class_labels = steps
            .iter()
            .find_map(|s| s.op.class_labels())
            .map(<[i64]>::to_vec);
        Ok(Model {
            class_labels,
            steps,
            constants,
            n_slots: slots.len(),
            input: input_slot,
            n_features,
            outputs,
            interval_step,
        })
    }

    /// Whether the model can give each tree's own prediction.
    pub fn has_tree_interval(&self) -> bool {
        self.interval_step.is_some()
    }

    pub fn n_trees(&self) -> Option<usize> {
        self.interval_step
            .and_then(|s| self.steps[s].op.trees())
            .map(|t| t.n_trees())
    }

    pub fn output_names(&self) -> Vec<&str> {
        self.outputs.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Runs rows × features through the graph.
    pub fn run(&self, rows: usize, features: Vec<f32>, per_tree: bool) -> Result<Run, OnnxError> {
        let cols = features.len().checked_div(rows).unwrap_or(0);
        if let Some(n) = self.n_features {
            if cols != n || rows * n != features.len() {
                return Err(OnnxError::Invalid(format!(
                    "the model takes {n} features per row, got {cols}"
                )));
            }
        }
        let mut values: Vec<Option<Cow<'_, Tensor>>> = vec![None; self.n_slots];
        for (s, t) in &self.constants {
            values[*s] = Some(Cow::Borrowed(t));
        }
        values[self.input] = Some(Cow::Owned(Tensor::f32(vec![rows, cols], features)));
        let mut trees_out = None;
        for (k, step) in self.steps.iter().enumerate() {
            let ins: Vec<&Tensor> = step
                .inputs
                .iter()
                .map(|s| {
                    values[*s]
                        .as_deref()
                        .ok_or_else(|| OnnxError::Invalid(format!("{} has no input", step.name)))
                })
                .collect::<Result<_, _>>()?;
            if per_tree && Some(k) == self.interval_step {
                // One walk gives both the output and each tree's own value.
                let t = step.op.trees().expect("interval step has trees");
                let x = ins[0].cast(elem::FLOAT)?;
                let (r, c) = x.rows_cols();
                if c < t.n_features {
                    return Err(OnnxError::Invalid(format!(
                        "{}: rows have {c} values",
                        step.name
                    )));
                }
                let (out, trees) = t.eval(x.as_f32()?, r, c, true);
                trees_out = trees;
                values[step.outputs[0]] = Some(Cow::Owned(Tensor::f32(vec![r, 1], out)));
                continue;
            }
            let outs = step.op.run(&ins).map_err(|e| match e {
                OnnxError::Invalid(m) => OnnxError::Invalid(format!("{}: {m}", step.name)),
                e => e,
            })?;
            for (s, t) in step.outputs.iter().zip(outs) {
                values[*s] = Some(Cow::Owned(t));
            }
        }
        let outputs = self
            .outputs
            .iter()
            .map(|(n, s)| {
                values[*s]
                    .take()
                    .map(|t| (n.clone(), t.into_owned()))
                    .ok_or_else(|| OnnxError::Invalid(format!("output {n} was not computed")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Run {
            outputs,
            per_tree: trees_out,
        })
    }
}

/// numpy's default (linear) percentile of `v`, `p` in 0..=100 (reorders
/// `v`; selection, not a full sort).
pub fn percentile(v: &mut [f32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (v.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    let (_, a, rest) = v.select_nth_unstable_by(lo, f32::total_cmp);
    let a = *a as f64;
    let b = if hi == lo {
        a
    } else {
        rest.iter().copied().fold(f32::INFINITY, f32::min) as f64
    };
    a + (b - a) * frac
}
