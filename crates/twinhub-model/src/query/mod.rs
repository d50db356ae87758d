//! The twin query language: an Azure Digital Twins compatible subset.
//! Parsing is pure; evaluation runs against any `Graph`.

mod eval;
mod lexer;
mod parser;

pub use eval::{execute, Graph, Hint, Page, QueryError};
pub use lexer::SyntaxError;
pub use parser::{parse, CmpOp, Expr, Join, Operand, Path, Query, Select, Source, MAX_JOINS};

#[cfg(test)]
mod tests;
