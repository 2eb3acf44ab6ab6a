//! The escape hatch: a jq filter (run by the jaq crates) over an event's payload.
//!
//! A [`JqFilter`] is compiled once, when its upcaster or projection file loads, and then run
//! per event. It must yield exactly one value: a filter that yields none or several is an
//! error, so an escape hatch cannot drop or duplicate an event behind the registry's back.
//!
//! A filter that only sets or updates one field from integer arithmetic (see [`native`]) also
//! carries a [`NativeUpdate`]: its callers try that first, in place, and run jaq when it cannot
//! answer.

pub mod native;
pub use native::NativeUpdate;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::{Num, Val};
use serde_json::Value;
use std::panic::AssertUnwindSafe;

/// Errors of compiling or running a jq filter.
#[derive(Debug, thiserror::Error)]
pub enum JqError {
    /// The filter text does not parse or compile.
    #[error("jq filter {filter:?} does not compile: {message}")]
    Compile { filter: String, message: String },
    /// The filter raised an error on an input.
    #[error("jq filter {filter:?} failed: {message}")]
    Run { filter: String, message: String },
    /// The filter yielded a number of values other than one.
    #[error("jq filter {filter:?} yielded {count} values; it must yield exactly one")]
    Outputs { filter: String, count: usize },
    /// The filter yielded something that is not JSON (bytes, non-string keys).
    #[error("jq filter {filter:?} yielded a value that is not JSON: {value}")]
    NotJson { filter: String, value: String },
}

/// A compiled jq filter.
pub struct JqFilter {
    text: String,
    filter: jaq_core::Filter<data::JustLut<Val>>,
    native: Option<NativeUpdate>,
}

impl std::fmt::Debug for JqFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JqFilter").field(&self.text).finish()
    }
}

impl JqFilter {
    /// Compiles a filter with jq's standard library.
    pub fn compile(text: &str) -> Result<Self, JqError> {
        let compile_error = |message: String| JqError::Compile {
            filter: text.to_string(),
            message,
        };
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let program = File {
            code: text,
            path: (),
        };
        let modules = loader
            .load(&arena, program)
            .map_err(|errors| compile_error(format!("{errors:?}")))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| compile_error(format!("{errors:?}")))?;
        Ok(JqFilter {
            text: text.to_string(),
            filter,
            native: NativeUpdate::parse(text),
        })
    }

    /// The filter's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The filter as a native update, when it is one (see [`native`]).
    pub fn native(&self) -> Option<&NativeUpdate> {
        self.native.as_ref()
    }

    /// Runs the filter on `input`, which it must map to exactly one value.
    pub fn run(&self, input: &Value) -> Result<Value, JqError> {
        self.run_val(to_val(input))
    }

    /// Runs the filter on an input already in jaq's form (see [`to_val`] and [`object`]).
    pub fn run_val(&self, input: Val) -> Result<Value, JqError> {
        let run_error = |message: String| JqError::Run {
            filter: self.text.clone(),
            message,
        };
        // jaq panics on some inputs where it should fail (a string times a huge integer is a
        // repetition it cannot allocate): such an event fails like any other, under the error
        // policy, instead of taking the process down. (The panic hook still prints it.)
        let outputs = std::panic::catch_unwind(AssertUnwindSafe(|| self.outputs(input)))
            .map_err(|panic| run_error(format!("jaq panicked: {}", panic_text(&*panic))))?
            .map_err(run_error)?;
        if outputs.len() != 1 {
            return Err(JqError::Outputs {
                filter: self.text.clone(),
                count: outputs.len(),
            });
        }
        from_val(&outputs[0]).ok_or_else(|| JqError::NotJson {
            filter: self.text.clone(),
            value: outputs[0].to_string(),
        })
    }

    /// Every output of the filter on `input`, or jaq's error.
    fn outputs(&self, input: Val) -> Result<Vec<Val>, String> {
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = Vec::with_capacity(1);
        for output in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            outputs.push(output.map_err(|err| err.to_string())?);
        }
        Ok(outputs)
    }
}

/// The message a panic carries, when it is text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => text,
        (_, Some(text)) => text,
        _ => "no message",
    }
}

// Values cross between serde_json and jaq by walking them, not through text or serde: a
// projection's jq op spent as long converting its input and output (cloning into a `Value`,
// deserializing, printing, parsing) as running the filter (perf, demo rebuild of 300k events).

/// A JSON value in jaq's form.
pub fn to_val(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Val::Num(Num::from_integral(i)),
            (None, Some(u)) => Val::Num(Num::from_integral(u)),
            _ => Val::Num(Num::Float(n.as_f64().unwrap_or(f64::NAN))),
        },
        Value::String(s) => text(s),
        Value::Array(items) => items.iter().map(to_val).collect(),
        Value::Object(map) => Val::obj(map.iter().map(|(k, v)| (text(k), to_val(v))).collect()),
    }
}

/// A JSON string in jaq's form.
pub fn text(s: &str) -> Val {
    Val::utf8_str(s.to_string().into_bytes())
}

/// A jaq object from fixed keys and values. The keys borrow the static text (jaq strings are
/// `Bytes`), so none is allocated: a projection's jq op builds an object of ten keys per event.
pub fn object(entries: impl IntoIterator<Item = (&'static str, Val)>) -> Val {
    Val::obj(
        entries
            .into_iter()
            .map(|(k, v)| (Val::utf8_str(k), v))
            .collect(),
    )
}

/// A jaq value as JSON; `None` for what JSON cannot hold (byte strings, non-string keys,
/// NaN and infinities).
fn from_val(val: &Val) -> Option<Value> {
    Some(match val {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) => Value::Number(serde_json::Number::from_f64(*f)?),
        Val::Num(n @ (Num::BigInt(_) | Num::Dec(_))) => {
            serde_json::from_str(&n.to_string()).ok()?
        }
        Val::TStr(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        Val::BStr(_) => return None,
        Val::Arr(items) => Value::Array(items.iter().map(from_val).collect::<Option<_>>()?),
        Val::Obj(map) => Value::Object(
            map.iter()
                .map(|(k, v)| match k {
                    Val::TStr(key) => {
                        Some((String::from_utf8_lossy(key).into_owned(), from_val(v)?))
                    }
                    _ => None,
                })
                .collect::<Option<_>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runs_a_filter_with_the_standard_library() {
        let filter = JqFilter::compile(".method |= ascii_downcase | .n = (.n + 1)").unwrap();
        let out = filter.run(&json!({"method": "CARD", "n": 1})).unwrap();
        assert_eq!(out, json!({"method": "card", "n": 2}));
    }

    #[test]
    fn refuses_bad_text_and_anything_but_one_output() {
        assert!(matches!(
            JqFilter::compile(".a |||"),
            Err(JqError::Compile { .. })
        ));
        let many = JqFilter::compile(".[]").unwrap();
        assert!(matches!(
            many.run(&json!([1, 2])),
            Err(JqError::Outputs { count: 2, .. })
        ));
        let failing = JqFilter::compile("error(\"boom\")").unwrap();
        assert!(matches!(failing.run(&json!(1)), Err(JqError::Run { .. })));
        // jaq repeats the string isize::MAX times: a panic inside jaq, an error here.
        let repeat = JqFilter::compile("\"ab\" * .").unwrap();
        let err = repeat.run(&json!(u64::MAX)).unwrap_err();
        assert!(err.to_string().contains("jaq panicked"), "{err}");
    }

    #[test]
    fn values_cross_both_ways_unchanged() {
        let value = json!({"a": [1, -2, 3.5, "x", null, true], "big": 18446744073709551615u64, "o": {"k": {}}});
        let filter = JqFilter::compile(".").unwrap();
        assert_eq!(filter.run(&value).unwrap(), value);
        let object = object([("n", to_val(&json!(2)))]);
        let doubled = JqFilter::compile(".n * 2").unwrap();
        assert_eq!(doubled.run_val(object).unwrap(), json!(4));
        let bytes = JqFilter::compile("\"a\" | tobytes").unwrap();
        assert!(matches!(bytes.run(&json!(1)), Err(JqError::NotJson { .. })));
        let infinite = JqFilter::compile("infinite").unwrap();
        assert!(matches!(
            infinite.run(&json!(1)),
            Err(JqError::NotJson { .. })
        ));
    }

    #[test]
    fn compiled_filters_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<JqFilter>();
    }
}
