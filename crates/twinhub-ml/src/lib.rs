//! Pure ONNX inference for twinhub (no I/O, no async): loads the models
//! scikit-learn exports through skl2onnx — `ai.onnx.ml` tree ensembles,
//! scalers, encoders and the standard operators their pipelines use — and
//! runs them in process. Also the per-tree prediction interval of seed 000.
//!
//! Why our own evaluator: tract does not run TreeEnsembleRegressor and its
//! classifier kernel is slow; onnxruntime cannot be downloaded here. A
//! compiled tree walk over flat node arrays matches onnxruntime to float32
//! precision at microseconds per row (see `twinhub bench ml`).
//!
//! May call: nothing of twinhub (a leaf crate).

pub mod manifest;
pub mod model;
pub mod ops;
pub mod proto;
pub mod synthetic;
pub mod tensor;

pub use manifest::{Drift, FieldError, Kind, Manifest, Prediction, Predictor};
pub use model::{percentile, Model, Run};
pub use tensor::Tensor;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnnxError {
    /// The model uses something this evaluator does not run.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The model or the input is malformed.
    #[error("{0}")]
    Invalid(String),
}
