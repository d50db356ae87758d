//! The other `ai.onnx.ml` operators scikit-learn pipelines use.

use super::{Attrs, Op};
use crate::tensor::{Data, Tensor};
use crate::OnnxError;
use std::collections::HashMap;

pub fn build(op: &str, a: &Attrs) -> Result<Box<dyn Op>, OnnxError> {
    Ok(match op {
        "Scaler" => Box::new(Scaler {
            offset: a.floats("offset").unwrap_or(&[]).to_vec(),
            scale: a.floats("scale").unwrap_or(&[]).to_vec(),
        }),
        "LabelEncoder" => Box::new(LabelEncoder::build(a)?),
        "Normalizer" => Box::new(Normalizer(a.string("norm").unwrap_or("MAX").to_string())),
        "LinearRegressor" => Box::new(LinearRegressor {
            coefficients: a.floats("coefficients").unwrap_or(&[]).to_vec(),
            intercepts: a.floats("intercepts").unwrap_or(&[]).to_vec(),
            targets: a.output_count("LinearRegressor", "targets")?,
        }),
        "ArrayFeatureExtractor" => Box::new(ArrayFeatureExtractor),
        "Imputer" => Box::new(Imputer {
            values: a.floats("imputed_value_floats").unwrap_or(&[]).to_vec(),
            replaced: a.float("replaced_value_float").unwrap_or(f32::NAN),
        }),
        "ZipMap" => {
            return Err(OnnxError::Unsupported(
                "operator ai.onnx.ml.ZipMap (export classifiers with options={'zipmap': False})"
                    .into(),
            ))
        }
        other => {
            return Err(OnnxError::Unsupported(format!(
                "operator ai.onnx.ml.{other}"
            )))
        }
    })
}

fn per_column(values: &[f32], c: usize) -> f32 {
    match values.len() {
        0 => 0.0,
        1 => values[0],
        _ => values.get(c).copied().unwrap_or(0.0),
    }
}

struct Scaler {
    offset: Vec<f32>,
    scale: Vec<f32>,
}

impl Op for Scaler {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0].cast(crate::proto::elem::FLOAT)?;
        let (_, cols) = x.rows_cols();
        let v = x.as_f32()?;
        let out = v
            .iter()
            .enumerate()
            .map(|(k, x)| {
                let c = k % cols.max(1);
                (x - per_column(&self.offset, c)) * per_column(&self.scale, c)
            })
            .collect();
        Ok(vec![Tensor::f32(x.shape.clone(), out)])
    }
}

enum Keys {
    I64(HashMap<i64, usize>),
    F32(Vec<(f32, usize)>),
}

enum Values {
    F32(Vec<f32>, f32),
    I64(Vec<i64>, i64),
}

struct LabelEncoder {
    keys: Keys,
    values: Values,
}

impl LabelEncoder {
    fn build(a: &Attrs) -> Result<Self, OnnxError> {
        let keys = if let Some(k) = a.ints("keys_int64s").filter(|k| !k.is_empty()) {
            Keys::I64(k.iter().enumerate().map(|(i, x)| (*x, i)).collect())
        } else if let Some(k) = a.floats("keys_floats").filter(|k| !k.is_empty()) {
            Keys::F32(k.iter().enumerate().map(|(i, x)| (*x, i)).collect())
        } else {
            return Err(OnnxError::Unsupported(
                "LabelEncoder with string keys".into(),
            ));
        };
        let values = if let Some(v) = a.floats("values_floats").filter(|v| !v.is_empty()) {
            Values::F32(v.to_vec(), a.float("default_float").unwrap_or(-0.0))
        } else if let Some(v) = a.ints("values_int64s").filter(|v| !v.is_empty()) {
            Values::I64(v.to_vec(), a.int("default_int64").unwrap_or(-1))
        } else {
            return Err(OnnxError::Unsupported(
                "LabelEncoder with string values".into(),
            ));
        };
        Ok(LabelEncoder { keys, values })
    }

    fn find(&self, x: &Tensor, k: usize) -> Option<usize> {
        match (&self.keys, &x.data) {
            (Keys::I64(m), Data::I64(v)) => m.get(&v[k]).copied(),
            (Keys::I64(m), Data::F32(v)) => m.get(&(v[k] as i64)).copied(),
            (Keys::F32(m), Data::F32(v)) => m.iter().find(|(f, _)| *f == v[k]).map(|x| x.1),
            (Keys::F32(m), Data::I64(v)) => m.iter().find(|(f, _)| *f == v[k] as f32).map(|x| x.1),
            _ => None,
        }
    }
}

impl Op for LabelEncoder {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0];
        let n = x.len();
        let data = match &self.values {
            Values::F32(v, d) => Data::F32(
                (0..n)
                    .map(|k| self.find(x, k).map_or(*d, |j| v[j]))
                    .collect(),
            ),
            Values::I64(v, d) => Data::I64(
                (0..n)
                    .map(|k| self.find(x, k).map_or(*d, |j| v[j]))
                    .collect(),
            ),
        };
        Ok(vec![Tensor {
            shape: x.shape.clone(),
            data,
        }])
    }
}

struct Normalizer(String);

impl Op for Normalizer {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0].cast(crate::proto::elem::FLOAT)?;
        let (rows, cols) = x.rows_cols();
        let mut v = x.as_f32()?.to_vec();
        for r in 0..rows {
            let row = &mut v[r * cols..(r + 1) * cols];
            let norm = match self.0.as_str() {
                "L1" => row.iter().map(|x| x.abs()).sum::<f32>(),
                "L2" => row.iter().map(|x| x * x).sum::<f32>().sqrt(),
                _ => row.iter().map(|x| x.abs()).fold(0.0, f32::max),
            };
            if norm > 0.0 {
                row.iter_mut().for_each(|x| *x /= norm);
            }
        }
        Ok(vec![Tensor::f32(x.shape.clone(), v)])
    }
}

struct LinearRegressor {
    coefficients: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
}

impl Op for LinearRegressor {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0].cast(crate::proto::elem::FLOAT)?;
        let (rows, cols) = x.rows_cols();
        if self.coefficients.len() != cols * self.targets {
            return Err(OnnxError::Invalid(format!(
                "LinearRegressor has {} coefficients for {cols} features",
                self.coefficients.len()
            )));
        }
        let v = x.as_f32()?;
        let mut out = Vec::with_capacity(rows * self.targets);
        for r in 0..rows {
            for t in 0..self.targets {
                let w = &self.coefficients[t * cols..(t + 1) * cols];
                let dot: f32 = v[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(w)
                    .map(|(a, b)| a * b)
                    .sum();
                out.push(dot + self.intercepts.get(t).copied().unwrap_or(0.0));
            }
        }
        Ok(vec![Tensor::f32(vec![rows, self.targets], out)])
    }
}

struct ArrayFeatureExtractor;

impl Op for ArrayFeatureExtractor {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let (x, idx) = (
            i[0],
            i.get(1)
                .ok_or_else(|| OnnxError::Invalid("ArrayFeatureExtractor needs indices".into()))?,
        );
        let idx = idx.as_i64()?;
        let (rows, cols) = x.rows_cols();
        let pick = |r: usize| -> Result<Vec<usize>, OnnxError> {
            idx.iter()
                .map(|j| {
                    let j = *j as usize;
                    if j < cols {
                        Ok(r * cols + j)
                    } else {
                        Err(OnnxError::Invalid(format!(
                            "index {j} out of {cols} columns"
                        )))
                    }
                })
                .collect()
        };
        let all: Vec<usize> = (0..rows)
            .map(pick)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let data = match &x.data {
            Data::F32(v) => Data::F32(all.iter().map(|k| v[*k]).collect()),
            Data::I64(v) => Data::I64(all.iter().map(|k| v[*k]).collect()),
            Data::Bool(v) => Data::Bool(all.iter().map(|k| v[*k]).collect()),
        };
        Ok(vec![Tensor {
            shape: vec![rows, idx.len()],
            data,
        }])
    }
}

struct Imputer {
    values: Vec<f32>,
    replaced: f32,
}

impl Op for Imputer {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0].cast(crate::proto::elem::FLOAT)?;
        let (_, cols) = x.rows_cols();
        let v = x
            .as_f32()?
            .iter()
            .enumerate()
            .map(|(k, x)| {
                let hit = if self.replaced.is_nan() {
                    x.is_nan()
                } else {
                    *x == self.replaced
                };
                if hit {
                    per_column(&self.values, k % cols.max(1))
                } else {
                    *x
                }
            })
            .collect();
        Ok(vec![Tensor::f32(x.shape.clone(), v)])
    }
}
