//! jq's simplest filters, evaluated without jaq: one field set or updated from integer
//! arithmetic over paths of the input, such as the demo's
//! `.state.revenue_cents += (.event.data.quantity * .event.data.unit_price_cents - .event.data.discount_cents) | .state`,
//! or one string field recased, such as the demo's `.method |= ascii_downcase`.
//!
//! [`NativeUpdate::parse`] recognizes filters of the shape `TARGET OP EXPR` or
//! `TARGET |= ascii_downcase` (or `ascii_upcase`), optionally followed by `| PATH`, where `OP`
//! is `=`, `+=`, `-=` or `*=`, `EXPR` is made of paths (`.a.b`), integer literals, `+`, `-`,
//! `*` and parentheses, and every path is a chain of plain field names.
//! [`JqFilter`](super::JqFilter) parses it beside jaq's compilation, so only text jaq accepts
//! is ever recognized. The tokenizer and parser are in the `parse` submodule; this file holds
//! the subset's types and evaluates them.
//!
//! The native answer is given only where it is certainly jaq's: [`NativeUpdate::new_value`]
//! returns `None` as soon as anything leaves the ground both agree on (a float, a string in
//! arithmetic, an overflow, a path through a number, a parent to create), and the caller then
//! runs the filter in jaq. jaq stays the one definition of what a filter means; a property test
//! checks that both give the same result wherever the native path answers.
//!
//! What it buys: jaq took 2.8 µs per run of the filter above, about a quarter of an in-memory
//! rebuild of the demo (perf); its result replaced the whole state, which was then measured
//! again. The native update changes the one field in place, through the undo log. The recasing
//! filter, run by jaq on every `PaymentReceived` v1 event, was 2.4% of the in-memory rebuild's
//! samples: jaq converts the whole event to its own values and back for one field. Natively,
//! five interleaved pairs on the demo's 1M-event log took 7% less CPU for a migration with the
//! demo upcasters and 6.6% less for an in-memory rebuild, output unchanged.

use serde_json::Value;

mod parse;

/// Integer arithmetic of the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
}

/// An expression of the subset.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `.a.b`: a field of the input (null when absent).
    Path(Vec<String>),
    /// An integer literal.
    Int(i64),
    /// `a + b`, `a - b`, `a * b`.
    Binary(Box<Expr>, Arith, Box<Expr>),
}

/// How the target changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `= expr`: the target becomes the expression's value.
    Set(Expr),
    /// `+= expr` and the like: the target combined with the expression's value.
    Update(Arith, Expr),
    /// `|= ascii_downcase` or `|= ascii_upcase`: the target, a string, with its ASCII letters
    /// recased.
    Recase(Case),
}

/// Which way [`Change::Recase`] recases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Lower,
    Upper,
}

/// A recognized filter: `target change | then`.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeUpdate {
    /// The field that changes, as field names from the input's root.
    pub target: Vec<String>,
    /// How it changes; an expression in it reads the input as it was before the update.
    pub change: Change,
    /// The path the filter's output is taken from after the update; `None`: the whole input.
    pub then: Option<Vec<String>>,
}

/// Reads a path of the filter's input: `Some(value)` (null when absent), or `None` when the
/// path goes through something jaq would fail on (indexing a number, say).
pub type Read<'a> = dyn Fn(&[String]) -> Option<Value> + 'a;

impl NativeUpdate {
    /// Recognizes `text`; `None` for anything outside the subset.
    pub fn parse(text: &str) -> Option<NativeUpdate> {
        parse::parse(text)
    }

    /// The target's new value, given its `current` value (null when absent) and a reader of
    /// the input; `None` when only jaq can say.
    pub fn new_value(&self, current: &Value, read: &Read<'_>) -> Option<Value> {
        match &self.change {
            Change::Set(expr) => eval(expr, read),
            Change::Update(op, expr) => arith(*op, current.clone(), eval(expr, read)?),
            // jq fails on anything but a string here (null included): jaq reports it.
            Change::Recase(case) => Some(Value::String(match (current, case) {
                (Value::String(text), Case::Lower) => text.to_ascii_lowercase(),
                (Value::String(text), Case::Upper) => text.to_ascii_uppercase(),
                _ => return None,
            })),
        }
    }

    /// Applies a filter whose output is its whole input (no `| PATH`) to `root` in place.
    /// `false` when it could not, and `root` is as it was: run jaq.
    pub fn apply_in_place(&self, root: &mut Value) -> bool {
        if self.then.is_some() {
            return false;
        }
        let Some(current) = field(root, &self.target) else {
            return false;
        };
        let Some(value) = self.new_value(current, &|path| walk(root, path)) else {
            return false;
        };
        set_field(root, &self.target, value).is_some()
    }
}

/// Sets the field at `path`, whose parents [`field`] found to be objects.
fn set_field(root: &mut Value, path: &[String], value: Value) -> Option<()> {
    let (last, parents) = path.split_last()?;
    let mut parent = root;
    for key in parents {
        parent = parent.as_object_mut()?.get_mut(key)?;
    }
    parent.as_object_mut()?.insert(last.clone(), value);
    Some(())
}

/// The value at `path` below `root` as jq's `.a.b` reads it: null when a field is absent or a
/// step is null, `None` when a step is anything else but an object.
pub fn walk(root: &Value, path: &[String]) -> Option<Value> {
    let mut value = root;
    for key in path {
        value = match value {
            Value::Object(map) => match map.get(key) {
                Some(found) => found,
                None => return Some(Value::Null),
            },
            Value::Null => return Some(Value::Null),
            _ => return None,
        };
    }
    Some(value.clone())
}

/// The value at `path` below `root` for an in-place update: every step before the last must
/// be an existing object (jq would create missing ones; that is left to jaq). Null when the
/// last field is absent.
pub fn field<'a>(root: &'a Value, path: &[String]) -> Option<&'a Value> {
    static NULL: Value = Value::Null;
    let (last, parents) = path.split_last()?;
    let mut parent = root;
    for key in parents {
        parent = parent.as_object()?.get(key)?;
    }
    Some(parent.as_object()?.get(last).unwrap_or(&NULL))
}

fn eval(expr: &Expr, read: &Read<'_>) -> Option<Value> {
    match expr {
        Expr::Path(path) => read(path),
        Expr::Int(n) => Some(Value::from(*n)),
        Expr::Binary(left, op, right) => arith(*op, eval(left, read)?, eval(right, read)?),
    }
}

/// jq's arithmetic where it is plain: `null + x` and `x + null` are `x`, integers combine
/// unless they overflow (jaq goes to big integers there). Everything else is jaq's to decide.
fn arith(op: Arith, left: Value, right: Value) -> Option<Value> {
    match (op, &left, &right) {
        (Arith::Add, Value::Null, _) => return Some(right),
        (Arith::Add, _, Value::Null) => return Some(left),
        _ => {}
    }
    let (x, y) = (left.as_i64()?, right.as_i64()?);
    let result = match op {
        Arith::Add => x.checked_add(y),
        Arith::Sub => x.checked_sub(y),
        Arith::Mul => x.checked_mul(y),
    }?;
    Some(Value::from(result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upcast::jq::JqFilter;
    use proptest::prelude::*;
    use serde_json::json;

    /// `.a.b` as field names (the parser's tests use it too).
    pub(super) fn path(text: &str) -> Vec<String> {
        text.split('.').skip(1).map(str::to_string).collect()
    }

    #[test]
    fn recasing_changes_only_strings() {
        let lower = NativeUpdate::parse(".method |= ascii_downcase").unwrap();
        let read = |_: &[String]| None;
        let recased = lower.new_value(&json!("Card-ÄB"), &read);
        assert_eq!(recased, Some(json!("card-Äb")));
        assert_eq!(lower.new_value(&Value::Null, &read), None);
        assert_eq!(lower.new_value(&json!(5), &read), None);
        let mut data = json!({"method": "SEPA", "n": 1});
        assert!(lower.apply_in_place(&mut data));
        assert_eq!(data, json!({"method": "sepa", "n": 1}));
        let mut absent = json!({"n": 1});
        assert!(!lower.apply_in_place(&mut absent));
        assert_eq!(absent, json!({"n": 1}));
    }

    #[test]
    fn answers_only_where_it_is_jaqs_answer() {
        let update = NativeUpdate::parse(".t += .a * .b").unwrap();
        let input = json!({"a": 6, "b": 7, "s": "x", "f": 1.5});
        let read = |p: &[String]| walk(&input, p);
        assert_eq!(update.new_value(&json!(1), &read), Some(json!(43)));
        assert_eq!(update.new_value(&Value::Null, &read), Some(json!(42)));
        assert_eq!(update.new_value(&json!("x"), &read), None);
        let overflow = NativeUpdate::parse(".t = .a * 9223372036854775807").unwrap();
        assert_eq!(overflow.new_value(&Value::Null, &read), None);
        let float = NativeUpdate::parse(".t = .f + 1").unwrap();
        assert_eq!(float.new_value(&Value::Null, &read), None);
        let through_string = NativeUpdate::parse(".t = .s.x").unwrap();
        assert_eq!(through_string.new_value(&Value::Null, &read), None);
        let missing = NativeUpdate::parse(".t = .nope.x").unwrap();
        assert_eq!(missing.new_value(&json!(5), &read), Some(Value::Null));
    }

    #[test]
    fn applies_in_place_or_leaves_the_input_as_it_was() {
        let update = NativeUpdate::parse(".o.total = .o.price * .qty").unwrap();
        let mut data = json!({"o": {"price": 250}, "qty": 3});
        assert!(update.apply_in_place(&mut data));
        assert_eq!(data, json!({"o": {"price": 250, "total": 750}, "qty": 3}));
        let mut no_parent = json!({"qty": 3});
        assert!(!update.apply_in_place(&mut no_parent));
        assert_eq!(no_parent, json!({"qty": 3}));
        let piped = NativeUpdate::parse(".a = 1 | .a").unwrap();
        assert!(!piped.apply_in_place(&mut data));
    }

    #[test]
    fn in_place_targets_need_existing_parent_objects() {
        let root = json!({"o": {"x": 1}, "n": null, "k": 3});
        assert_eq!(field(&root, &path(".o.x")), Some(&json!(1)));
        assert_eq!(field(&root, &path(".o.y")), Some(&Value::Null));
        assert_eq!(field(&root, &path(".n.y")), None);
        assert_eq!(field(&root, &path(".k.y")), None);
        assert_eq!(field(&root, &path(".m.y")), None);
    }

    fn operand() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![".a", ".b", ".c", ".o.x", ".o.y", ".m", ".s", ".f"])
                .prop_map(str::to_string),
            prop::sample::select(vec![0i64, 1, 7, 4611686018427387904, i64::MAX])
                .prop_map(|n| n.to_string()),
        ]
    }

    fn expression() -> impl Strategy<Value = String> {
        operand().prop_recursive(3, 8, 2, |inner| {
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*"]),
                inner,
            )
                .prop_map(|(left, op, right)| match op {
                    "*" => format!("({left}) * {right}"),
                    _ => format!("{left} {op} {right}"),
                })
        })
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            (-1000i64..1000).prop_map(Value::from),
            prop::sample::select(vec![i64::MIN, i64::MAX, 3037000500]).prop_map(Value::from),
            Just(Value::Null),
            Just(json!(2.5)),
            Just(json!("text")),
            Just(json!(18446744073709551615u64)),
        ]
    }

    fn input() -> impl Strategy<Value = Value> {
        let o = prop_oneof![
            (number(), number()).prop_map(|(x, y)| json!({"x": x, "y": y})),
            Just(Value::Null),
            Just(json!(5)),
        ];
        (number(), number(), number(), o)
            .prop_map(|(a, b, c, o)| json!({"a": a, "b": b, "c": c, "o": o, "s": "str", "f": 1.25}))
    }

    proptest! {
        /// Wherever the native update answers, jaq gives the very same output.
        #[test]
        fn native_updates_agree_with_jaq(
            target in prop::sample::select(vec![".a", ".o.x", ".o.z", ".m"]),
            op in prop::sample::select(vec!["=", "+=", "-=", "*="]),
            expr in expression(),
            then in prop::sample::select(vec!["", " | .o", " | .a"]),
            input in input(),
        ) {
            let text = format!("{target} {op} {expr}{then}");
            let update = NativeUpdate::parse(&text).expect("the generated filter is in the subset");
            let read = |p: &[String]| walk(&input, p);
            let Some(current) = field(&input, &update.target) else { return Ok(()) };
            let Some(value) = update.new_value(current, &read) else { return Ok(()) };
            let mut native = input.clone();
            let mut at = &mut native;
            for key in &update.target {
                at = at.as_object_mut().unwrap().entry(key.clone()).or_insert(Value::Null);
            }
            *at = value;
            let output = match &update.then {
                Some(then) => walk(&native, then).unwrap(),
                None => native,
            };
            // Where the native update declines, jaq alone decides: nothing to compare.
            let jaq = JqFilter::compile(&text).unwrap().run(&input);
            prop_assert_eq!(jaq.ok(), Some(output), "{}", text);
        }

        /// The same for recasing, over strings of mixed case, non-ASCII letters included, and
        /// over values that are not strings.
        #[test]
        fn native_recasing_agrees_with_jaq(
            target in prop::sample::select(vec![".a", ".o.x", ".o.z", ".m"]),
            case in prop::sample::select(vec!["ascii_downcase", "ascii_upcase"]),
            then in prop::sample::select(vec!["", " | .o", " | .a"]),
            a in prop_oneof!["[a-zA-Z0-9 _ßÄéİı-]{0,8}".prop_map(Value::from), number()],
            x in prop_oneof!["[a-zA-Zß]{0,4}".prop_map(Value::from), number()],
            o_kind in 0..3,
        ) {
            let o = match o_kind {
                0 => json!({"x": x}),
                1 => Value::Null,
                _ => json!("O"),
            };
            let input = json!({"a": a, "o": o});
            let text = format!("{target} |= {case}{then}");
            let update = NativeUpdate::parse(&text).expect("the generated filter is in the subset");
            let mut native = input.clone();
            let output = match update.then {
                None if update.apply_in_place(&mut native) => native,
                None => return Ok(()),
                Some(_) => {
                    let Some(current) = field(&input, &update.target) else { return Ok(()) };
                    let Some(value) = update.new_value(current, &|_| None) else { return Ok(()) };
                    let mut at = &mut native;
                    for key in &update.target {
                        at = at.as_object_mut().unwrap().entry(key.clone()).or_insert(Value::Null);
                    }
                    *at = value;
                    walk(&native, update.then.as_deref().unwrap()).unwrap()
                }
            };
            let jaq = JqFilter::compile(&text).unwrap().run(&input);
            prop_assert_eq!(jaq.ok(), Some(output), "{}", text);
        }
    }
}
