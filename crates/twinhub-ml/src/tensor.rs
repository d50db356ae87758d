//! Dense tensors of the element types scikit-learn graphs use (float32,
//! int64, bool), with numpy-style broadcasting for elementwise operators.

use crate::proto::{elem, TensorProto};
use crate::OnnxError;

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Values one tensor may hold (256 MB of floats): an upload cannot make
/// the evaluator allocate more, whatever shapes it claims.
pub const MAX_ELEMENTS: usize = 1 << 26;

/// Outputs one operator (tree ensemble, linear model) may declare.
pub const MAX_OUTPUTS: usize = 1 << 16;

/// The number of values of `shape`, refused when it overflows or passes
/// `MAX_ELEMENTS`.
pub fn elements(shape: &[usize]) -> Result<usize, OnnxError> {
    shape
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .filter(|n| *n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            bad(format!(
                "shape {shape:?} is too large (at most {MAX_ELEMENTS} values)"
            ))
        })
}

fn bad(what: impl Into<String>) -> OnnxError {
    OnnxError::Invalid(what.into())
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor {
            shape,
            data: Data::F32(v),
        }
    }

    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        Tensor {
            shape,
            data: Data::I64(v),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f32(&self) -> Result<&[f32], OnnxError> {
        match &self.data {
            Data::F32(v) => Ok(v),
            _ => Err(bad("expected a float tensor")),
        }
    }

    pub fn as_i64(&self) -> Result<&[i64], OnnxError> {
        match &self.data {
            Data::I64(v) => Ok(v),
            _ => Err(bad("expected an int64 tensor")),
        }
    }

    /// Rows and columns of a 2-D tensor (a 1-D one is one row).
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [] => (1, 1),
            [n] => (1, *n),
            [r, rest @ ..] => (*r, rest.iter().product()),
        }
    }

    pub fn cast(&self, to: i32) -> Result<Tensor, OnnxError> {
        let shape = self.shape.clone();
        let data = match (to, &self.data) {
            (elem::FLOAT | elem::DOUBLE, Data::F32(v)) => Data::F32(v.clone()),
            (elem::FLOAT | elem::DOUBLE, Data::I64(v)) => {
                Data::F32(v.iter().map(|x| *x as f32).collect())
            }
            (elem::FLOAT | elem::DOUBLE, Data::Bool(v)) => {
                Data::F32(v.iter().map(|x| *x as u8 as f32).collect())
            }
            (elem::INT64 | elem::INT32, Data::F32(v)) => {
                Data::I64(v.iter().map(|x| *x as i64).collect())
            }
            (elem::INT64 | elem::INT32, Data::I64(v)) => Data::I64(v.clone()),
            (elem::INT64 | elem::INT32, Data::Bool(v)) => {
                Data::I64(v.iter().map(|x| *x as i64).collect())
            }
            (elem::BOOL, Data::F32(v)) => Data::Bool(v.iter().map(|x| *x != 0.0).collect()),
            (elem::BOOL, Data::I64(v)) => Data::Bool(v.iter().map(|x| *x != 0).collect()),
            (elem::BOOL, Data::Bool(v)) => Data::Bool(v.clone()),
            (t, _) => return Err(OnnxError::Unsupported(format!("Cast to element type {t}"))),
        };
        Ok(Tensor { shape, data })
    }

    /// An initializer or attribute tensor.
    pub fn from_proto(t: &TensorProto) -> Result<Tensor, OnnxError> {
        if t.data_location == 1 {
            return Err(OnnxError::Unsupported(format!(
                "tensor {} keeps its data in an external file",
                t.name
            )));
        }
        let shape: Vec<usize> = t.dims.iter().map(|d| (*d).max(0) as usize).collect();
        let n = elements(&shape).map_err(|e| bad(format!("tensor {}: {e}", t.name)))?;
        let raw = &t.raw_data;
        let data = match t.data_type {
            elem::FLOAT => Data::F32(if raw.is_empty() {
                t.float_data.clone()
            } else {
                raw.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }),
            elem::DOUBLE => Data::F32(if raw.is_empty() {
                t.double_data.iter().map(|x| *x as f32).collect()
            } else {
                raw.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect()
            }),
            elem::INT64 => Data::I64(if raw.is_empty() {
                t.int64_data.clone()
            } else {
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect()
            }),
            elem::INT32 => Data::I64(if raw.is_empty() {
                t.int32_data.iter().map(|x| *x as i64).collect()
            } else {
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect()
            }),
            elem::BOOL => Data::Bool(if raw.is_empty() {
                t.int32_data.iter().map(|x| *x != 0).collect()
            } else {
                raw.iter().map(|x| *x != 0).collect()
            }),
            other => {
                return Err(OnnxError::Unsupported(format!(
                    "tensor {} has element type {other}",
                    t.name
                )))
            }
        };
        let tensor = Tensor { shape, data };
        if tensor.len() != n {
            return Err(bad(format!(
                "tensor {} holds {} values for shape {:?}",
                t.name,
                tensor.len(),
                tensor.shape
            )));
        }
        Ok(tensor)
    }
}

/// The broadcast shape of two shapes (numpy rules).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, OnnxError> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(bad(format!("shapes {a:?} and {b:?} do not broadcast"))),
        };
    }
    elements(&out)?;
    Ok(out)
}

/// Index into a tensor of shape `src` for each element of `out`.
fn broadcast_index(src: &[usize], out: &[usize]) -> Vec<usize> {
    let total: usize = out.iter().product();
    let n = out.len();
    let mut strides = vec![0usize; n];
    let mut acc = 1;
    for i in (0..src.len()).rev() {
        let oi = i + n - src.len();
        strides[oi] = if src[i] == 1 { 0 } else { acc };
        acc *= src[i];
    }
    let mut idx = Vec::with_capacity(total);
    let mut counter = vec![0usize; n];
    for _ in 0..total {
        idx.push(counter.iter().zip(&strides).map(|(c, s)| c * s).sum());
        for d in (0..n).rev() {
            counter[d] += 1;
            if counter[d] < out[d] {
                break;
            }
            counter[d] = 0;
        }
    }
    idx
}

/// Applies `f` elementwise with broadcasting.
pub fn zip_with<T: Copy, U>(
    a: &[T],
    ash: &[usize],
    b: &[T],
    bsh: &[usize],
    f: impl Fn(T, T) -> U,
) -> Result<(Vec<U>, Vec<usize>), OnnxError> {
    if ash == bsh {
        return Ok((
            a.iter().zip(b).map(|(x, y)| f(*x, *y)).collect(),
            ash.to_vec(),
        ));
    }
    let shape = broadcast_shape(ash, bsh)?;
    if b.len() == 1 {
        return Ok((a.iter().map(|x| f(*x, b[0])).collect(), shape));
    }
    if a.len() == 1 {
        return Ok((b.iter().map(|y| f(a[0], *y)).collect(), shape));
    }
    let (ia, ib) = (broadcast_index(ash, &shape), broadcast_index(bsh, &shape));
    Ok((
        ia.iter().zip(&ib).map(|(i, j)| f(a[*i], b[*j])).collect(),
        shape,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let (v, s) = zip_with(
            &[1.0f32, 2.0, 3.0, 4.0],
            &[2, 2],
            &[10.0, 20.0],
            &[2],
            |a, b| a + b,
        )
        .unwrap();
        assert_eq!((v, s), (vec![11.0, 22.0, 13.0, 24.0], vec![2, 2]));
        let (v, s) = zip_with(
            &[1.0f32, 2.0],
            &[2, 1],
            &[10.0, 20.0, 30.0],
            &[1, 3],
            |a, b| a * b,
        )
        .unwrap();
        assert_eq!(s, vec![2, 3]);
        assert_eq!(v, vec![10.0, 20.0, 30.0, 20.0, 40.0, 60.0]);
        assert!(broadcast_shape(&[2, 3], &[4]).is_err());
    }
}
