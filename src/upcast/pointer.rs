//! JSON pointers (RFC 6901) that ops read from and write to.
//!
//! A [`Pointer`] is checked when its file loads: it is empty (the whole document) or starts
//! with `/`, and `~` appears only as `~0` or `~1`. Writing through a pointer creates missing
//! objects on the way, so `set = { path = "/address/city", ... }` works on an event that has
//! no `address` yet.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Why a pointer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PointerError {
    /// Text that is not a JSON pointer.
    #[error("{pointer:?} is not a JSON pointer: {reason}")]
    Syntax {
        pointer: String,
        reason: &'static str,
    },
    /// A write through a pointer whose parent is not an object or array.
    #[error("{pointer}: cannot write below a {found}")]
    NotContainer {
        pointer: String,
        found: &'static str,
    },
    /// A write that would replace the whole document.
    #[error("the empty pointer names the whole payload; name a field, e.g. \"/total\"")]
    Root,
}

/// A validated JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pointer {
    // Shared, so that a clone (the undo log keeps one per append) is two reference counts,
    // not an allocation per token.
    text: Arc<str>,
    tokens: Arc<[String]>,
}

impl TryFrom<String> for Pointer {
    type Error = PointerError;

    fn try_from(text: String) -> Result<Self, PointerError> {
        Pointer::parse(&text)
    }
}

impl From<Pointer> for String {
    fn from(pointer: Pointer) -> String {
        pointer.text.to_string()
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A short description of a JSON value's type, for messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The value `tokens` lead to from `root`, if any, to change in place.
fn descend_mut<'a>(root: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    tokens.iter().try_fold(root, |value, token| match value {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

impl Pointer {
    /// Parses and checks pointer text.
    pub fn parse(text: &str) -> Result<Self, PointerError> {
        let syntax = |reason| PointerError::Syntax {
            pointer: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Ok(Pointer {
                text: "".into(),
                tokens: Arc::new([]),
            });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(syntax("it must start with '/'"));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => token.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => return Err(syntax("'~' must be followed by 0 or 1")),
                    },
                }
            }
            tokens.push(token);
        }
        Ok(Pointer {
            text: text.into(),
            tokens: tokens.into(),
        })
    }

    /// The pointer's text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value the pointer names, if any.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.tokens
            .iter()
            .try_fold(root, |value, token| match value {
                Value::Object(map) => map.get(token),
                Value::Array(items) => token.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
    }

    /// The value the pointer names, if any, to change in place.
    pub fn get_mut<'a>(&self, root: &'a mut Value) -> Option<&'a mut Value> {
        descend_mut(root, &self.tokens)
    }

    /// How many tokens the pointer has: 0 for the root, 2 for `/a/b`.
    pub fn depth(&self) -> usize {
        self.tokens.len()
    }

    /// The first token (`a` of `/a/b`); `None` for the root pointer.
    pub fn first_token(&self) -> Option<&str> {
        self.tokens.first().map(String::as_str)
    }

    /// Removes and returns the value the pointer names, if any.
    pub fn take(&self, root: &mut Value) -> Option<Value> {
        let (last, parents) = self.tokens.split_last()?;
        let parent = descend_mut(root, parents)?;
        match parent {
            Value::Object(map) => map.remove(last),
            Value::Array(items) => {
                let index = last.parse::<usize>().ok().filter(|&i| i < items.len())?;
                Some(items.remove(index))
            }
            _ => None,
        }
    }

    /// Writes `value` where the pointer names, creating missing objects on the way.
    pub fn set(&self, root: &mut Value, value: Value) -> Result<(), PointerError> {
        self.replace(root, value).map(drop)
    }

    /// Writes `value` like [`set`](Self::set) and gives back the value it replaced, if any.
    pub fn replace(&self, root: &mut Value, value: Value) -> Result<Option<Value>, PointerError> {
        let (last, parents) = self.tokens.split_last().ok_or(PointerError::Root)?;
        let mut current = root;
        for token in parents {
            current = self.child_mut(current, token)?;
        }
        if current.is_null() {
            *current = Value::Object(Map::new());
        }
        match current {
            Value::Object(map) => {
                // Replacing in place spares the key's copy that `insert` would take.
                match map.get_mut(last.as_str()) {
                    Some(slot) => Ok(Some(std::mem::replace(slot, value))),
                    None => Ok(map.insert(last.clone(), value)),
                }
            }
            Value::Array(items) if last == "-" => {
                items.push(value);
                Ok(None)
            }
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => Ok(Some(std::mem::replace(&mut items[i], value))),
                _ => Err(self.not_container("array without that index")),
            },
            other => Err(self.not_container(type_name(other))),
        }
    }

    fn child_mut<'a>(
        &self,
        value: &'a mut Value,
        token: &str,
    ) -> Result<&'a mut Value, PointerError> {
        if value.is_null() {
            *value = Value::Object(Map::new());
        }
        match value {
            Value::Object(map) => Ok(map.entry(token.to_string()).or_insert(Value::Null)),
            Value::Array(items) => {
                let found = token.parse::<usize>().ok().filter(|&i| i < items.len());
                match found {
                    Some(i) => Ok(&mut items[i]),
                    None => Err(self.not_container("array without that index")),
                }
            }
            other => Err(self.not_container(type_name(other))),
        }
    }

    fn not_container(&self, found: &'static str) -> PointerError {
        PointerError::NotContainer {
            pointer: self.text.to_string(),
            found,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_escapes_and_refuses_bad_text() {
        let p = Pointer::parse("/a~1b/c~0d").unwrap();
        assert_eq!(p.get(&json!({"a/b": {"c~d": 5}})), Some(&json!(5)));
        assert!(Pointer::parse("total").is_err());
        assert!(Pointer::parse("/a~2").is_err());
    }

    #[test]
    fn set_creates_objects_and_take_removes() {
        let mut doc = json!({"items": [1, 2]});
        Pointer::parse("/address/city")
            .unwrap()
            .set(&mut doc, json!("Oslo"))
            .unwrap();
        Pointer::parse("/items/-")
            .unwrap()
            .set(&mut doc, json!(3))
            .unwrap();
        assert_eq!(
            doc,
            json!({"items": [1, 2, 3], "address": {"city": "Oslo"}})
        );
        assert_eq!(
            Pointer::parse("/items/0").unwrap().take(&mut doc),
            Some(json!(1))
        );
        assert_eq!(Pointer::parse("/nope/x").unwrap().take(&mut doc), None);
        let below_string = Pointer::parse("/address/city/x")
            .unwrap()
            .set(&mut doc, json!(1));
        assert!(matches!(
            below_string,
            Err(PointerError::NotContainer { .. })
        ));
        assert!(matches!(
            Pointer::parse("").unwrap().set(&mut doc, json!(1)),
            Err(PointerError::Root)
        ));
    }
}
