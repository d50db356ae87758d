//! Operators: one `Op` per ONNX node kind, built from the node's
//! attributes once at load, run per request. `build` is the one registry;
//! a node it does not know refuses the model with the operator named.

mod ml;
mod standard;
pub mod tree;

use crate::proto::{AttributeProto, NodeProto, TensorProto};
use crate::tensor::Tensor;
use crate::OnnxError;
use std::collections::HashMap;

pub trait Op: Send + Sync {
    /// `inputs` are the node's inputs in order (optional ones that are
    /// absent are left out at the end).
    fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError>;

    /// The trees of a tree-ensemble regressor (for per-tree intervals).
    fn trees(&self) -> Option<&tree::Trees> {
        None
    }

    /// A classifier's labels, in the order of its probabilities.
    fn class_labels(&self) -> Option<&[i64]> {
        None
    }
}

/// A node's attributes by name.
pub struct Attrs<'a> {
    by_name: HashMap<&'a str, &'a AttributeProto>,
    strings: HashMap<&'a str, Vec<String>>,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto) -> Attrs<'a> {
        let by_name: HashMap<&str, &AttributeProto> = node
            .attribute
            .iter()
            .map(|a| (a.name.as_str(), a))
            .collect();
        let strings = by_name
            .iter()
            .filter(|(_, a)| !a.strings.is_empty())
            .map(|(k, a)| {
                (
                    *k,
                    a.strings
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                )
            })
            .collect();
        Attrs { by_name, strings }
    }

    /// A count of outputs (`n_targets`, `targets`): at least 1, refused
    /// beyond `MAX_OUTPUTS` so a model cannot size allocations by claim.
    pub fn output_count(&self, op: &str, n: &str) -> Result<usize, OnnxError> {
        let v = self.int(n).unwrap_or(1).max(1);
        if v as u64 > crate::tensor::MAX_OUTPUTS as u64 {
            return Err(OnnxError::Invalid(format!(
                "{op} {n} {v} is over {}",
                crate::tensor::MAX_OUTPUTS
            )));
        }
        Ok(v as usize)
    }

    pub fn int(&self, n: &str) -> Option<i64> {
        self.by_name.get(n).map(|a| a.i)
    }

    pub fn float(&self, n: &str) -> Option<f32> {
        self.by_name.get(n).map(|a| a.f)
    }

    pub fn ints(&self, n: &str) -> Option<&'a [i64]> {
        self.by_name.get(n).map(|a| a.ints.as_slice())
    }

    pub fn floats(&self, n: &str) -> Option<&'a [f32]> {
        self.by_name
            .get(n)
            .filter(|a| !a.floats.is_empty() || a.r#type == 6)
            .map(|a| a.floats.as_slice())
    }

    pub fn string(&self, n: &str) -> Option<&'a str> {
        self.by_name
            .get(n)
            .and_then(|a| std::str::from_utf8(&a.s).ok())
    }

    pub fn strings(&self, n: &str) -> Option<&Vec<String>> {
        self.strings.get(n)
    }

    pub fn tensor(&self, n: &str) -> Option<&'a TensorProto> {
        self.by_name.get(n).and_then(|a| a.t.as_ref())
    }
}

/// The operator for a node, or the reason it cannot run.
pub fn build(node: &NodeProto) -> Result<Box<dyn Op>, OnnxError> {
    // Operators read their inputs by position: too few is a broken model.
    let need = match node.op_type.as_str() {
        "Where" => 3,
        "Add"
        | "Sub"
        | "Mul"
        | "Div"
        | "Pow"
        | "Equal"
        | "Greater"
        | "Less"
        | "GreaterOrEqual"
        | "LessOrEqual"
        | "Reshape"
        | "Gather"
        | "ArrayFeatureExtractor" => 2,
        _ => 1,
    };
    if node.input.len() < need || node.output.is_empty() {
        return Err(OnnxError::Invalid(format!(
            "node {} ({}) needs {need} input(s) and an output",
            node.name, node.op_type
        )));
    }
    let a = Attrs::new(node);
    let op: Box<dyn Op> = match (node.domain.as_str(), node.op_type.as_str()) {
        ("ai.onnx.ml", "TreeEnsembleRegressor") => Box::new(tree::TreeRegressor::build(&a)?),
        ("ai.onnx.ml", "TreeEnsembleClassifier") => Box::new(tree::TreeClassifier::build(&a)?),
        ("ai.onnx.ml", other) => ml::build(other, &a)?,
        ("" | "ai.onnx", other) => standard::build(other, &a)?,
        (domain, other) => {
            return Err(OnnxError::Unsupported(format!("operator {domain}.{other}")))
        }
    };
    Ok(op)
}
