//! Upcasters and the chain that applies them.
//!
//! An [`Upcaster`] handles one `(type, version)` ([`EventKind`]) and turns an event into 0..N
//! events, each with a kind of its own. Upcasters come from declarative files
//! ([`file::FileUpcaster`], loaded with [`Registry::load_dir`]) or from Rust code implementing
//! the trait. A [`Registry`] holds a checked set of them and applies the chain:
//!
//! ```text
//! Event ──(no upcaster for its kind)──────────────────────────> same Event, payload untouched
//! Event ──parse──> UpcastEvent ──upcaster──> outputs ──(each goes on through the chain)──> Events
//! ```
//!
//! The registry is checked when it is built: two upcasters for one kind, a step that does not
//! move forward (same type, version not higher), or a cycle through renames is an error that
//! names the files. At run time an upcaster may only emit the kinds it declared, so the check
//! holds for what actually runs and the chain always ends. Outputs keep their order; stream,
//! revision, position, metadata and timestamp are carried along. A single output keeps the
//! source event's id; the outputs of a split get ids derived from it ([`derived_event_id`]).
//!
//! ```
//! use recast::upcast::Registry;
//! let registry = Registry::load_dir(std::path::Path::new("upcasters")).unwrap();
//! assert!(registry.checksum().starts_with("sha256:"));
//! ```

pub mod file;
pub mod jq;
pub mod ops;
pub mod pointer;

use crate::event::{Event, EventKind, Payload};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// The error type upcasters return for one event.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of building a registry or upcasting an event.
#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    /// An upcaster file that does not load.
    #[error(transparent)]
    File(#[from] file::FileError),
    /// The upcaster folder cannot be listed.
    #[error("upcaster folder {path}: cannot list it")]
    Folder {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Two upcasters for one kind.
    #[error("two upcasters for {kind}: {first} and {second}")]
    Duplicate {
        kind: EventKind,
        first: String,
        second: String,
    },
    /// A step to the same type whose version is not higher.
    #[error("upcaster {origin}: {from} -> {to} does not move forward (same type needs a higher version)")]
    NotForward {
        origin: String,
        from: EventKind,
        to: EventKind,
    },
    /// A cycle through renames.
    #[error("upcasters form a cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
    /// An upcaster failed on an event.
    #[error("upcaster {upcaster} failed on event {event_id} ({kind}) in stream {stream} at position {position}")]
    Failed {
        upcaster: String,
        event_id: Uuid,
        kind: EventKind,
        stream: String,
        position: u64,
        #[source]
        source: BoxError,
    },
    /// An upcaster emitted a kind it did not declare.
    #[error(
        "upcaster {upcaster} emitted {emitted} for event {event_id}, which it does not declare"
    )]
    Undeclared {
        upcaster: String,
        emitted: EventKind,
        event_id: Uuid,
    },
    /// An event whose payload is not valid JSON, found when an upcaster needed it.
    #[error(
        "event {event_id} in stream {stream} at position {position}: payload is not valid JSON"
    )]
    Payload {
        event_id: Uuid,
        stream: String,
        position: u64,
        #[source]
        source: serde_json::Error,
    },
}

/// The part of an event an upcaster sees and returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpcastEvent {
    /// Event type.
    pub event_type: String,
    /// Schema version.
    pub version: u32,
    /// Payload.
    pub data: Value,
    /// Metadata, readable (an upcaster may also change it).
    pub metadata: Value,
}

/// One upcaster: turns events of one kind into 0..N events. Must be pure and deterministic.
pub trait Upcaster: Send + Sync {
    /// Where it comes from (a file path, or a name for Rust upcasters), for messages.
    fn origin(&self) -> &str;
    /// The kind it handles.
    fn input(&self) -> EventKind;
    /// Every kind it may emit.
    fn outputs(&self) -> Vec<EventKind>;
    /// A canonical text of its definition, for the set checksum. Change it when behaviour changes.
    fn canonical(&self) -> String;
    /// Upcasts one event.
    fn upcast(&self, event: UpcastEvent) -> Result<Vec<UpcastEvent>, BoxError>;
    /// False promises that the upcaster neither reads nor changes `metadata`: when no upcaster
    /// of an event's chain reads it, recast hands them `null` and keeps the metadata as the
    /// bytes it came in as (parsing and printing it again was a tenth of an upcast).
    fn reads_metadata(&self) -> bool {
        true
    }
}

/// Namespace of ids that recast derives from other ids.
pub const RECAST_NAMESPACE: Uuid = Uuid::from_u128(0x5f0b_7a2e_9c31_4d8e_b6a4_3e1f_0c27_d915);

/// The id of output `index` of the event `source`: stable across runs, distinct per output.
///
/// It is the UUIDv5 of the source id and the index in [`RECAST_NAMESPACE`], as
/// `Uuid::new_v5(&RECAST_NAMESPACE, source ++ index as u64 big-endian)` gives it. The SHA-1 is
/// the `sha1` crate's block function, which uses the CPU's SHA instructions where it has them:
/// `uuid`'s own SHA-1 was 5% of a pass-through migration (perf, 1M events), where every event
/// gets an id. The message (namespace, id, index: 40 bytes) always fits one block, so the block
/// is padded here and compressed once, without the streaming hasher's buffering.
pub fn derived_event_id(source: Uuid, index: usize) -> Uuid {
    const MESSAGE_BYTES: usize = 40;
    let mut block = [0u8; 64];
    block[..16].copy_from_slice(RECAST_NAMESPACE.as_bytes());
    block[16..32].copy_from_slice(source.as_bytes());
    block[32..MESSAGE_BYTES].copy_from_slice(&(index as u64).to_be_bytes());
    // SHA-1 padding: a 1 bit, zeros, and the message length in bits, big-endian, at the end.
    block[MESSAGE_BYTES] = 0x80;
    block[56..].copy_from_slice(&(MESSAGE_BYTES as u64 * 8).to_be_bytes());
    let mut state = SHA1_INITIAL_STATE;
    sha1::compress(&mut state, &[block.into()]);
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// SHA-1's initial hash value (FIPS 180-4, 5.3.1).
const SHA1_INITIAL_STATE: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];

/// What the chain made of one event.
#[derive(Debug)]
pub struct Upcasted {
    /// The resulting events, in order.
    pub events: Vec<Event>,
    /// Indexes (into [`Registry::upcasters`]) of the upcasters applied, in order.
    pub applied: Vec<usize>,
}

/// A checked set of upcasters: the chain.
pub struct Registry {
    upcasters: Vec<Arc<dyn Upcaster>>,
    outputs: Vec<Vec<EventKind>>,
    /// Per upcaster: whether it, or any upcaster its outputs go on to, reads metadata.
    chain_reads_metadata: Vec<bool>,
    /// FxHash: looked up once or twice per event read; type names are short.
    by_type: rustc_hash::FxHashMap<String, Vec<(u32, usize)>>,
    checksum: String,
}

impl Registry {
    /// A registry with no upcasters: every event passes through.
    pub fn empty() -> Self {
        Self::new(Vec::new()).expect("an empty set is valid")
    }

    /// Builds and checks a registry.
    pub fn new(upcasters: Vec<Arc<dyn Upcaster>>) -> Result<Self, UpcastError> {
        let mut by_kind: HashMap<EventKind, usize> = HashMap::new();
        let mut outputs = Vec::with_capacity(upcasters.len());
        for (index, upcaster) in upcasters.iter().enumerate() {
            let input = upcaster.input();
            if let Some(&first) = by_kind.get(&input) {
                return Err(UpcastError::Duplicate {
                    kind: input,
                    first: upcasters[first].origin().to_string(),
                    second: upcaster.origin().to_string(),
                });
            }
            let declared = upcaster.outputs();
            for output in &declared {
                if output.event_type == input.event_type && output.version <= input.version {
                    return Err(UpcastError::NotForward {
                        origin: upcaster.origin().to_string(),
                        from: input,
                        to: output.clone(),
                    });
                }
            }
            by_kind.insert(input, index);
            outputs.push(declared);
        }
        find_cycle(&upcasters, &outputs, &by_kind)?;
        let mut by_type: rustc_hash::FxHashMap<String, Vec<(u32, usize)>> = Default::default();
        for (kind, index) in &by_kind {
            by_type
                .entry(kind.event_type.clone())
                .or_default()
                .push((kind.version, *index));
        }
        let checksum = set_checksum(&upcasters);
        let chain_reads_metadata = (0..upcasters.len())
            .map(|start| chain_reads_metadata(start, &upcasters, &outputs, &by_kind))
            .collect();
        Ok(Registry {
            upcasters,
            outputs,
            chain_reads_metadata,
            by_type,
            checksum,
        })
    }

    /// Loads every `*.toml` file of a folder, in name order.
    pub fn load_dir(dir: &Path) -> Result<Self, UpcastError> {
        let files = definition_files(dir).map_err(|source| UpcastError::Folder {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut upcasters: Vec<Arc<dyn Upcaster>> = Vec::new();
        for path in files {
            upcasters.push(Arc::new(file::FileUpcaster::load(&path)?));
        }
        Self::new(upcasters)
    }

    /// The upcasters, in the order given.
    pub fn upcasters(&self) -> &[Arc<dyn Upcaster>] {
        &self.upcasters
    }

    /// `sha256:` over the canonical forms of all upcasters, in kind order.
    pub fn checksum(&self) -> &str {
        &self.checksum
    }

    /// The index of the upcaster for a kind, if any.
    pub fn find(&self, event_type: &str, version: u32) -> Option<usize> {
        let candidates = self.by_type.get(event_type)?;
        candidates
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, i)| *i)
    }

    /// Applies the chain to one event.
    pub fn upcast(&self, mut event: Event) -> Result<Upcasted, UpcastError> {
        let Some(first) = self.find(&event.event_type, event.version) else {
            return Ok(Upcasted {
                events: vec![event],
                applied: Vec::new(),
            });
        };
        let position = event.position.unwrap_or_default();
        let payload_error = |event: &Event, source| UpcastError::Payload {
            event_id: event.id,
            stream: event.stream.clone(),
            position,
            source,
        };
        let data = take_value(&mut event.data).map_err(|e| payload_error(&event, e))?;
        // No upcaster of the chain reads the metadata: outputs get it back as the bytes it was.
        let keep_metadata = !self.chain_reads_metadata[first];
        let metadata = if keep_metadata {
            Value::Null
        } else {
            take_value(&mut event.metadata).map_err(|e| payload_error(&event, e))?
        };
        let start = UpcastEvent {
            // Nothing reads the source's type after this point (errors name the upcaster's).
            event_type: std::mem::take(&mut event.event_type),
            version: event.version,
            data,
            metadata,
        };
        let mut outputs = Vec::new();
        let mut applied = Vec::new();
        self.expand(first, start, &event, &mut outputs, &mut applied)?;
        let count = outputs.len();
        let mut events = Vec::with_capacity(count);
        for (index, output) in outputs.into_iter().enumerate() {
            // The last output takes the source's strings; earlier ones (splits) copy them.
            let last = index + 1 == count;
            let take_or_clone = |text: &mut String| match last {
                true => std::mem::take(text),
                false => text.clone(),
            };
            events.push(Event {
                stream: take_or_clone(&mut event.stream),
                revision: event.revision,
                position: event.position,
                id: match count {
                    1 => event.id,
                    _ => derived_event_id(event.id, index),
                },
                event_type: output.event_type,
                version: output.version,
                data: Payload::Parsed(output.data),
                metadata: match (keep_metadata, last) {
                    (true, true) => {
                        std::mem::replace(&mut event.metadata, Payload::Parsed(Value::Null))
                    }
                    (true, false) => event.metadata.clone(),
                    (false, _) => Payload::Parsed(output.metadata),
                },
                recorded_at: match last {
                    true => event.recorded_at.take(),
                    false => event.recorded_at.clone(),
                },
            });
        }
        Ok(Upcasted { events, applied })
    }

    /// Runs upcaster `index` on `current` (of its input kind), then the chain on each result:
    /// a result no upcaster takes is an output.
    fn expand(
        &self,
        index: usize,
        current: UpcastEvent,
        source: &Event,
        outputs: &mut Vec<UpcastEvent>,
        applied: &mut Vec<usize>,
    ) -> Result<(), UpcastError> {
        let upcaster = &self.upcasters[index];
        applied.push(index);
        let results = upcaster
            .upcast(current)
            .map_err(|source_error| UpcastError::Failed {
                upcaster: upcaster.origin().to_string(),
                event_id: source.id,
                // The upcaster was found by this event's kind.
                kind: upcaster.input(),
                stream: source.stream.clone(),
                position: source.position.unwrap_or_default(),
                source: source_error,
            })?;
        for result in results {
            let declared = &self.outputs[index];
            if !declared
                .iter()
                .any(|k| k.event_type == result.event_type && k.version == result.version)
            {
                return Err(UpcastError::Undeclared {
                    upcaster: upcaster.origin().to_string(),
                    emitted: EventKind::new(result.event_type, result.version),
                    event_id: source.id,
                });
            }
            match self.find(&result.event_type, result.version) {
                Some(next) => self.expand(next, result, source, outputs, applied)?,
                None => outputs.push(result),
            }
        }
        Ok(())
    }
}

/// The `*.toml` files of a folder, in name order: how upcaster and projection folders load.
pub fn definition_files(dir: &Path) -> Result<Vec<PathBuf>, std::io::Error> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Whether the upcaster at `start`, or any upcaster reachable through its outputs, reads
/// metadata. The registry has no cycles, so the walk ends.
fn chain_reads_metadata(
    start: usize,
    upcasters: &[Arc<dyn Upcaster>],
    outputs: &[Vec<EventKind>],
    by_kind: &HashMap<EventKind, usize>,
) -> bool {
    upcasters[start].reads_metadata()
        || outputs[start].iter().any(|kind| {
            by_kind
                .get(kind)
                .is_some_and(|&next| chain_reads_metadata(next, upcasters, outputs, by_kind))
        })
}

fn take_value(payload: &mut Payload) -> Result<Value, serde_json::Error> {
    Ok(std::mem::take(payload.parsed()?))
}

fn set_checksum(upcasters: &[Arc<dyn Upcaster>]) -> String {
    let mut entries: Vec<(EventKind, String)> = upcasters
        .iter()
        .map(|u| (u.input(), u.canonical()))
        .collect();
    entries.sort();
    let mut hasher = Sha256::new();
    for (kind, canonical) in entries {
        hasher.update(format!("{kind}\t{canonical}\n").as_bytes());
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Depth-first search over kinds; a back edge is a cycle.
fn find_cycle(
    upcasters: &[Arc<dyn Upcaster>],
    outputs: &[Vec<EventKind>],
    by_kind: &HashMap<EventKind, usize>,
) -> Result<(), UpcastError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; upcasters.len()];
    fn visit(
        index: usize,
        outputs: &[Vec<EventKind>],
        by_kind: &HashMap<EventKind, usize>,
        marks: &mut [Mark],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        marks[index] = Mark::OnPath;
        path.push(index);
        for output in &outputs[index] {
            let Some(&next) = by_kind.get(output) else {
                continue;
            };
            match marks[next] {
                Mark::OnPath => {
                    let start = path.iter().position(|&i| i == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, outputs, by_kind, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[index] = Mark::Done;
        None
    }
    for start in 0..upcasters.len() {
        if marks[start] == Mark::New {
            if let Some(cycle) = visit(start, outputs, by_kind, &mut marks, &mut Vec::new()) {
                let cycle = cycle
                    .into_iter()
                    .map(|i| format!("{} ({})", upcasters[i].input(), upcasters[i].origin()))
                    .collect();
                return Err(UpcastError::Cycle { cycle });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_the_uuid_v5_of_source_and_index() {
        for (source, index) in [
            (0u128, 0usize),
            (7, 1),
            (u128::MAX, 3),
            (0x1234_5678, 1 << 40),
        ] {
            let source = Uuid::from_u128(source);
            let mut name = source.as_bytes().to_vec();
            name.extend_from_slice(&(index as u64).to_be_bytes());
            assert_eq!(
                derived_event_id(source, index),
                Uuid::new_v5(&RECAST_NAMESPACE, &name)
            );
        }
    }
    use serde_json::json;

    fn file(name: &str, text: &str) -> Arc<dyn Upcaster> {
        Arc::new(file::FileUpcaster::parse(Path::new(name), text).unwrap())
    }

    fn event(event_type: &str, version: u32, data: &str) -> Event {
        let line = format!(
            r#"{{"stream":"user-1","revision":3,"position":7,"id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"{event_type}","version":{version},"data":{data},"metadata":{{"user":"u9"}},"recorded_at":"2024-01-01T00:00:00Z"}}"#
        );
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn chain_runs_every_step_and_carries_the_envelope() {
        let registry = Registry::new(vec![
            file("a.toml", "type = \"U\"\nfrom = 1\n[[ops]]\nset = { path = \"/v2\", value = true }"),
            file("b.toml", "type = \"U\"\nfrom = 2\nrename = \"User\"\n[[ops]]\nfrom_metadata = { from = \"/user\", into = \"/by\" }"),
        ])
        .unwrap();
        let out = registry.upcast(event("U", 1, "{}")).unwrap();
        assert_eq!(out.applied, vec![0, 1]);
        let e = &out.events[0];
        assert_eq!(
            (e.event_type.as_str(), e.version, e.revision, e.position),
            ("User", 3, 3, Some(7))
        );
        assert_eq!(e.data.to_value().unwrap(), json!({"v2": true, "by": "u9"}));
        assert_eq!(e.id, event("U", 1, "{}").id);
        assert_eq!(e.recorded_at.as_deref(), Some("2024-01-01T00:00:00Z"));
    }

    #[test]
    fn metadata_stays_raw_unless_a_step_of_the_chain_reads_it() {
        let set = "type = \"U\"\nfrom = 1\n[[ops]]\nset = { path = \"/v2\", value = true }";
        let reads =
            "type = \"U\"\nfrom = 2\n[[ops]]\nfrom_metadata = { from = \"/user\", into = \"/by\" }";
        let untouched = Registry::new(vec![file("a.toml", set)]).unwrap();
        let out = untouched.upcast(event("U", 1, "{}")).unwrap();
        assert!(out.events[0].metadata.is_raw());
        assert_eq!(
            out.events[0].metadata.to_value().unwrap(),
            json!({"user": "u9"})
        );
        let chain = Registry::new(vec![file("a.toml", set), file("b.toml", reads)]).unwrap();
        let out = chain.upcast(event("U", 1, "{}")).unwrap();
        assert_eq!(
            out.events[0].data.to_value().unwrap(),
            json!({"v2": true, "by": "u9"})
        );
        assert_eq!(
            out.events[0].metadata.to_value().unwrap(),
            json!({"user": "u9"})
        );
    }

    #[test]
    fn unknown_events_pass_through_unparsed() {
        let registry = Registry::new(vec![file("a.toml", "type = \"U\"\nfrom = 1")]).unwrap();
        let out = registry
            .upcast(event("Other", 1, "{ \"keep\" :  1 }"))
            .unwrap();
        assert!(out.events[0].data.is_raw());
        assert!(out.applied.is_empty());
    }

    #[test]
    fn splits_get_distinct_derived_ids_in_order() {
        let registry = Registry::new(vec![file(
            "s.toml",
            "type = \"U\"\nfrom = 1\n[[emit]]\ntype = \"A\"\nversion = 1\n[[emit]]\ntype = \"B\"\nversion = 1",
        )])
        .unwrap();
        let source = event("U", 1, "{}");
        let out = registry.upcast(source.clone()).unwrap();
        let types: Vec<_> = out.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, vec!["A", "B"]);
        assert_eq!(out.events[0].id, derived_event_id(source.id, 0));
        assert_ne!(out.events[0].id, out.events[1].id);
    }

    #[test]
    fn registry_refuses_duplicates_backward_steps_and_cycles() {
        let dup = Registry::new(vec![
            file("a.toml", "type = \"U\"\nfrom = 1"),
            file("b.toml", "type = \"U\"\nfrom = 1"),
        ]);
        let msg = dup.err().unwrap().to_string();
        assert!(msg.contains("a.toml") && msg.contains("b.toml"), "{msg}");
        let back = Registry::new(vec![file("a.toml", "type = \"U\"\nfrom = 2\nto = 2")]);
        assert!(matches!(back, Err(UpcastError::NotForward { .. })));
        let cycle = Registry::new(vec![
            file("a.toml", "type = \"A\"\nfrom = 1\nrename = \"B\"\nto = 1"),
            file("b.toml", "type = \"B\"\nfrom = 1\nrename = \"A\"\nto = 1"),
        ]);
        let msg = cycle.err().unwrap().to_string();
        assert!(
            msg.contains("cycle") && msg.contains("a.toml") && msg.contains("b.toml"),
            "{msg}"
        );
    }

    #[test]
    fn checksum_depends_on_definitions_not_order() {
        let a = || file("a.toml", "type = \"A\"\nfrom = 1");
        let b = || file("b.toml", "type = \"B\"\nfrom = 1");
        let one = Registry::new(vec![a(), b()]).unwrap();
        let two = Registry::new(vec![b(), a()]).unwrap();
        assert_eq!(one.checksum(), two.checksum());
        let changed =
            Registry::new(vec![a(), file("b.toml", "type = \"B\"\nfrom = 1\nto = 3")]).unwrap();
        assert_ne!(one.checksum(), changed.checksum());
    }
}
