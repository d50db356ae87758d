//! The query grammar (an Azure Digital Twins compatible subset):
//!
//! ```text
//! SELECT [TOP(n)] (* | COUNT() | item [AS name], …)
//! FROM DIGITALTWINS [[AS] T] (JOIN X RELATED T.rel [R])* [WHERE cond]
//! FROM RELATIONSHIPS [[AS] R] [WHERE cond]
//! cond := cond OR cond | cond AND cond | NOT cond | (cond)
//!       | operand (=|!=|<|<=|>|>=) operand | operand [NOT] IN [..] | operand NIN [..]
//!       | FUNC(args)   (IS_OF_MODEL, IS_DEFINED, IS_NULL, IS_BOOL, IS_NUMBER,
//!                       IS_STRING, IS_PRIMITIVE, IS_OBJECT, STARTSWITH, ENDSWITH, CONTAINS)
//! ```

use super::lexer::{lex, SyntaxError, Tok, Token};
use serde_json::Value;

pub const MAX_JOINS: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub select: Select,
    pub top: Option<usize>,
    pub source: Source,
    pub alias: Option<String>,
    pub joins: Vec<Join>,
    pub filter: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Twins,
    Relationships,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    All,
    Count,
    Items(Vec<(Path, Option<String>)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// The alias the related twin gets.
    pub target: String,
    /// The alias whose relationships are followed.
    pub source: String,
    pub relationship: String,
    /// Alias for the relationship itself.
    pub rel_alias: Option<String>,
}

/// `alias.a.b` (alias None when the query has a single unnamed source).
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    pub alias: Option<String>,
    pub steps: Vec<String>,
}

impl Path {
    pub fn label(&self) -> String {
        let mut parts: Vec<&str> = self.alias.iter().map(String::as_str).collect();
        parts.extend(self.steps.iter().map(String::as_str));
        parts.join(".")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(Path),
    Lit(Value),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(Operand, CmpOp, Operand),
    In(Operand, Vec<Value>, bool),
    Func(String, Vec<Operand>),
}

struct P {
    toks: Vec<Token>,
    i: usize,
}

fn kw(t: &Tok, k: &str) -> bool {
    matches!(t, Tok::Ident(s) if s.eq_ignore_ascii_case(k))
}

const RESERVED: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "JOIN",
    "RELATED",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "NIN",
    "TOP",
    "DIGITALTWINS",
    "RELATIONSHIPS",
];

impl P {
    fn peek(&self) -> &Tok {
        &self.toks[self.i].tok
    }
    fn pos(&self) -> usize {
        self.toks[self.i].pos
    }
    fn next(&mut self) -> Tok {
        let t = self.toks[self.i].tok.clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }
    fn fail<T>(&self, what: &str) -> Result<T, SyntaxError> {
        let got = match self.peek() {
            Tok::End => "the end of the query".to_string(),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Num(n) => n.to_string(),
            Tok::Sym(s) => format!("'{s}'"),
        };
        Err(SyntaxError {
            pos: self.pos(),
            message: format!("expected {what}, found {got}"),
        })
    }
    fn keyword(&mut self, k: &str) -> Result<(), SyntaxError> {
        if kw(self.peek(), k) {
            self.next();
            Ok(())
        } else {
            self.fail(k)
        }
    }
    fn sym(&mut self, s: &str) -> Result<(), SyntaxError> {
        if matches!(self.peek(), Tok::Sym(x) if *x == s) {
            self.next();
            Ok(())
        } else {
            self.fail(&format!("'{s}'"))
        }
    }
    fn is_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Tok::Sym(x) if *x == s)
    }
    fn ident(&mut self, what: &str) -> Result<String, SyntaxError> {
        match self.peek().clone() {
            Tok::Ident(s) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&s)) => {
                self.next();
                Ok(s)
            }
            _ => self.fail(what),
        }
    }
    fn alias_opt(&mut self) -> Option<String> {
        if kw(self.peek(), "AS") {
            self.next();
        }
        match self.peek().clone() {
            Tok::Ident(s) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&s)) => {
                self.next();
                Some(s)
            }
            _ => None,
        }
    }
}

pub fn parse(src: &str) -> Result<Query, SyntaxError> {
    let mut p = P {
        toks: lex(src)?,
        i: 0,
    };
    p.keyword("SELECT")?;
    let mut top = None;
    if kw(p.peek(), "TOP") {
        p.next();
        p.sym("(")?;
        match p.next() {
            Tok::Num(n) if n >= 1.0 && n.fract() == 0.0 => top = Some(n as usize),
            _ => {
                p.i -= 1;
                return p.fail("a positive whole number");
            }
        }
        p.sym(")")?;
    }
    let select = if p.is_sym("*") {
        p.next();
        Select::All
    } else if kw(p.peek(), "COUNT") {
        p.next();
        p.sym("(")?;
        p.sym(")")?;
        Select::Count
    } else {
        let mut items = Vec::new();
        loop {
            let path = path(&mut p)?;
            let alias = if kw(p.peek(), "AS") {
                p.next();
                Some(p.ident("a name after AS")?)
            } else {
                None
            };
            items.push((path, alias));
            if p.is_sym(",") {
                p.next();
            } else {
                break;
            }
        }
        Select::Items(items)
    };
    p.keyword("FROM")?;
    let source = if kw(p.peek(), "DIGITALTWINS") {
        p.next();
        Source::Twins
    } else if kw(p.peek(), "RELATIONSHIPS") {
        p.next();
        Source::Relationships
    } else {
        return p.fail("DIGITALTWINS or RELATIONSHIPS");
    };
    let alias = p.alias_opt();
    let mut joins = Vec::new();
    while kw(p.peek(), "JOIN") {
        if source == Source::Relationships {
            return p.fail("WHERE (JOIN needs FROM DIGITALTWINS)");
        }
        let at = p.pos();
        p.next();
        let target = p.ident("an alias for the related twin")?;
        p.keyword("RELATED")?;
        let src = p.ident("the alias whose relationship to follow")?;
        p.sym(".")?;
        let relationship = p.ident("a relationship name")?;
        let rel_alias = p.alias_opt();
        joins.push(Join {
            target,
            source: src,
            relationship,
            rel_alias,
        });
        if joins.len() > MAX_JOINS {
            return Err(SyntaxError {
                pos: at,
                message: format!("at most {MAX_JOINS} JOINs per query"),
            });
        }
    }
    let filter = if kw(p.peek(), "WHERE") {
        p.next();
        Some(or_expr(&mut p)?)
    } else {
        None
    };
    if *p.peek() != Tok::End {
        return p.fail("the end of the query");
    }
    Ok(Query {
        select,
        top,
        source,
        alias,
        joins,
        filter,
    })
}

fn path(p: &mut P) -> Result<Path, SyntaxError> {
    let first = match p.peek().clone() {
        Tok::Ident(s) if !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&s)) => {
            p.next();
            s
        }
        _ => return p.fail("a property path"),
    };
    let mut steps = vec![first];
    while p.is_sym(".") {
        p.next();
        match p.next() {
            Tok::Ident(s) => steps.push(s),
            _ => {
                p.i -= 1;
                return p.fail("a property name after '.'");
            }
        }
    }
    // Resolved against the query's aliases by the evaluator.
    Ok(Path { alias: None, steps })
}

fn or_expr(p: &mut P) -> Result<Expr, SyntaxError> {
    let mut e = and_expr(p)?;
    while kw(p.peek(), "OR") {
        p.next();
        e = Expr::Or(Box::new(e), Box::new(and_expr(p)?));
    }
    Ok(e)
}

fn and_expr(p: &mut P) -> Result<Expr, SyntaxError> {
    let mut e = unary(p)?;
    while kw(p.peek(), "AND") {
        p.next();
        e = Expr::And(Box::new(e), Box::new(unary(p)?));
    }
    Ok(e)
}

fn unary(p: &mut P) -> Result<Expr, SyntaxError> {
    if kw(p.peek(), "NOT") {
        p.next();
        return Ok(Expr::Not(Box::new(unary(p)?)));
    }
    if p.is_sym("(") {
        p.next();
        let e = or_expr(p)?;
        p.sym(")")?;
        return Ok(e);
    }
    if let Tok::Ident(name) = p.peek().clone() {
        if p.toks.get(p.i + 1).is_some_and(|t| t.tok == Tok::Sym("("))
            && !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&name))
        {
            let at = p.pos();
            p.next();
            p.next();
            let mut args = Vec::new();
            if !p.is_sym(")") {
                loop {
                    args.push(operand(p)?);
                    if p.is_sym(",") {
                        p.next();
                    } else {
                        break;
                    }
                }
            }
            p.sym(")")?;
            let f = name.to_ascii_uppercase();
            const FUNCS: &[&str] = &[
                "IS_OF_MODEL",
                "IS_DEFINED",
                "IS_NULL",
                "IS_BOOL",
                "IS_NUMBER",
                "IS_STRING",
                "IS_PRIMITIVE",
                "IS_OBJECT",
                "STARTSWITH",
                "ENDSWITH",
                "CONTAINS",
            ];
            if !FUNCS.contains(&f.as_str()) {
                return Err(SyntaxError {
                    pos: at,
                    message: format!("unknown function {name}; known: {}", FUNCS.join(", ")),
                });
            }
            return Ok(Expr::Func(f, args));
        }
    }
    let left = operand(p)?;
    let negate = kw(p.peek(), "NOT");
    if negate {
        p.next();
    }
    if kw(p.peek(), "IN") || kw(p.peek(), "NIN") {
        let nin = kw(p.peek(), "NIN");
        p.next();
        p.sym("[")?;
        let mut list = Vec::new();
        if !p.is_sym("]") {
            loop {
                match operand(p)? {
                    Operand::Lit(v) => list.push(v),
                    Operand::Path(_) => return p.fail("a literal in the list"),
                }
                if p.is_sym(",") {
                    p.next();
                } else {
                    break;
                }
            }
        }
        p.sym("]")?;
        return Ok(Expr::In(left, list, nin ^ negate));
    }
    if negate {
        return p.fail("IN or NIN after NOT");
    }
    let op = match p.next() {
        Tok::Sym("=") => CmpOp::Eq,
        Tok::Sym("!=") => CmpOp::Ne,
        Tok::Sym("<") => CmpOp::Lt,
        Tok::Sym("<=") => CmpOp::Le,
        Tok::Sym(">") => CmpOp::Gt,
        Tok::Sym(">=") => CmpOp::Ge,
        _ => {
            p.i -= 1;
            return p.fail("a comparison (=, !=, <, <=, >, >=, IN, NIN)");
        }
    };
    let right = operand(p)?;
    Ok(Expr::Cmp(left, op, right))
}

fn operand(p: &mut P) -> Result<Operand, SyntaxError> {
    match p.peek().clone() {
        Tok::Str(s) => {
            p.next();
            Ok(Operand::Lit(Value::String(s)))
        }
        Tok::Num(n) => {
            p.next();
            Ok(Operand::Lit(crate::value::number_json(n)))
        }
        Tok::Ident(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
            p.next();
            Ok(Operand::Lit(Value::Bool(s.eq_ignore_ascii_case("true"))))
        }
        Tok::Ident(s) if s.eq_ignore_ascii_case("null") => {
            p.next();
            Ok(Operand::Lit(Value::Null))
        }
        Tok::Ident(_) => Ok(Operand::Path(path(p)?)),
        _ => p.fail("a property path or a literal"),
    }
}
