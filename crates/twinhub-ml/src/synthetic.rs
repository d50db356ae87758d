//! Synthetic models for benchmarks: a random forest of full binary trees
//! as an ONNX TreeEnsembleRegressor, built without Python.

use crate::proto::{
    elem, AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

fn ints(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v,
        ..Default::default()
    }
}

fn floats(name: &str, v: Vec<f32>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 6,
        floats: v,
        ..Default::default()
    }
}

/// ONNX bytes of `trees` full trees of `depth` splits over `features`
/// inputs, thresholds in [0, 1), averaging like scikit-learn's forests.
pub fn random_forest(trees: usize, depth: u32, features: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut rnd = move || {
        // xorshift64*: deterministic, dependency-free.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let per_tree = (1usize << (depth + 1)) - 1;
    let (mut t_ids, mut n_ids, mut f_ids, mut vals, mut modes, mut trues, mut falses) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut w_t, mut w_n, mut w_ids, mut w) = (vec![], vec![], vec![], vec![]);
    for t in 0..trees {
        for n in 0..per_tree {
            t_ids.push(t as i64);
            n_ids.push(n as i64);
            let leaf = n >= (1 << depth) - 1;
            if leaf {
                f_ids.push(0);
                vals.push(0.0);
                modes.push(b"LEAF".to_vec());
                trues.push(0);
                falses.push(0);
                w_t.push(t as i64);
                w_n.push(n as i64);
                w_ids.push(0);
                w.push((50.0 + 50.0 * rnd()) as f32 / trees as f32);
            } else {
                f_ids.push((rnd() * features as f64) as i64 % features as i64);
                vals.push(rnd() as f32);
                modes.push(b"BRANCH_LEQ".to_vec());
                trues.push(2 * n as i64 + 1);
                falses.push(2 * n as i64 + 2);
            }
        }
    }
    let mut attrs = vec![
        ints("nodes_treeids", t_ids),
        ints("nodes_nodeids", n_ids),
        ints("nodes_featureids", f_ids),
        floats("nodes_values", vals),
        ints("nodes_truenodeids", trues),
        ints("nodes_falsenodeids", falses),
        ints("target_treeids", w_t),
        ints("target_nodeids", w_n),
        ints("target_ids", w_ids),
        floats("target_weights", w),
        AttributeProto {
            name: "n_targets".into(),
            r#type: 2,
            i: 1,
            ..Default::default()
        },
    ];
    attrs.push(AttributeProto {
        name: "nodes_modes".into(),
        r#type: 8,
        strings: modes,
        ..Default::default()
    });
    let io = |name: &str, cols: i64| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: elem::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            dim_value: None,
                            dim_param: Some("N".into()),
                        },
                        Dimension {
                            dim_value: Some(cols),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 15,
            },
            OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 3,
            },
        ],
        producer_name: "twinhub synthetic".into(),
        producer_version: String::new(),
        graph: Some(GraphProto {
            node: vec![NodeProto {
                input: vec!["X".into()],
                output: vec!["variable".into()],
                name: "forest".into(),
                op_type: "TreeEnsembleRegressor".into(),
                domain: "ai.onnx.ml".into(),
                attribute: attrs,
            }],
            name: "synthetic".into(),
            initializer: vec![],
            input: vec![io("X", features as i64)],
            output: vec![io("variable", 1)],
        }),
    };
    model.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_forests_load_and_average() {
        let m = crate::Model::load(&random_forest(10, 4, 3, 7)).unwrap();
        assert_eq!(m.n_trees(), Some(10));
        let run = m.run(1, vec![0.5, 0.5, 0.5], true).unwrap();
        let y = run.outputs[0].1.as_f32().unwrap()[0];
        let trees = &run.per_tree.unwrap()[0];
        let mean = trees.iter().sum::<f32>() / trees.len() as f32;
        assert!(
            (50.0..=100.0).contains(&y) && (y - mean).abs() < 1e-3,
            "{y} {mean}"
        );
    }
}
