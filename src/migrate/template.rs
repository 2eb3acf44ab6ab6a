//! Target stream names: templates such as `{stream}-v2` or `{category}_v2-{id}`.
//!
//! Placeholders: `{stream}` (the source stream name), `{category}` (before the first `-`),
//! `{id}` (after the first `-`), and `{/json/pointer}`, a value from the event's data, which
//! routes events to streams by a field. Every rendered name is checked like any stream name,
//! so a template or a field cannot produce `../` paths.

use crate::event::{stream_category, stream_id, validate_stream_name, Event, EventError};
use crate::upcast::pointer::{Pointer, PointerError};
use serde_json::Value;

/// Errors of parsing or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// Template text that does not parse.
    #[error("stream template {template:?}: {reason}")]
    Syntax { template: String, reason: String },
    /// A pointer placeholder that is not a JSON pointer.
    #[error("stream template {template:?}")]
    Pointer {
        template: String,
        #[source]
        source: PointerError,
    },
    /// A field placeholder whose field is missing or not a string or number.
    #[error("stream template {template:?}: event {event_id} in stream {stream} has no string or number at {pointer}")]
    Field {
        template: String,
        event_id: uuid::Uuid,
        stream: String,
        pointer: String,
    },
    /// A rendered name that is not a valid stream name.
    #[error(
        "stream template {template:?} gives a bad name for event {event_id} of stream {stream}"
    )]
    BadName {
        template: String,
        event_id: uuid::Uuid,
        stream: String,
        #[source]
        source: EventError,
    },
    /// The event's payload does not parse (needed for a field placeholder).
    #[error("stream template {template:?}: payload of event {event_id} is not valid JSON")]
    Payload {
        template: String,
        event_id: uuid::Uuid,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Stream,
    Category,
    Id,
    Field(Pointer),
}

/// A parsed stream-name template.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTemplate {
    text: String,
    parts: Vec<Part>,
}

impl Default for StreamTemplate {
    fn default() -> Self {
        StreamTemplate::parse("{stream}").expect("the default template parses")
    }
}

impl std::fmt::Display for StreamTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl StreamTemplate {
    /// Parses template text.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let syntax = |reason: &str| TemplateError::Syntax {
            template: text.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                if rest.contains('}') {
                    return Err(syntax("'}' without '{'"));
                }
                parts.push(Part::Literal(rest.to_string()));
                break;
            };
            if rest[..open].contains('}') {
                return Err(syntax("'}' without '{'"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| syntax("'{' without '}'"))?
                + open;
            let name = &rest[open + 1..close];
            parts.push(match name {
                "stream" => Part::Stream,
                "category" => Part::Category,
                "id" => Part::Id,
                pointer if pointer.starts_with('/') => Part::Field(
                    Pointer::parse(pointer).map_err(|source| TemplateError::Pointer {
                        template: text.to_string(),
                        source,
                    })?,
                ),
                other => {
                    return Err(syntax(&format!(
                        "unknown placeholder {{{other}}}; use {{stream}}, {{category}}, {{id}} or {{/json/pointer}}"
                    )))
                }
            });
            rest = &rest[close + 1..];
        }
        if parts.is_empty() {
            return Err(syntax("it is empty"));
        }
        Ok(StreamTemplate {
            text: text.to_string(),
            parts,
        })
    }

    /// True when the template is `{stream}`: target names equal source names.
    pub fn is_identity(&self) -> bool {
        self.parts == [Part::Stream]
    }

    /// The target stream name for an event that is not needed afterwards: the same name as
    /// [`render`](Self::render) gives, but an identity template moves the event's own stream
    /// name out (leaving it empty) instead of copying it.
    pub fn render_into_target(&self, event: &mut Event) -> Result<String, TemplateError> {
        if !self.is_identity() {
            return self.render(event);
        }
        self.check_name(&event.stream, event)?;
        Ok(std::mem::take(&mut event.stream))
    }

    /// The target stream name for an event.
    pub fn render(&self, event: &mut Event) -> Result<String, TemplateError> {
        let mut name = String::with_capacity(event.stream.len() + 16);
        for part in &self.parts {
            match part {
                Part::Literal(text) => name.push_str(text),
                Part::Stream => name.push_str(&event.stream),
                Part::Category => name.push_str(stream_category(&event.stream)),
                Part::Id => name.push_str(stream_id(&event.stream)),
                Part::Field(pointer) => {
                    let (id, stream) = (event.id, event.stream.clone());
                    let data = event
                        .data
                        .parsed()
                        .map_err(|source| TemplateError::Payload {
                            template: self.text.clone(),
                            event_id: id,
                            source,
                        })?;
                    match pointer.get(data) {
                        Some(Value::String(s)) => name.push_str(s),
                        Some(Value::Number(n)) => name.push_str(&n.to_string()),
                        _ => {
                            return Err(TemplateError::Field {
                                template: self.text.clone(),
                                event_id: id,
                                stream,
                                pointer: pointer.to_string(),
                            })
                        }
                    }
                }
            }
        }
        self.check_name(&name, event)?;
        Ok(name)
    }

    /// Refuses a target name that no store accepts, naming the event it was made for.
    fn check_name(&self, name: &str, event: &Event) -> Result<(), TemplateError> {
        validate_stream_name(name).map_err(|source| TemplateError::BadName {
            template: self.text.clone(),
            event_id: event.id,
            stream: event.stream.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, data: &str) -> Event {
        serde_json::from_str(&format!(
            r#"{{"stream":"{stream}","revision":0,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"T","data":{data}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn renders_placeholders_and_fields() {
        let mut e = event("order-42", r#"{"tenant":"acme","n":7}"#);
        let render = |t: &str, e: &mut Event| StreamTemplate::parse(t).unwrap().render(e).unwrap();
        assert_eq!(render("{stream}-v2", &mut e), "order-42-v2");
        assert_eq!(render("{category}_v2-{id}", &mut e), "order_v2-42");
        assert_eq!(render("{/tenant}-{category}-{/n}", &mut e), "acme-order-7");
        assert!(StreamTemplate::parse("{stream}").unwrap().is_identity());
    }

    #[test]
    fn refuses_bad_templates_and_bad_names() {
        assert!(StreamTemplate::parse("{nope}").is_err());
        assert!(StreamTemplate::parse("{stream").is_err());
        assert!(StreamTemplate::parse("a}b").is_err());
        let mut e = event("order-1", r#"{"dir":"../../etc"}"#);
        let err = StreamTemplate::parse("{/dir}")
            .unwrap()
            .render(&mut e)
            .unwrap_err();
        assert!(matches!(err, TemplateError::BadName { .. }), "{err}");
        let missing = StreamTemplate::parse("{/nope}")
            .unwrap()
            .render(&mut e)
            .unwrap_err();
        assert!(matches!(missing, TemplateError::Field { .. }));
    }
}
