//! A reader for old-style ClassAd files, the format of the `.job.ad` and `.machine.ad`
//! snapshots HTCondor puts in a job's sandbox: one `Name = value` per line.
//!
//! Values are parsed into [`Value`]s: literals (strings, integers, reals, booleans,
//! `undefined`, `error`), lists `{ a, b }` and nested ads `[ a = 1; b = "x" ]`, nested
//! to any depth up to [`MAX_DEPTH`]. Anything else is kept as an unevaluated
//! expression ([`Value::Expr`]) and evaluated on demand by a deliberately small
//! evaluator: integer/real arithmetic (`+ - * / %`, unary minus, parentheses),
//! attribute references within the ad, and `real("INF")`-style casts, because pools
//! write `MachineMaxVacateTime = 10 * 60` and HTCondor prints infinite reals as
//! `real("INF")`. What the evaluator does not understand (comparisons, function calls,
//! `MY.`/`TARGET.`) stays unevaluated: a getter then answers `None`, never a guess.
//!
//! The rules follow HTCondor's own old-syntax reader (`src/classad/lexer.cpp`,
//! `tokenizeStringOld`), checked against the PyPI `htcondor` package by
//! `tests/classad.rs`:
//! * strings: a backslash is literal unless it precedes a quote; `\"` is a quote,
//!   except when that quote is the last character of the line, where it closes the
//!   string (so `"C:\dir\"` reads as `C:\dir\`). No other escapes exist, so `\\` is two
//!   backslashes and `\n` is a backslash and an `n`;
//! * integers are 64-bit and wrap on overflow; a leading zero (`010`) is refused;
//! * a real needs digits after its point (`5.` is refused, `.5` is fine).
//!
//! Input is untrusted (a job can be handed a damaged ad): every problem is a
//! [`LineError`] for its line, the rest of the file still parses, and size and
//! nesting limits keep time and memory bounded.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

/// Lines longer than this are refused without being parsed.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Lists, nested ads and parentheses nest at most this deep.
pub const MAX_DEPTH: usize = 64;
/// List elements and nested attributes allowed on one line (a real GPU ad has a few dozen).
pub const MAX_VALUES_PER_LINE: usize = 65_536;

/// One parsed value. Reals compare with `==`, so a NaN is never equal to itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Undefined,
    Error,
    Bool(bool),
    Int(i64),
    Real(f64),
    String(String),
    List(Vec<Value>),
    Ad(Ad),
    /// An expression kept as written (trimmed); see [`Value::evaluate`].
    Expr(String),
}

impl Value {
    /// The value with expressions evaluated where the small evaluator can (in lists
    /// too); attribute references are looked up in `scope`. What it cannot evaluate
    /// stays a [`Value::Expr`]. Nested ads are returned as they are, as ClassAds do.
    pub fn evaluate(&self, scope: &Ad) -> Value {
        eval_value(self, &Scope { ad: scope, parent: None }, 0)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// Integers count as reals, as in ClassAd arithmetic.
    pub fn as_real(&self) -> Option<f64> {
        match self {
            Value::Real(r) => Some(*r),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn as_ad(&self) -> Option<&Ad> {
        match self {
            Value::Ad(a) => Some(a),
            _ => None,
        }
    }
}

/// One attribute: its name as written, its value text as written, and the parsed value.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub name: String,
    /// The value's text as written; empty for a list or ad inside a nested ad.
    pub raw: String,
    pub value: Value,
}

/// A ClassAd: attributes by case-insensitive name. A later line for the same name
/// replaces an earlier one, as in HTCondor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ad {
    attrs: BTreeMap<String, Attr>,
}

/// What was wrong with one line of an ad file. The line is skipped; the rest is read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// The attribute the line assigns, when that much could be read.
    pub name: Option<String>,
    pub kind: ErrorKind,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "line {} ({n}): {}", self.line, self.kind),
            None => write!(f, "line {}: {}", self.line, self.kind),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorKind {
    #[error("the line is {len} bytes long; lines over {limit} bytes are not read")]
    LineTooLong { len: usize, limit: usize },
    #[error("the line is not valid UTF-8")]
    InvalidUtf8,
    #[error("expected `Name = value`")]
    NotAnAssignment,
    #[error("{0} is not an attribute name")]
    BadName(String),
    #[error("no value after `=`")]
    MissingValue,
    #[error("unterminated string starting at column {0}")]
    UnterminatedString(usize),
    #[error("nested more than {0} levels deep")]
    TooDeep(usize),
    #[error("more than {0} values on one line")]
    TooManyValues(usize),
    #[error("{msg} at column {col}")]
    Syntax { msg: String, col: usize },
}

impl Ad {
    /// Parse an ad file's text. Blank lines and `#` comment lines are skipped.
    pub fn parse(text: &str) -> (Ad, Vec<LineError>) {
        Self::parse_bytes(text.as_bytes())
    }

    /// Parse raw file bytes: a line that is not UTF-8 is an error for that line only.
    pub fn parse_bytes(bytes: &[u8]) -> (Ad, Vec<LineError>) {
        let mut ad = Ad::default();
        let mut errors = Vec::new();
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let number = i + 1;
            // Tolerate CRLF files; HTCondor itself never writes them.
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > MAX_LINE_BYTES {
                errors.push(LineError {
                    line: number,
                    name: None,
                    kind: ErrorKind::LineTooLong { len: line.len(), limit: MAX_LINE_BYTES },
                });
                continue;
            }
            let Ok(line) = std::str::from_utf8(line) else {
                errors.push(LineError { line: number, name: None, kind: ErrorKind::InvalidUtf8 });
                continue;
            };
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("//") {
                continue;
            }
            match parse_line(line) {
                Ok(attr) => ad.insert(attr),
                Err((name, kind)) => errors.push(LineError { line: number, name, kind }),
            }
        }
        (ad, errors)
    }

    fn insert(&mut self, attr: Attr) {
        self.attrs.insert(attr.name.to_ascii_lowercase(), attr);
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// Attributes in case-insensitive name order.
    pub fn iter(&self) -> impl Iterator<Item = &Attr> {
        self.attrs.values()
    }

    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.get(&name.to_ascii_lowercase())
    }

    /// The value as parsed, expressions unevaluated.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.attr(name).map(|a| &a.value)
    }

    /// The value text as written in the file.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.attr(name).map(|a| a.raw.as_str())
    }

    /// The value, evaluated where the small evaluator can (see [`Value::evaluate`]).
    pub fn eval(&self, name: &str) -> Option<Value> {
        Some(self.get(name)?.evaluate(self))
    }

    pub fn string(&self, name: &str) -> Option<String> {
        match self.eval(name)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer (a real is not silently truncated).
    pub fn int(&self, name: &str) -> Option<i64> {
        self.eval(name)?.as_int()
    }

    /// A real, or an integer as a real.
    pub fn real(&self, name: &str) -> Option<f64> {
        self.eval(name)?.as_real()
    }

    pub fn bool(&self, name: &str) -> Option<bool> {
        self.eval(name)?.as_bool()
    }

    /// A list, elements evaluated where possible (`{ GPUs_GPU_x }` yields the nested ad).
    pub fn list(&self, name: &str) -> Option<Vec<Value>> {
        match self.eval(name)? {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// A nested ad, directly or through an attribute reference.
    pub fn ad(&self, name: &str) -> Option<Ad> {
        match self.eval(name)? {
            Value::Ad(a) => Some(a),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------
// Lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Int(i64),
    /// 9223372036854775808: only valid after a minus, as i64::MIN.
    IntMinMagnitude,
    Real(f64),
    Str(String),
    Ident(&'a str),
    /// Punctuation and operators, as written (`(`, `==`, `=?=`, ...).
    Punct(&'static str),
    End,
}

type LexResult<T> = Result<T, ErrorKind>;

const PUNCT: &[&str] = &[
    "=?=", "=!=", ">>>", "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "(", ")", "[", "]", "{", "}", ",", ";", "=", "+", "-", "*", "/",
    "%", "<", ">", "!", "~", "^", "&", "|", "?", ":", ".",
];

/// A lexer over one line. Positions are byte offsets into the line; columns in errors
/// are 1-based byte columns.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    peeked: Option<(usize, Tok<'a>, usize)>,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str, pos: usize) -> Self {
        Lexer { src, pos, peeked: None }
    }

    fn syntax<T>(&self, msg: impl Into<String>, at: usize) -> LexResult<T> {
        Err(ErrorKind::Syntax { msg: msg.into(), col: at + 1 })
    }

    /// The next token with its start and end offsets, without consuming it.
    fn peek(&mut self) -> LexResult<(usize, Tok<'a>, usize)> {
        if self.peeked.is_none() {
            let t = self.lex()?;
            self.peeked = Some(t);
        }
        // `peeked` was filled just above.
        Ok(self.peeked.clone().unwrap_or((self.pos, Tok::End, self.pos)))
    }

    fn next(&mut self) -> LexResult<(usize, Tok<'a>, usize)> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn skip_space_and_comments(&mut self) -> LexResult<()> {
        let b = self.src.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if b[self.pos..].starts_with(b"//") {
                self.pos = b.len();
            } else if b[self.pos..].starts_with(b"/*") {
                match self.src[self.pos + 2..].find("*/") {
                    Some(i) => self.pos += 2 + i + 2,
                    None => return self.syntax("unterminated `/*` comment", self.pos),
                }
            } else {
                return Ok(());
            }
        }
    }

    fn lex(&mut self) -> LexResult<(usize, Tok<'a>, usize)> {
        self.skip_space_and_comments()?;
        let start = self.pos;
        let b = self.src.as_bytes();
        let Some(&c) = b.get(start) else { return Ok((start, Tok::End, start)) };
        let tok = if c.is_ascii_digit() || (c == b'.' && b.get(start + 1).is_some_and(u8::is_ascii_digit)) {
            self.number()?
        } else if c == b'"' {
            Tok::Str(self.string()?)
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let len = b[start..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count();
            self.pos += len;
            Tok::Ident(&self.src[start..self.pos])
        } else if let Some(p) = PUNCT.iter().find(|p| b[start..].starts_with(p.as_bytes())) {
            self.pos += p.len();
            Tok::Punct(p)
        } else {
            let ch = self.src[start..].chars().next().unwrap_or('?');
            return self.syntax(format!("unexpected character {ch:?}"), start);
        };
        Ok((start, tok, self.pos))
    }

    fn number(&mut self) -> LexResult<Tok<'a>> {
        let b = self.src.as_bytes();
        let start = self.pos;
        let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
        let int_len = digits(start);
        let mut end = start + int_len;
        let mut real = false;
        if b.get(end) == Some(&b'.') {
            let frac = digits(end + 1);
            if frac == 0 {
                return self.syntax("a real needs digits after its `.`", start);
            }
            end += 1 + frac;
            real = true;
        }
        if matches!(b.get(end), Some(b'e' | b'E')) {
            let mut e = end + 1;
            if matches!(b.get(e), Some(b'+' | b'-')) {
                e += 1;
            }
            let exp = digits(e);
            if exp == 0 {
                return self.syntax("a real needs digits in its exponent", start);
            }
            end = e + exp;
            real = true;
        }
        let text = &self.src[start..end];
        self.pos = end;
        if real {
            // Overflow gives inf, as HTCondor's reader does.
            return text.parse::<f64>().map(Tok::Real).or_else(|_| self.syntax(format!("bad real {text}"), start));
        }
        if int_len > 1 && b[start] == b'0' {
            return self.syntax(format!("{text}: integers may not start with 0"), start);
        }
        match text.parse::<i64>() {
            Ok(i) => Ok(Tok::Int(i)),
            // i64::MIN is written as `-9223372036854775808`: the minus is a separate
            // token, so its magnitude must lex on its own.
            Err(_) if text == "9223372036854775808" => Ok(Tok::IntMinMagnitude),
            Err(_) => self.syntax(format!("integer {text} is out of range"), start),
        }
    }

    /// An old-syntax string (see the module notes); `self.pos` is on the opening quote.
    fn string(&mut self) -> LexResult<String> {
        let open = self.pos;
        let b = self.src.as_bytes();
        let mut out = String::new();
        let mut i = open + 1;
        let mut seg = i;
        loop {
            // Find the next quote; everything before it (backslashes too) is literal.
            let Some(q) = self.src[i..].find('"').map(|q| i + q) else {
                return Err(ErrorKind::UnterminatedString(open + 1));
            };
            if q > open + 1 && b[q - 1] == b'\\' && q + 1 < b.len() {
                // `\"` with more text after it: a literal quote.
                out.push_str(&self.src[seg..q - 1]);
                out.push('"');
                i = q + 1;
                seg = i;
                continue;
            }
            out.push_str(&self.src[seg..q]);
            self.pos = q + 1;
            if out.contains('\0') {
                return self.syntax("a string may not contain a NUL character", open);
            }
            return Ok(out);
        }
    }
}

// ---------------------------------------------------------------------------------
// Parsing a line

type ParseResult<T> = Result<T, ErrorKind>;

/// Which closing tokens end the expression being read.
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    TopLevel,
    List,
    NestedAd,
}

impl Ctx {
    fn ends(self, t: &Tok) -> bool {
        match self {
            Ctx::TopLevel => matches!(t, Tok::End),
            Ctx::List => matches!(t, Tok::Punct("," | "}")),
            Ctx::NestedAd => matches!(t, Tok::Punct(";" | "]")),
        }
    }
}

struct Parser<'a> {
    lx: Lexer<'a>,
    values: usize,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
}

/// A name for error messages: short and printable whatever the input.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

fn parse_line(line: &str) -> Result<Attr, (Option<String>, ErrorKind)> {
    let Some(eq) = line.find('=') else { return Err((None, ErrorKind::NotAnAssignment)) };
    let name = line[..eq].trim();
    if !valid_name(name) {
        return Err((None, ErrorKind::BadName(shown(name))));
    }
    let fail = |k| (Some(name.to_string()), k);
    let raw = line[eq + 1..].trim();
    if raw.is_empty() {
        return Err(fail(ErrorKind::MissingValue));
    }
    let mut p = Parser { lx: Lexer::new(line, eq + 1), values: 0 };
    let value = p.expr(Ctx::TopLevel, 0).map_err(fail)?;
    Ok(Attr { name: name.to_string(), raw: raw.to_string(), value })
}

impl<'a> Parser<'a> {
    fn count(&mut self) -> ParseResult<()> {
        self.values += 1;
        if self.values > MAX_VALUES_PER_LINE {
            return Err(ErrorKind::TooManyValues(MAX_VALUES_PER_LINE));
        }
        Ok(())
    }

    /// One expression, up to (not including) the token that ends it in `ctx`. A lone
    /// literal, list or nested ad becomes that value; anything else an `Expr`.
    fn expr(&mut self, ctx: Ctx, depth: usize) -> ParseResult<Value> {
        let (start, first, _) = self.lx.peek()?;
        if ctx.ends(&first) {
            return self.lx.syntax("missing value", start);
        }
        let consumed = match self.literal(depth)? {
            Some(v) if ctx.ends(&self.lx.peek()?.1) => return Ok(v),
            Some(_) => true,
            None => false,
        };
        // Not a lone value: read on to the end of the expression and keep the text.
        let end = self.skip_expr(ctx, depth, consumed)?;
        self.count()?;
        Ok(Value::Expr(self.lx.src[start..end].trim().to_string()))
    }

    /// A literal, list or nested ad if one starts here (a leading minus folds into a
    /// number). `None`, with nothing consumed, when something else starts here.
    fn literal(&mut self, depth: usize) -> ParseResult<Option<Value>> {
        let (_, tok, _) = self.lx.peek()?;
        let v = match tok {
            Tok::Int(i) => Value::Int(i),
            Tok::Real(r) => Value::Real(r),
            Tok::Str(s) => Value::String(s),
            Tok::Ident(id) => match keyword(id) {
                Some(v) => v,
                None => return Ok(None),
            },
            Tok::Punct("-") => {
                // `-3.5` is a literal; `-x` or `- (1)` is an expression.
                let save = (self.lx.pos, self.lx.peeked.clone());
                self.lx.next()?;
                let (_, t, _) = self.lx.peek()?;
                let v = match t {
                    Tok::Int(i) => Value::Int(-i),
                    Tok::IntMinMagnitude => Value::Int(i64::MIN),
                    Tok::Real(r) => Value::Real(-r),
                    _ => {
                        (self.lx.pos, self.lx.peeked) = save;
                        return Ok(None);
                    }
                };
                self.lx.next()?;
                self.count()?;
                return Ok(Some(v));
            }
            Tok::Punct("{") => return self.list(depth + 1).map(Some),
            Tok::Punct("[") => return self.nested_ad(depth + 1).map(Some),
            _ => return Ok(None),
        };
        self.lx.next()?;
        self.count()?;
        Ok(Some(v))
    }

    fn list(&mut self, depth: usize) -> ParseResult<Value> {
        if depth > MAX_DEPTH {
            return Err(ErrorKind::TooDeep(MAX_DEPTH));
        }
        let (open, _, _) = self.lx.next()?; // `{`
        let mut items = Vec::new();
        if let (_, Tok::Punct("}"), _) = self.lx.peek()? {
            self.lx.next()?;
            self.count()?;
            return Ok(Value::List(items));
        }
        loop {
            items.push(self.expr(Ctx::List, depth)?);
            match self.lx.next()? {
                (_, Tok::Punct(","), _) => continue,
                (_, Tok::Punct("}"), _) => break,
                (_, Tok::End, _) => return self.lx.syntax("`{` is never closed", open),
                (at, _, _) => return self.lx.syntax("expected `,` or `}` in a list", at),
            }
        }
        self.count()?;
        Ok(Value::List(items))
    }

    fn nested_ad(&mut self, depth: usize) -> ParseResult<Value> {
        if depth > MAX_DEPTH {
            return Err(ErrorKind::TooDeep(MAX_DEPTH));
        }
        let (open, _, _) = self.lx.next()?; // `[`
        let mut ad = Ad::default();
        loop {
            let (at, t, _) = self.lx.next()?;
            let name = match t {
                Tok::Punct("]") => break,
                Tok::End => return self.lx.syntax("`[` is never closed", open),
                Tok::Ident(n) => n,
                _ => return self.lx.syntax("expected an attribute name or `]` in a nested ad", at),
            };
            match self.lx.next()? {
                (_, Tok::Punct("="), _) => {}
                (at, _, _) => return self.lx.syntax(format!("expected `=` after {name} in a nested ad"), at),
            }
            let (vstart, _, _) = self.lx.peek()?;
            let value = self.expr(Ctx::NestedAd, depth)?;
            // The text of a nested list or ad is not kept: at every level of nesting it
            // would copy everything below, and memory would grow with depth × length.
            let (vend, _, _) = self.lx.peek()?;
            let raw = match value {
                Value::List(_) | Value::Ad(_) => String::new(),
                _ => self.lx.src[vstart..vend].trim().to_string(),
            };
            ad.insert(Attr { name: name.to_string(), raw, value });
            match self.lx.next()? {
                (_, Tok::Punct(";"), _) => continue,
                (_, Tok::Punct("]"), _) => break,
                (_, Tok::End, _) => return self.lx.syntax("`[` is never closed", open),
                (at, _, _) => return self.lx.syntax("expected `;` or `]` in a nested ad", at),
            }
        }
        self.count()?;
        Ok(Value::Ad(ad))
    }

    /// Consume tokens up to the end of an expression in `ctx`, checking that brackets
    /// balance, nest no deeper than the limit, and that no operand directly follows
    /// another (`"a" "b"`, `1 2`, `1_000`: HTCondor reads the first and drops the rest;
    /// baton refuses the line rather than guess). `after_operand`: an operand was just
    /// consumed. Returns the end offset of the last token.
    fn skip_expr(&mut self, ctx: Ctx, depth: usize, mut after_operand: bool) -> ParseResult<usize> {
        let mut open: Vec<(&'static str, usize)> = Vec::new();
        let mut end = self.lx.pos;
        let mut after_ident = false;
        loop {
            let (at, t, tend) = self.lx.peek()?;
            if open.is_empty() && ctx.ends(&t) {
                return Ok(end);
            }
            let operator_word = matches!(&t, Tok::Ident(w) if w.eq_ignore_ascii_case("is") || w.eq_ignore_ascii_case("isnt"));
            let starts_operand = match &t {
                Tok::Int(_) | Tok::IntMinMagnitude | Tok::Real(_) | Tok::Str(_) => true,
                Tok::Ident(_) => !operator_word,
                Tok::Punct("{") => true,
                // A call `f(...)` and a subscript `x[0]` follow an operand legally.
                Tok::Punct("(") => !after_ident,
                _ => false,
            };
            if after_operand && starts_operand {
                let shown: String = self.lx.src[at..tend].chars().take(20).collect();
                return self.lx.syntax(format!("unexpected `{shown}` after a complete expression"), at);
            }
            after_ident = matches!(&t, Tok::Ident(_)) && !operator_word;
            after_operand = match &t {
                Tok::Int(_) | Tok::IntMinMagnitude | Tok::Real(_) | Tok::Str(_) | Tok::Punct(")" | "]" | "}") => true,
                Tok::Ident(_) => !operator_word,
                _ => false,
            };
            match t {
                Tok::End => {
                    // With nothing open, the caller says what it was waiting for.
                    let Some(&(c, at)) = open.last() else { return Ok(end) };
                    return self.lx.syntax(format!("`{c}` is never closed"), at);
                }
                Tok::Punct(p @ ("(" | "[" | "{")) => {
                    if depth + open.len() + 1 > MAX_DEPTH {
                        return Err(ErrorKind::TooDeep(MAX_DEPTH));
                    }
                    open.push((p, at));
                }
                Tok::Punct(p @ (")" | "]" | "}")) => {
                    let want = match open.pop() {
                        Some(("(", _)) => ")",
                        Some(("[", _)) => "]",
                        Some(_) => "}",
                        None => "",
                    };
                    if p != want {
                        return self.lx.syntax(format!("unexpected `{p}`"), at);
                    }
                }
                _ => {}
            }
            self.lx.next()?;
            end = tend;
        }
    }
}

fn keyword(id: &str) -> Option<Value> {
    match id.to_ascii_lowercase().as_str() {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        "undefined" => Some(Value::Undefined),
        "error" => Some(Value::Error),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------
// Evaluating

/// Where attribute references are looked up: the innermost ad first.
struct Scope<'s> {
    ad: &'s Ad,
    parent: Option<&'s Scope<'s>>,
}

impl Scope<'_> {
    fn lookup(&self, name: &str) -> Option<(&Value, &Scope<'_>)> {
        match self.ad.get(name) {
            Some(v) => Some((v, self)),
            None => self.parent?.lookup(name),
        }
    }
}

/// Tokens one evaluation may read, references followed included: without a budget,
/// `A1 = A0 + A0`, `A2 = A1 + A1`, ... would take 2^64 steps.
const EVAL_STEPS: usize = 100_000;

fn eval_value(v: &Value, scope: &Scope, depth: usize) -> Value {
    eval_value_in(v, scope, depth, &Cell::new(EVAL_STEPS))
}

fn eval_value_in(v: &Value, scope: &Scope, depth: usize, steps: &Cell<usize>) -> Value {
    match v {
        Value::Expr(text) => eval_expr(text, scope, depth, steps).unwrap_or_else(|| v.clone()),
        Value::List(items) => Value::List(items.iter().map(|i| eval_value_in(i, scope, depth, steps)).collect()),
        other => other.clone(),
    }
}

/// Evaluate an expression's text, or `None` if it uses anything beyond the small
/// evaluator. `depth` bounds reference chains and nesting together.
fn eval_expr(text: &str, scope: &Scope, depth: usize, steps: &Cell<usize>) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut e = Eval { lx: Lexer::new(text, 0), scope, depth, steps };
    let v = e.sum(0)?;
    matches!(e.next()?, Tok::End).then_some(v)
}

struct Eval<'a, 's> {
    lx: Lexer<'a>,
    scope: &'s Scope<'s>,
    depth: usize,
    steps: &'s Cell<usize>,
}

impl<'a> Eval<'a, '_> {
    fn next(&mut self) -> Option<Tok<'a>> {
        let left = self.steps.get().checked_sub(1)?;
        self.steps.set(left);
        self.lx.next().ok().map(|t| t.1)
    }

    /// A reference copies the value it names, so the copy is paid for from the same
    /// budget: one step per value (lists and nested ads counted through) and one per 64
    /// bytes of text. Without this, `A = { B, B, ... }` with `B` a long list (or string)
    /// copies `B` once per mention, and a few such lines fill any memory.
    fn charge(&self, v: &Value) -> bool {
        let left = self.steps.get();
        match left.checked_sub(weight(v, left)) {
            Some(rest) => {
                self.steps.set(rest);
                true
            }
            None => {
                self.steps.set(0);
                false
            }
        }
    }

    fn punct(&mut self) -> Option<&'static str> {
        match self.lx.peek().ok()?.1 {
            Tok::Punct(p) => Some(p),
            _ => None,
        }
    }

    fn sum(&mut self, nest: usize) -> Option<Value> {
        let mut acc = self.product(nest)?;
        while let Some(op @ ("+" | "-")) = self.punct() {
            self.next()?;
            let rhs = self.product(nest)?;
            acc = arith(op, acc, rhs)?;
        }
        Some(acc)
    }

    fn product(&mut self, nest: usize) -> Option<Value> {
        let mut acc = self.unary(nest)?;
        while let Some(op @ ("*" | "/" | "%")) = self.punct() {
            self.next()?;
            let rhs = self.unary(nest)?;
            acc = arith(op, acc, rhs)?;
        }
        Some(acc)
    }

    fn unary(&mut self, nest: usize) -> Option<Value> {
        if self.depth + nest > MAX_DEPTH {
            return None;
        }
        match self.punct() {
            Some("-") => {
                self.next()?;
                // `-9223372036854775808` is i64::MIN, not an overflow.
                if self.lx.peek().ok()?.1 == Tok::IntMinMagnitude {
                    self.next()?;
                    return Some(Value::Int(i64::MIN));
                }
                match self.unary(nest + 1)? {
                    Value::Int(i) => Some(Value::Int(i.wrapping_neg())),
                    Value::Real(r) => Some(Value::Real(-r)),
                    v @ (Value::Undefined | Value::Error) => Some(v),
                    _ => None,
                }
            }
            Some("+") => {
                self.next()?;
                match self.unary(nest + 1)? {
                    v @ (Value::Int(_) | Value::Real(_) | Value::Undefined | Value::Error) => Some(v),
                    _ => None,
                }
            }
            _ => self.primary(nest),
        }
    }

    fn primary(&mut self, nest: usize) -> Option<Value> {
        match self.next()? {
            Tok::Int(i) => Some(Value::Int(i)),
            Tok::Real(r) => Some(Value::Real(r)),
            Tok::Str(s) => Some(Value::String(s)),
            Tok::Punct("(") => {
                let v = self.sum(nest + 1)?;
                matches!(self.next()?, Tok::Punct(")")).then_some(v)
            }
            Tok::Ident(id) => {
                if let Some(v) = keyword(id) {
                    return Some(v);
                }
                if self.punct() == Some("(") {
                    return self.call(id, nest);
                }
                if self.punct() == Some(".") {
                    return None; // MY.x, TARGET.x, ad.attr: beyond this evaluator
                }
                // An attribute reference: its value, evaluated in the scope it was
                // found in; a missing attribute is `undefined`, as in ClassAds.
                match self.scope.lookup(id) {
                    Some((v, found)) => match eval_value_in(v, found, self.depth + nest + 1, self.steps) {
                        Value::Expr(_) => None,
                        v => self.charge(&v).then_some(v),
                    },
                    None => Some(Value::Undefined),
                }
            }
            _ => None,
        }
    }

    /// `real(x)`: the one function HTCondor itself writes into ad files.
    fn call(&mut self, name: &str, nest: usize) -> Option<Value> {
        if !name.eq_ignore_ascii_case("real") {
            return None;
        }
        self.next()?; // `(`
        let arg = self.sum(nest + 1)?;
        if !matches!(self.next()?, Tok::Punct(")")) {
            return None;
        }
        match arg {
            Value::Int(i) => Some(Value::Real(i as f64)),
            Value::Real(r) => Some(Value::Real(r)),
            Value::String(s) => {
                let t = s.trim();
                match t.to_ascii_lowercase().as_str() {
                    "inf" | "+inf" => Some(Value::Real(f64::INFINITY)),
                    "-inf" => Some(Value::Real(f64::NEG_INFINITY)),
                    "nan" => Some(Value::Real(f64::NAN)),
                    _ => t.parse::<f64>().ok().map(Value::Real),
                }
            }
            v @ (Value::Undefined | Value::Error) => Some(v),
            _ => None,
        }
    }
}

/// What copying `v` costs in evaluation steps (see `Eval::charge`); counting stops once
/// past `limit`, so that weighing is bounded by the budget too.
fn weight(v: &Value, limit: usize) -> usize {
    let text = |s: &str| s.len() / 64;
    let mut n = 1;
    let mut add = |w: &dyn Fn(usize) -> usize| {
        if n <= limit {
            n += w(limit - n);
        }
    };
    match v {
        Value::String(s) | Value::Expr(s) => n += text(s),
        Value::List(items) => items.iter().for_each(|i| add(&|l| weight(i, l))),
        Value::Ad(ad) => ad.iter().for_each(|a| add(&|l| text(&a.name) + text(&a.raw) + weight(&a.value, l))),
        _ => {}
    }
    n
}

/// ClassAd arithmetic on numbers: error wins over undefined, integers wrap, integer
/// division truncates, `%` by zero and `%` on reals are `error`. A real divided by
/// zero is left unevaluated: HTCondor's answer there is not consistent.
fn arith(op: &str, a: Value, b: Value) -> Option<Value> {
    use Value::*;
    match (&a, &b) {
        (Error, Int(_) | Real(_) | Undefined | Error) | (Int(_) | Real(_) | Undefined, Error) => return Some(Error),
        (Undefined, Int(_) | Real(_) | Undefined) | (Int(_) | Real(_), Undefined) => return Some(Undefined),
        _ => {}
    }
    match (a, b) {
        (Int(x), Int(y)) => Some(match op {
            "+" => Int(x.wrapping_add(y)),
            "-" => Int(x.wrapping_sub(y)),
            "*" => Int(x.wrapping_mul(y)),
            "/" if y == 0 => Error,
            // HTCondor answers i64::MAX for i64::MIN / -1.
            "/" => Int(x.checked_div(y).unwrap_or(i64::MAX)),
            "%" if y == 0 => Error,
            "%" => Int(x.checked_rem(y).unwrap_or(0)),
            _ => return None,
        }),
        (x, y) => {
            let (x, y) = (x.as_real()?, y.as_real()?);
            Some(match op {
                "+" => Real(x + y),
                "-" => Real(x - y),
                "*" => Real(x * y),
                "/" if y == 0.0 => return None,
                "/" => Real(x / y),
                "%" => Error,
                _ => return None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Ad {
        let (ad, errs) = Ad::parse(text);
        assert!(errs.is_empty(), "{text:?}: {errs:?}");
        ad
    }

    fn one(value: &str) -> Value {
        ok(&format!("A = {value}")).eval("a").unwrap()
    }

    fn err(text: &str) -> ErrorKind {
        let (ad, errs) = Ad::parse(text);
        assert_eq!(errs.len(), 1, "{text:?}: {errs:?}");
        assert!(ad.is_empty(), "{text:?}");
        errs[0].kind.clone()
    }

    #[test]
    fn every_value_kind() {
        assert_eq!(one("42"), Value::Int(42));
        assert_eq!(one("-7"), Value::Int(-7));
        assert_eq!(one("-9223372036854775808"), Value::Int(i64::MIN));
        assert_eq!(one("1.0E10"), Value::Real(1e10));
        assert_eq!(one("-3.5"), Value::Real(-3.5));
        assert_eq!(one(".5"), Value::Real(0.5));
        assert_eq!(one("1E-07"), Value::Real(1e-7));
        assert_eq!(one("1e3"), Value::Real(1000.0));
        assert_eq!(one("TRUE"), Value::Bool(true));
        assert_eq!(one("false"), Value::Bool(false));
        assert_eq!(one("Undefined"), Value::Undefined);
        assert_eq!(one("error"), Value::Error);
        assert_eq!(one("\"Tesla T4\""), Value::String("Tesla T4".into()));
        assert_eq!(one("\"\""), Value::String(String::new()));
        assert_eq!(
            one("{ 1, \"x\", { 2, 3 } }"),
            Value::List(vec![Value::Int(1), Value::String("x".into()), Value::List(vec![Value::Int(2), Value::Int(3)])])
        );
        assert_eq!(one("{}"), Value::List(vec![]));
        let Value::Ad(n) = one("[ a = 1; b = \"x\"; c = [ d = { -2.5 } ] ]") else { panic!() };
        assert_eq!(n.int("A"), Some(1));
        assert_eq!(n.string("b").as_deref(), Some("x"));
        assert_eq!(n.ad("c").unwrap().list("d"), Some(vec![Value::Real(-2.5)]));
        assert_eq!(one("[]"), Value::Ad(Ad::default()));
        let n = ok("A = [ x = 2 * 3 ; y = \"s\"; z = { 1 } ]").ad("A").unwrap();
        assert_eq!((n.raw("x"), n.raw("y"), n.raw("z")), (Some("2 * 3"), Some("\"s\""), Some("")));
        assert_eq!(n.int("x"), Some(6));
        assert_eq!(one("[ a = 1; ]").as_ad().unwrap().len(), 1);
        assert!(one("real(\"INF\")").as_real().unwrap().is_infinite());
        assert!(one("real(\"NaN\")").as_real().unwrap().is_nan());
        assert_eq!(one("real(\"-INF\")"), Value::Real(f64::NEG_INFINITY));
    }

    #[test]
    fn strings_follow_the_old_syntax_escaping() {
        // Only `\"` is an escape, and not when its quote ends the line.
        assert_eq!(one(r#""say \"hi\"""#), Value::String(r#"say "hi""#.into()));
        assert_eq!(one(r#""C:\dir\file""#), Value::String(r"C:\dir\file".into()));
        assert_eq!(one(r#""ends in \""#), Value::String(r"ends in \".into()));
        assert_eq!(one(r#""\\""#), Value::String(r"\\".into()));
        assert_eq!(one(r#""a\\"b""#), Value::String(r#"a\"b"#.into()));
        assert_eq!(one(r#""tab\tnew\n""#), Value::String(r"tab\tnew\n".into()));
        assert_eq!(one("\"é ü\""), Value::String("é ü".into()));
        // `\"` inside a list is a literal quote, so this string never ends (HTCondor agrees).
        assert!(matches!(err(r#"L = { "a\" }"#), ErrorKind::UnterminatedString(_)));
        // Trailing blanks after `\"` make the quote literal too.
        assert!(matches!(err("S = \"a\\\"  "), ErrorKind::UnterminatedString(_)));
        assert!(matches!(err("S = \"a\0b\""), ErrorKind::Syntax { .. }));
    }

    #[test]
    fn expressions_evaluate_over_literals_and_references() {
        assert_eq!(one("10 * 60"), Value::Int(600));
        assert_eq!(one("2 + 3 * 4"), Value::Int(14));
        assert_eq!(one("(2 + 3) * 4"), Value::Int(20));
        assert_eq!(one("-(3)"), Value::Int(-3));
        assert_eq!(one("- 3"), Value::Int(-3));
        assert_eq!(one("2 - -3"), Value::Int(5));
        assert_eq!(one("--3"), Value::Int(3));
        assert_eq!(one("7 / 2"), Value::Int(3));
        assert_eq!(one("-7 / 2"), Value::Int(-3));
        assert_eq!(one("-7 % 2"), Value::Int(-1));
        assert_eq!(one("7.0 / 2"), Value::Real(3.5));
        assert_eq!(one("10 * 6.0E+01"), Value::Real(600.0));
        assert_eq!(one("1 / 0"), Value::Error);
        assert_eq!(one("7 % 0"), Value::Error);
        assert_eq!(one("7.5 % 2"), Value::Error);
        assert_eq!(one("9223372036854775807 + 1"), Value::Int(i64::MIN));
        assert_eq!(one("undefined + 1"), Value::Undefined);
        assert_eq!(one("undefined * error"), Value::Error);
        assert_eq!(one("NoSuchAttr * 2"), Value::Undefined);
        // Beyond the evaluator: kept as written, typed getters say None.
        for e in [
            "KeyboardIdle > 15 * 60",
            "1.0 / 0",
            "true + 1",
            "\"a\" + 1",
            "MY.x",
            "strcat(\"a\")",
            "x[0] + 1",
            "a is undefined",
            "{ 1 }[0]",
        ] {
            assert_eq!(one(e), Value::Expr(e.into()), "{e}");
        }
        let ad = ok("Minutes = 10\nWindow = Minutes * 60\nA = B\nB = A\nL = { Minutes, 1 + 1 }\nN = [ x = Minutes; y = 2 ]\n");
        assert_eq!(ad.int("window"), Some(600));
        assert_eq!(ad.int("A"), None, "a reference cycle stays unevaluated");
        assert_eq!(ad.list("L"), Some(vec![Value::Int(10), Value::Int(2)]));
        assert_eq!(ad.raw("Window"), Some("Minutes * 60"));
        assert_eq!(ad.real("Window"), Some(600.0));
        assert_eq!(ad.string("Window"), None);
        assert_eq!(ad.int("Minutes"), Some(10));
        // A reference chain that doubles at each step is cut off by the step budget.
        let mut chain = String::from("A0 = 1\n");
        for i in 1..64 {
            chain.push_str(&format!("A{i} = A{p} + A{p}\n", p = i - 1));
        }
        let ad = ok(&chain);
        assert_eq!(ad.int("A10"), Some(1024));
        assert_eq!(ad.int("A63"), None);
    }

    #[test]
    fn per_gpu_nested_ads_and_references() {
        let ad = ok(concat!(
            "AssignedGPUs = \"GPU-fd425f30,GPU-0b1c2d3e\"\n",
            "AvailableGPUs = { GPUs_GPU_fd425f30,GPUs_GPU_0b1c2d3e }\n",
            "GPUs = 2\n",
            "GPUs_GPU_0b1c2d3e = [ Id = \"GPU-0b1c2d3e\"; Capability = 7.5; DeviceName = \"Tesla T4\"; GlobalMemoryMb = 14931 ]\n",
            "GPUs_GPU_fd425f30 = [ Id = \"GPU-fd425f30\"; Capability = 8.0; DeviceName = \"NVIDIA A100-SXM4-40GB\"; GlobalMemoryMb = 40536 ]\n",
        ));
        let gpu = ad.ad("gpus_gpu_fd425f30").unwrap();
        assert_eq!(gpu.string("DeviceName").as_deref(), Some("NVIDIA A100-SXM4-40GB"));
        assert_eq!(gpu.real("Capability"), Some(8.0));
        assert_eq!(gpu.int("GlobalMemoryMb"), Some(40536));
        // The list holds references; evaluated, they are the nested ads.
        assert_eq!(ad.get("AvailableGPUs").unwrap().as_list().unwrap()[0], Value::Expr("GPUs_GPU_fd425f30".into()));
        let avail = ad.list("AvailableGPUs").unwrap();
        assert_eq!(avail[1].as_ad().unwrap().string("DeviceName").as_deref(), Some("Tesla T4"));
    }

    #[test]
    fn names_are_case_insensitive_and_later_lines_win() {
        let ad = ok("GPUs_DeviceName = \"a\"\ngpus_devicename = \"b\"\n# comment\n\n  X=1  \nY = 2 // trailing comment\nZ = /* c */ 3\n");
        assert_eq!(ad.string("GPUS_DEVICENAME").as_deref(), Some("b"));
        assert_eq!(ad.int("x"), Some(1));
        assert_eq!(ad.int("y"), Some(2));
        assert_eq!(ad.int("z"), Some(3));
        assert_eq!(ad.len(), 4);
        assert_eq!(ok("A = 1\r\nB = \"x\\\"\r\n").string("B").as_deref(), Some("x\\"));
    }

    #[test]
    fn bad_lines_are_errors_and_the_rest_still_parses() {
        let text = "A = 1\nno equals sign\nB = \"unterminated\nbad name = 3\nC =\nD = { 1, 2\nE = 1 )\nF = 010\nG = 5.\nH = 99999999999999999999\nI = @\nJ = [ x ]\nL = \"a\" \"b\"\nK = \"ok\"\n";
        let (ad, errs) = Ad::parse(text);
        assert_eq!(ad.int("A"), Some(1));
        assert_eq!(ad.string("K").as_deref(), Some("ok"));
        assert_eq!(ad.len(), 2, "{ad:?}");
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, (2..=13).collect::<Vec<_>>(), "{errs:?}");
        assert_eq!(errs[0].kind, ErrorKind::NotAnAssignment);
        assert_eq!(errs[1].to_string(), "line 3 (B): unterminated string starting at column 5");
        assert!(matches!(errs[2].kind, ErrorKind::BadName(_)));
        assert_eq!(errs[3].kind, ErrorKind::MissingValue);
        assert!(errs[4].to_string().contains("`{` is never closed"), "{}", errs[4]);
        assert!(errs[5].to_string().contains("unexpected `)`"), "{}", errs[5]);
        assert!(errs[6].to_string().contains("may not start with 0"), "{}", errs[6]);
        assert!(errs[7].to_string().contains("digits after"), "{}", errs[7]);
        assert!(errs[8].to_string().contains("out of range"), "{}", errs[8]);
        assert!(errs[9].to_string().contains("unexpected character '@'"), "{}", errs[9]);
        assert!(errs[10].to_string().contains("expected `=` after x"), "{}", errs[10]);
        assert!(errs[11].to_string().contains("unexpected `\"b\"` after a complete expression"), "{}", errs[11]);
        for junk in ["A = 1 2", "A = 1_000", "A = 0b11", "A = x y", "A = (1) 2", "A = f(1) (2)"] {
            assert!(matches!(Ad::parse(junk).1[..], [LineError { kind: ErrorKind::Syntax { .. }, .. }]), "{junk}");
        }
    }

    #[test]
    fn hostile_input_gives_errors_not_panics() {
        // A 2 MiB line.
        let huge = format!("A = \"{}\"\nB = 1\n", "x".repeat(2 << 20));
        let (ad, errs) = Ad::parse(&huge);
        assert_eq!(ad.int("B"), Some(1));
        assert!(matches!(errs[..], [LineError { line: 1, kind: ErrorKind::LineTooLong { .. }, .. }]), "{errs:?}");
        // 1000-deep nesting, of each bracket kind.
        for (open, close) in [("[", ""), ("{", "}"), ("(", ")"), ("[a=", "]")] {
            let deep = format!("A = {}1{}\nB = 2\n", open.repeat(1000), close.repeat(1000));
            let (ad, errs) = Ad::parse(&deep);
            assert_eq!(ad.int("B"), Some(2));
            assert_eq!(errs.len(), 1, "{open}: {errs:?}");
        }
        let (_, errs) = Ad::parse(&format!("A = {}1{}", "{".repeat(1000), "}".repeat(1000)));
        assert_eq!(errs[0].kind, ErrorKind::TooDeep(MAX_DEPTH));
        // Just inside the limit is fine.
        let ok_deep = format!("A = {}1{}", "{".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(Ad::parse(&ok_deep).1.is_empty());
        // Too many values on a line.
        let (_, errs) = Ad::parse(&format!("A = {{{}1}}", "1,".repeat(MAX_VALUES_PER_LINE)));
        assert_eq!(errs[0].kind, ErrorKind::TooManyValues(MAX_VALUES_PER_LINE));
        // Invalid UTF-8 on one line only.
        let (ad, errs) = Ad::parse_bytes(b"A = \"\xff\xfe\"\nB = 3\n");
        assert_eq!(ad.int("B"), Some(3));
        assert_eq!(errs[0].kind, ErrorKind::InvalidUtf8);
        // Random binary junk: whatever it parses to, it must not panic.
        let mut x: u64 = 0x9e3779b97f4a7c15;
        let mut junk = Vec::new();
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            junk.push((x >> 24) as u8);
        }
        let (_, errs) = Ad::parse_bytes(&junk);
        assert!(!errs.is_empty());
        // Junk that is valid UTF-8 and keeps the `Name = ` shape, to reach the value lexer.
        let chars = ['"', '\\', '[', ']', '{', '}', '(', ')', ';', ',', '=', '-', '1', '.', 'e', 'x', ' ', '\t', '\0', 'é', '/', '*'];
        for n in 0..2000 {
            let mut line = String::from("A = ");
            for _ in 0..(n % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                line.push(chars[(x % chars.len() as u64) as usize]);
            }
            let (ad, errs) = Ad::parse(&line);
            assert!(ad.len() + errs.len() == 1, "{line:?}");
            let _ = ad.eval("A");
        }
    }

    /// Values in `v`, lists and nested ads counted through, and its text in 64-byte units.
    fn size(v: &Value) -> usize {
        match v {
            Value::List(items) => 1 + items.iter().map(size).sum::<usize>(),
            Value::Ad(ad) => 1 + ad.iter().map(|a| size(&a.value) + (a.name.len() + a.raw.len()) / 64).sum::<usize>(),
            Value::String(s) | Value::Expr(s) => 1 + s.len() / 64,
            _ => 1,
        }
    }

    #[test]
    fn references_cannot_multiply_an_ad_past_the_budget() {
        // Two short lines, and `A` is a million values: every mention of `B` copies it.
        // A few more lines like `A` (or longer ones) would fill any memory.
        let b = vec!["1"; 1000].join(",");
        let a = vec!["B"; 1000].join(",");
        let ad = ok(&format!("B = {{{b}}}\nA = {{{a}}}\nS = \"{}\"\nT = {{{}}}", "s".repeat(64_000), vec!["S"; 1000].join(",")));
        assert_eq!(ad.list("B").map(|l| l.len()), Some(1000));
        for name in ["A", "T"] {
            let v = ad.eval(name).unwrap();
            assert!(size(&v) <= EVAL_STEPS + 2000, "{name}: {} values", size(&v));
        }
        // Within the budget, references still evaluate.
        let ad = ok(&format!("B = {{{b}}}\nA = {{ B, B }}"));
        assert_eq!(ad.list("A").unwrap()[1].as_list().map(<[Value]>::len), Some(1000));
    }

    #[test]
    fn error_messages_show_bad_names_safely() {
        let (_, errs) = Ad::parse(&format!("{} = 1", "\u{1}".repeat(100)));
        let msg = errs[0].to_string();
        assert!(msg.len() < 300 && msg.contains("is not an attribute name"), "{msg}");
    }
}
