//! The escape hatch: a jq filter (run by the jaq crates) over an event's payload.
//!
//! A [`JqFilter`] is compiled once, when its upcaster or projection file loads, and then run
//! per event. It must yield exactly one value: a filter that yields none or several is an
//! error, so an escape hatch cannot drop or duplicate an event behind the registry's back.

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{data, unwrap_valr, Compiler, Ctx, Vars};
use jaq_json::Val;
use serde_json::Value;

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
        })
    }

    /// The filter's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Runs the filter on `input`, which it must map to exactly one value.
    pub fn run(&self, input: &Value) -> Result<Value, JqError> {
        // Straight from the value through serde: printing it and parsing the text again cost
        // more than the filter itself on small payloads.
        let input =
            <Val as serde::Deserialize>::deserialize(input).map_err(|err| JqError::Run {
                filter: self.text.clone(),
                message: err.to_string(),
            })?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = Vec::with_capacity(1);
        for output in self.filter.id.run((ctx, input)).map(unwrap_valr) {
            let output = output.map_err(|err| JqError::Run {
                filter: self.text.clone(),
                message: err.to_string(),
            })?;
            outputs.push(output);
        }
        if outputs.len() != 1 {
            return Err(JqError::Outputs {
                filter: self.text.clone(),
                count: outputs.len(),
            });
        }
        let text = outputs[0].to_string();
        serde_json::from_str(&text).map_err(|_| JqError::NotJson {
            filter: self.text.clone(),
            value: text,
        })
    }
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
    }

    #[test]
    fn compiled_filters_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<JqFilter>();
    }
}
