//! Recognizing the native subset's text: a tokenizer and a recursive-descent parser with jq's
//! precedence (`*` before `+` and `-`, left to right). Anything outside the subset gives
//! `None`, and the filter runs in jaq.

use super::{Arith, Case, Change, Expr, NativeUpdate};

/// See [`NativeUpdate::parse`].
pub(super) fn parse(text: &str) -> Option<NativeUpdate> {
    // jaq's integers are `isize`: the checked arithmetic of the evaluation matches it on 64
    // bits only.
    if usize::BITS != 64 {
        return None;
    }
    let mut parser = Parser {
        tokens: tokenize(text)?,
        at: 0,
    };
    let target = parser.path()?;
    let change = match parser.next()? {
        Token::Set => Change::Set(parser.expr()?),
        Token::Update(op) => Change::Update(op, parser.expr()?),
        Token::Modify => match parser.next()? {
            Token::Recase(case) => Change::Recase(case),
            _ => return None,
        },
        _ => return None,
    };
    let then = match parser.next() {
        None => None,
        Some(Token::Pipe) => Some(parser.path()?),
        Some(_) => return None,
    };
    parser.next().is_none().then_some(NativeUpdate {
        target,
        change,
        then,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Path(Vec<String>),
    Int(i64),
    Arith(Arith),
    /// `=`
    Set,
    /// `+=`, `-=`, `*=`
    Update(Arith),
    /// `|=`
    Modify,
    Recase(Case),
    Open,
    Close,
    Pipe,
}

fn tokenize(text: &str) -> Option<Vec<Token>> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut at = 0;
    let next_is = |at: usize, byte: u8| bytes.get(at) == Some(&byte);
    while at < bytes.len() {
        let (token, width) = match bytes[at] {
            b' ' | b'\t' | b'\n' | b'\r' => {
                at += 1;
                continue;
            }
            b'.' => {
                let (path, width) = path_at(&text[at..])?;
                (Token::Path(path), width)
            }
            b'0'..=b'9' => {
                let width = bytes[at..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                // `1.5`, `1e3` and the like are floats: not in the subset.
                if bytes
                    .get(at + width)
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'.')
                {
                    return None;
                }
                (Token::Int(text[at..at + width].parse().ok()?), width)
            }
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            b'=' if !next_is(at + 1, b'=') => (Token::Set, 1),
            b'|' if next_is(at + 1, b'=') => (Token::Modify, 2),
            b'|' => (Token::Pipe, 1),
            b'a'..=b'z' => {
                let width = bytes[at..]
                    .iter()
                    .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                    .count();
                match &text[at..at + width] {
                    "ascii_downcase" => (Token::Recase(Case::Lower), width),
                    "ascii_upcase" => (Token::Recase(Case::Upper), width),
                    _ => return None,
                }
            }
            op @ (b'+' | b'-' | b'*') => {
                let arith = match op {
                    b'+' => Arith::Add,
                    b'-' => Arith::Sub,
                    _ => Arith::Mul,
                };
                match next_is(at + 1, b'=') {
                    true => (Token::Update(arith), 2),
                    false => (Token::Arith(arith), 1),
                }
            }
            _ => return None,
        };
        tokens.push(token);
        at += width;
    }
    Some(tokens)
}

/// `.a.b` at the start of `text`: the field names and the text's width.
fn path_at(text: &str) -> Option<(Vec<String>, usize)> {
    let mut path = Vec::new();
    let mut rest = text;
    while let Some(after_dot) = rest.strip_prefix('.') {
        let width = after_dot
            .bytes()
            .enumerate()
            .take_while(|&(i, b)| {
                b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit())
            })
            .count();
        if width == 0 {
            // `.` alone, `.[0]`, `."key"`: not in the subset.
            return None;
        }
        path.push(after_dot[..width].to_string());
        rest = &after_dot[width..];
    }
    Some((path, text.len() - rest.len()))
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn path(&mut self) -> Option<Vec<String>> {
        match self.next()? {
            Token::Path(path) => Some(path),
            _ => None,
        }
    }

    /// `term (('+' | '-') term)*`, left to right.
    fn expr(&mut self) -> Option<Expr> {
        let mut left = self.term()?;
        while let Some(&Token::Arith(op @ (Arith::Add | Arith::Sub))) = self.peek() {
            self.at += 1;
            left = Expr::Binary(Box::new(left), op, Box::new(self.term()?));
        }
        Some(left)
    }

    /// `atom ('*' atom)*`, left to right.
    fn term(&mut self) -> Option<Expr> {
        let mut left = self.atom()?;
        while let Some(Token::Arith(Arith::Mul)) = self.peek() {
            self.at += 1;
            left = Expr::Binary(Box::new(left), Arith::Mul, Box::new(self.atom()?));
        }
        Some(left)
    }

    fn atom(&mut self) -> Option<Expr> {
        match self.next()? {
            Token::Path(path) => Some(Expr::Path(path)),
            Token::Int(n) => Some(Expr::Int(n)),
            Token::Open => {
                let inner = self.expr()?;
                matches!(self.next()?, Token::Close).then_some(inner)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::path;
    use super::*;

    #[test]
    fn recognizes_the_demo_filter_with_jq_precedence() {
        let update = NativeUpdate::parse(
            ".state.revenue_cents += (.event.data.quantity * .event.data.unit_price_cents - .event.data.discount_cents) | .state",
        )
        .unwrap();
        assert_eq!(update.target, path(".state.revenue_cents"));
        assert_eq!(update.then, Some(path(".state")));
        let q = || Box::new(Expr::Path(path(".event.data.quantity")));
        let p = Box::new(Expr::Path(path(".event.data.unit_price_cents")));
        let d = Box::new(Expr::Path(path(".event.data.discount_cents")));
        let product = Box::new(Expr::Binary(q(), Arith::Mul, p));
        let expr = Expr::Binary(product, Arith::Sub, d);
        assert_eq!(update.change, Change::Update(Arith::Add, expr));
        let chained = NativeUpdate::parse(".a = 1 + 2 * .b - 3").unwrap();
        assert!(matches!(
            chained.change,
            Change::Set(Expr::Binary(_, Arith::Sub, _))
        ));
    }

    #[test]
    fn recognizes_recasing_one_field() {
        let lower = NativeUpdate::parse(".method |= ascii_downcase").unwrap();
        assert_eq!(lower.target, path(".method"));
        assert_eq!(lower.change, Change::Recase(Case::Lower));
        assert_eq!(lower.then, None);
        let upper = NativeUpdate::parse(".o.code|=ascii_upcase | .o").unwrap();
        assert_eq!(upper.change, Change::Recase(Case::Upper));
        assert_eq!(upper.then, Some(path(".o")));
    }

    #[test]
    fn leaves_everything_else_to_jaq() {
        for text in [
            ".",
            ".a",
            ".a |= . + 1",
            ".a == 1",
            ".a = 1.5",
            ".a = 1e3",
            ".a = -1",
            ".a = .b / 2",
            ".[0] = 1",
            ".\"a\" = 1",
            ".a = .b | .c | .d",
            ".a = (.b",
            ".a = .b)",
            ".a += 1 .b",
            ".a = $x",
            ".a = .b // 1",
            ".a = length",
            ".a = 99999999999999999999",
            ".a.1 = 2",
            ".a |= ascii",
            ".a |= ascii_downcase2",
            ".a |= ascii_downcase(.b)",
            ".a |= ascii_downcase + 1",
            ".a = ascii_downcase",
            ".a |= .b",
            ".a |= 1",
            "ascii_downcase",
        ] {
            assert_eq!(NativeUpdate::parse(text), None, "{text}");
        }
    }
}
