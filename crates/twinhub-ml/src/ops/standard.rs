//! The standard ONNX operators scikit-learn graphs use (isolation forests,
//! pipelines): elementwise arithmetic with broadcasting, comparisons,
//! shape operators and casts.

use super::{Attrs, Op};
use crate::proto::elem;
use crate::tensor::{zip_with, Data, Tensor};
use crate::OnnxError;

pub fn build(op: &str, a: &Attrs) -> Result<Box<dyn Op>, OnnxError> {
    use Binary::*;
    use Unary::*;
    Ok(match op {
        "Identity" => Box::new(Identity),
        "Cast" => Box::new(Cast(a.int("to").unwrap_or(elem::FLOAT as i64) as i32)),
        "Reshape" => Box::new(Reshape(a.int("allowzero").unwrap_or(0) != 0)),
        "Flatten" => Box::new(Flatten(a.int("axis").unwrap_or(1))),
        "Gather" => Box::new(Gather(a.int("axis").unwrap_or(0))),
        "Concat" => Box::new(Concat(a.int("axis").unwrap_or(0))),
        "Add" => Box::new(Arith(AddOp)),
        "Sub" => Box::new(Arith(SubOp)),
        "Mul" => Box::new(Arith(MulOp)),
        "Div" => Box::new(Arith(DivOp)),
        "Pow" => Box::new(Arith(PowOp)),
        "Max" => Box::new(Variadic(MaxOp)),
        "Min" => Box::new(Variadic(MinOp)),
        "Sum" => Box::new(Variadic(AddOp)),
        "Equal" => Box::new(Compare(Cmp::Eq)),
        "Greater" => Box::new(Compare(Cmp::Gt)),
        "Less" => Box::new(Compare(Cmp::Lt)),
        "GreaterOrEqual" => Box::new(Compare(Cmp::Ge)),
        "LessOrEqual" => Box::new(Compare(Cmp::Le)),
        "Neg" => Box::new(Map(Negate)),
        "Abs" => Box::new(Map(AbsOp)),
        "Log" => Box::new(Map(LogOp)),
        "Exp" => Box::new(Map(ExpOp)),
        "Sqrt" => Box::new(Map(SqrtOp)),
        "Sigmoid" => Box::new(Map(SigmoidOp)),
        "Not" => Box::new(NotOp),
        "Where" => Box::new(Where),
        "ArgMax" => Box::new(ArgMax {
            axis: a.int("axis").unwrap_or(0),
            keepdims: a.int("keepdims").unwrap_or(1) != 0,
        }),
        "Softmax" => Box::new(Softmax(a.int("axis").unwrap_or(-1))),
        other => return Err(OnnxError::Unsupported(format!("operator {other}"))),
    })
}

fn bad(s: impl Into<String>) -> OnnxError {
    OnnxError::Invalid(s.into())
}

struct Identity;
impl Op for Identity {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        Ok(vec![i[0].clone()])
    }
}

struct Cast(i32);
impl Op for Cast {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        Ok(vec![i[0].cast(self.0)?])
    }
}

struct Reshape(bool);
impl Op for Reshape {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0];
        let spec = i
            .get(1)
            .ok_or_else(|| bad("Reshape needs a shape"))?
            .as_i64()?;
        let mut shape: Vec<i64> = spec.to_vec();
        for (k, d) in shape.iter_mut().enumerate() {
            if *d == 0 && !self.0 {
                *d = *x
                    .shape
                    .get(k)
                    .ok_or_else(|| bad("Reshape copies a missing dimension"))?
                    as i64;
            }
        }
        let known: i64 = shape
            .iter()
            .filter(|d| **d >= 0)
            .try_fold(1i64, |n, d| n.checked_mul(*d))
            .ok_or_else(|| bad(format!("Reshape to {spec:?} overflows")))?;
        let n = x.len() as i64;
        if let Some(d) = shape.iter_mut().find(|d| **d == -1) {
            if known == 0 || n % known != 0 {
                return Err(bad(format!("cannot reshape {} values to {spec:?}", n)));
            }
            *d = n / known;
        }
        let shape: Vec<usize> = shape.iter().map(|d| (*d).max(0) as usize).collect();
        if crate::tensor::elements(&shape)? != x.len() {
            return Err(bad(format!("cannot reshape {} values to {spec:?}", n)));
        }
        Ok(vec![Tensor {
            shape,
            data: x.data.clone(),
        }])
    }
}

struct Flatten(i64);
impl Op for Flatten {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0];
        let r = x.shape.len() as i64;
        let axis = if self.0 < 0 { self.0 + r } else { self.0 }.clamp(0, r) as usize;
        let a: usize = x.shape[..axis].iter().product();
        Ok(vec![Tensor {
            shape: vec![a, x.len() / a.max(1)],
            data: x.data.clone(),
        }])
    }
}

/// Gather along an axis of a 2-D (or 1-D) tensor.
struct Gather(i64);
impl Op for Gather {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let (x, idx) = (i[0], i.get(1).ok_or_else(|| bad("Gather needs indices"))?);
        let idx = idx.as_i64()?;
        let rank = x.shape.len() as i64;
        let axis = if self.0 < 0 { self.0 + rank } else { self.0 };
        let (rows, cols) = x.rows_cols();
        let (outer, dim, inner) = match (rank, axis) {
            (1, 0) => (1, x.len(), 1),
            (2, 0) => (1, rows, cols),
            (2, 1) => (rows, cols, 1),
            _ => {
                return Err(OnnxError::Unsupported(format!(
                    "Gather on axis {axis} of rank {rank}"
                )))
            }
        };
        let mut picks = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for j in idx {
                let j = if *j < 0 { *j + dim as i64 } else { *j };
                if j < 0 || j as usize >= dim {
                    return Err(bad(format!("Gather index {j} out of {dim}")));
                }
                for k in 0..inner {
                    picks.push(o * dim * inner + j as usize * inner + k);
                }
            }
        }
        let data = match &x.data {
            Data::F32(v) => Data::F32(picks.iter().map(|p| v[*p]).collect()),
            Data::I64(v) => Data::I64(picks.iter().map(|p| v[*p]).collect()),
            Data::Bool(v) => Data::Bool(picks.iter().map(|p| v[*p]).collect()),
        };
        let shape = match (rank, axis) {
            (1, _) => vec![idx.len()],
            (_, 0) => vec![idx.len(), cols],
            _ => vec![rows, idx.len()],
        };
        Ok(vec![Tensor { shape, data }])
    }
}

struct Concat(i64);
impl Op for Concat {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let rank = i[0].shape.len() as i64;
        let axis = if self.0 < 0 { self.0 + rank } else { self.0 };
        let fl: Vec<Tensor> = i
            .iter()
            .map(|t| t.cast(elem::FLOAT))
            .collect::<Result<_, _>>()?;
        if axis == 0 || rank <= 1 {
            let mut v = Vec::new();
            let mut rows = 0;
            for t in &fl {
                v.extend_from_slice(t.as_f32()?);
                rows += t.shape.first().copied().unwrap_or(1);
            }
            let mut shape = i[0].shape.clone();
            if shape.is_empty() {
                shape = vec![rows]
            } else {
                shape[0] = rows
            }
            return Ok(vec![Tensor::f32(shape, v)]);
        }
        let rows = fl[0].rows_cols().0;
        let mut v = Vec::new();
        let mut total = 0;
        for r in 0..rows {
            for t in &fl {
                let (tr, c) = t.rows_cols();
                if tr != rows {
                    return Err(bad("Concat inputs differ in rows"));
                }
                v.extend_from_slice(&t.as_f32()?[r * c..(r + 1) * c]);
                if r == 0 {
                    total += c;
                }
            }
        }
        Ok(vec![Tensor::f32(vec![rows, total], v)])
    }
}

#[derive(Clone, Copy)]
#[allow(clippy::enum_variant_names)] // the ONNX operator names
enum Binary {
    AddOp,
    SubOp,
    MulOp,
    DivOp,
    PowOp,
    MaxOp,
    MinOp,
}

fn f32_of(b: Binary, x: f32, y: f32) -> f32 {
    match b {
        Binary::AddOp => x + y,
        Binary::SubOp => x - y,
        Binary::MulOp => x * y,
        Binary::DivOp => x / y,
        Binary::PowOp => x.powf(y),
        Binary::MaxOp => x.max(y),
        Binary::MinOp => x.min(y),
    }
}

fn i64_of(b: Binary, x: i64, y: i64) -> i64 {
    match b {
        Binary::AddOp => x.wrapping_add(y),
        Binary::SubOp => x.wrapping_sub(y),
        Binary::MulOp => x.wrapping_mul(y),
        Binary::DivOp => {
            if y == 0 {
                0
            } else {
                x / y
            }
        }
        Binary::PowOp => x.wrapping_pow(y.clamp(0, 63) as u32),
        Binary::MaxOp => x.max(y),
        Binary::MinOp => x.min(y),
    }
}

fn binary(b: Binary, x: &Tensor, y: &Tensor) -> Result<Tensor, OnnxError> {
    match (&x.data, &y.data) {
        (Data::I64(p), Data::I64(q)) => {
            let (v, shape) = zip_with(p, &x.shape, q, &y.shape, |a, c| i64_of(b, a, c))?;
            Ok(Tensor::i64(shape, v))
        }
        _ => {
            let (xf, yf) = (x.cast(elem::FLOAT)?, y.cast(elem::FLOAT)?);
            let (v, shape) = zip_with(xf.as_f32()?, &x.shape, yf.as_f32()?, &y.shape, |a, c| {
                f32_of(b, a, c)
            })?;
            Ok(Tensor::f32(shape, v))
        }
    }
}

struct Arith(Binary);
impl Op for Arith {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let y = i
            .get(1)
            .ok_or_else(|| bad("a binary operator needs two inputs"))?;
        Ok(vec![binary(self.0, i[0], y)?])
    }
}

struct Variadic(Binary);
impl Op for Variadic {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let mut acc = i[0].clone();
        for t in &i[1..] {
            acc = binary(self.0, &acc, t)?;
        }
        Ok(vec![acc])
    }
}

#[derive(Clone, Copy)]
enum Cmp {
    Eq,
    Gt,
    Lt,
    Ge,
    Le,
}

struct Compare(Cmp);
impl Op for Compare {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let y = i
            .get(1)
            .ok_or_else(|| bad("a comparison needs two inputs"))?;
        let c = self.0;
        let test = move |a: f64, b: f64| match c {
            Cmp::Eq => a == b,
            Cmp::Gt => a > b,
            Cmp::Lt => a < b,
            Cmp::Ge => a >= b,
            Cmp::Le => a <= b,
        };
        let (v, shape) = match (&i[0].data, &y.data) {
            (Data::I64(p), Data::I64(q)) => {
                zip_with(p, &i[0].shape, q, &y.shape, |a, b| test(a as f64, b as f64))?
            }
            _ => {
                let (a, b) = (i[0].cast(elem::FLOAT)?, y.cast(elem::FLOAT)?);
                zip_with(a.as_f32()?, &i[0].shape, b.as_f32()?, &y.shape, |p, q| {
                    test(p as f64, q as f64)
                })?
            }
        };
        Ok(vec![Tensor {
            shape,
            data: Data::Bool(v),
        }])
    }
}

#[derive(Clone, Copy)]
enum Unary {
    Negate,
    AbsOp,
    LogOp,
    ExpOp,
    SqrtOp,
    SigmoidOp,
}

struct Map(Unary);
impl Op for Map {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0];
        if let (Data::I64(v), Unary::Negate | Unary::AbsOp) = (&x.data, self.0) {
            let f = |a: &i64| {
                if matches!(self.0, Unary::Negate) {
                    -a
                } else {
                    a.abs()
                }
            };
            return Ok(vec![Tensor::i64(
                x.shape.clone(),
                v.iter().map(f).collect(),
            )]);
        }
        let xf = x.cast(elem::FLOAT)?;
        let f = match self.0 {
            Unary::Negate => |a: f32| -a,
            Unary::AbsOp => |a: f32| a.abs(),
            Unary::LogOp => |a: f32| a.ln(),
            Unary::ExpOp => |a: f32| a.exp(),
            Unary::SqrtOp => |a: f32| a.sqrt(),
            Unary::SigmoidOp => |a: f32| 1.0 / (1.0 + (-a).exp()),
        };
        Ok(vec![Tensor::f32(
            x.shape.clone(),
            xf.as_f32()?.iter().map(|a| f(*a)).collect(),
        )])
    }
}

struct NotOp;
impl Op for NotOp {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        match &i[0].data {
            Data::Bool(v) => Ok(vec![Tensor {
                shape: i[0].shape.clone(),
                data: Data::Bool(v.iter().map(|b| !b).collect()),
            }]),
            _ => Err(bad("Not needs a bool tensor")),
        }
    }
}

struct Where;
impl Op for Where {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        if i.len() < 3 {
            return Err(bad("Where needs three inputs"));
        }
        let Data::Bool(c) = &i[0].data else {
            return Err(bad("Where needs a bool condition"));
        };
        let (x, y) = (i[1].cast(elem::FLOAT)?, i[2].cast(elem::FLOAT)?);
        let (xy, shape) = zip_with(x.as_f32()?, &x.shape, y.as_f32()?, &y.shape, |a, b| (a, b))?;
        let cf: Vec<f32> = c.iter().map(|b| *b as u8 as f32).collect();
        let (v, shape) = zip_with(
            &cf,
            &i[0].shape,
            &(0..xy.len()).map(|k| k as f32).collect::<Vec<_>>(),
            &shape,
            |cc, k| {
                let (a, b) = xy[k as usize];
                if cc != 0.0 {
                    a
                } else {
                    b
                }
            },
        )?;
        Ok(vec![Tensor::f32(shape, v)])
    }
}

struct ArgMax {
    axis: i64,
    keepdims: bool,
}
impl Op for ArgMax {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0].cast(elem::FLOAT)?;
        let rank = x.shape.len() as i64;
        let axis = if self.axis < 0 {
            self.axis + rank
        } else {
            self.axis
        };
        if rank != 2 || axis != 1 {
            return Err(OnnxError::Unsupported(format!(
                "ArgMax on axis {axis} of rank {rank}"
            )));
        }
        let (rows, cols) = x.rows_cols();
        let v = x.as_f32()?;
        let out: Vec<i64> = (0..rows)
            .map(|r| {
                let row = &v[r * cols..(r + 1) * cols];
                row.iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (k, x)| if *x > b.1 { (k, *x) } else { b },
                    )
                    .0 as i64
            })
            .collect();
        let shape = if self.keepdims {
            vec![rows, 1]
        } else {
            vec![rows]
        };
        Ok(vec![Tensor::i64(shape, out)])
    }
}

struct Softmax(i64);
impl Op for Softmax {
    fn run(&self, i: &[&Tensor]) -> Result<Vec<Tensor>, OnnxError> {
        let x = i[0].cast(elem::FLOAT)?;
        let rank = x.shape.len() as i64;
        let axis = if self.0 < 0 { self.0 + rank } else { self.0 };
        if axis != rank - 1 {
            return Err(OnnxError::Unsupported("Softmax on an inner axis".into()));
        }
        let cols = *x.shape.last().unwrap_or(&1);
        let mut v = x.as_f32()?.to_vec();
        for row in v.chunks_mut(cols.max(1)) {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let mut s = 0.0;
            for a in row.iter_mut() {
                *a = (*a - m).exp();
                s += *a;
            }
            row.iter_mut().for_each(|a| *a /= s);
        }
        Ok(vec![Tensor::f32(x.shape.clone(), v)])
    }
}
