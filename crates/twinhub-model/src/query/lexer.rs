//! Tokens of the twin query language, each with its byte position so that
//! syntax errors can point at it.

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Sym(&'static str),
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub pos: usize,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("position {pos}: {message}")]
pub struct SyntaxError {
    pub pos: usize,
    pub message: String,
}

pub fn lex(src: &str) -> Result<Vec<Token>, SyntaxError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'\'' || c == b'"' {
            let q = c;
            i += 1;
            let mut s = String::new();
            loop {
                match b.get(i) {
                    None => {
                        return Err(SyntaxError {
                            pos: start,
                            message: "unterminated string".into(),
                        })
                    }
                    Some(&x) if x == q => {
                        if b.get(i + 1) == Some(&q) {
                            s.push(q as char);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().expect("in bounds");
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push(Token {
                tok: Tok::Str(s),
                pos: start,
            });
            continue;
        }
        if c.is_ascii_digit() || (c == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || matches!(b[i], b'.' | b'e' | b'E')
                    || (matches!(b[i], b'+' | b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let n: f64 = src[start..i].parse().map_err(|_| SyntaxError {
                pos: start,
                message: "bad number".into(),
            })?;
            out.push(Token {
                tok: Tok::Num(n),
                pos: start,
            });
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(src[start..i].to_string()),
                pos: start,
            });
            continue;
        }
        let two = src.get(i..i + 2);
        let sym: &'static str = match two {
            Some("!=") => "!=",
            Some("<>") => "!=",
            Some("<=") => "<=",
            Some(">=") => ">=",
            _ => match c {
                b'=' => "=",
                b'<' => "<",
                b'>' => ">",
                b'(' => "(",
                b')' => ")",
                b'[' => "[",
                b']' => "]",
                b',' => ",",
                b'.' => ".",
                b'*' => "*",
                _ => {
                    return Err(SyntaxError {
                        pos: start,
                        message: format!(
                            "unexpected character '{}'",
                            src[i..].chars().next().unwrap_or('?')
                        ),
                    })
                }
            },
        };
        i += if matches!(two, Some("!=" | "<>" | "<=" | ">=")) {
            2
        } else {
            1
        };
        out.push(Token {
            tok: Tok::Sym(sym),
            pos: start,
        });
    }
    out.push(Token {
        tok: Tok::End,
        pos: b.len(),
    });
    Ok(out)
}
