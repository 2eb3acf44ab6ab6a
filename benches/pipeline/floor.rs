//! The least work a JSONL -> JSONL migration does, written as one tight loop: how close to
//! B_raw any design of recast's pipeline could come.
//!
//! [`least_migration`] reads the log in large blocks, parses each line into an envelope that
//! borrows from the block (no owned strings, payloads as `&RawValue`), checks the stream name,
//! looks up and bumps the target stream's revision, derives the output id, writes the line,
//! and syncs every [`BATCH`] events, on one thread. With `upcast`, each event's data is also
//! parsed into a `serde_json::Value`, given `"migrated": true` and printed again: what the
//! harness's one-step upcasters do. It has no checkpoints, no error policy, no template, no
//! counts and no handover between threads: it is a floor to compare the pipelines with, not a
//! migration (its output is not checked against recast's).

use crate::jobs::BATCH;
use recast::event::validate_stream_name;
use recast::upcast::derived_event_id;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;
use uuid::Uuid;

/// An envelope borrowing its text from the line it was parsed from.
#[derive(Deserialize)]
struct BorrowedEnvelope<'a> {
    #[serde(borrow)]
    stream: Cow<'a, str>,
    revision: u64,
    #[serde(default)]
    position: Option<u64>,
    id: Uuid,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    version: u32,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow)]
    metadata: &'a RawValue,
    #[serde(borrow, default)]
    recorded_at: Option<Cow<'a, str>>,
}

/// Migrates `log` into a new file at `target` doing only the work every migration must do;
/// the number of events written.
pub fn least_migration(log: &Path, target: &Path, upcast: bool) -> u64 {
    let mut input = std::fs::File::open(log).expect("log opens");
    let output = std::fs::File::create(target).expect("target creates");
    let mut block: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut revisions: FxHashMap<String, u64> = FxHashMap::default();
    let (mut written, mut since_sync) = (0u64, 0usize);
    loop {
        let start = block.len();
        block.resize(start + (1 << 20), 0);
        let read = input.read(&mut block[start..]).expect("log reads");
        block.truncate(start + read);
        let end = match memchr::memrchr(b'\n', &block) {
            Some(last) => last + 1,
            None if read == 0 => block.len(),
            None => continue,
        };
        let mut line_start = 0;
        // The last line may lack its newline.
        let unterminated = (end > 0 && block[end - 1] != b'\n').then_some(end);
        for line_end in memchr::memchr_iter(b'\n', &block[..end]).chain(unterminated) {
            let line = &block[line_start..line_end];
            line_start = line_end + 1;
            if line.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(line).expect("line is UTF-8");
            let event: BorrowedEnvelope = serde_json::from_str(text).expect("line parses");
            std::hint::black_box((event.revision, event.position));
            validate_stream_name(&event.stream).expect("stream name is valid");
            let revision = next_revision(&mut revisions, &event.stream);
            write_line(&mut out, &event, revision, written, upcast);
            written += 1;
            since_sync += 1;
            if out.len() >= 1 << 16 || since_sync == BATCH {
                (&output).write_all(&out).expect("target writes");
                out.clear();
            }
            if since_sync == BATCH {
                output.sync_data().expect("target syncs");
                since_sync = 0;
            }
        }
        block.drain(..end);
        if read == 0 {
            break;
        }
    }
    (&output).write_all(&out).expect("target writes");
    output.sync_data().expect("target syncs");
    written
}

fn next_revision(revisions: &mut FxHashMap<String, u64>, stream: &str) -> u64 {
    match revisions.get_mut(stream) {
        Some(last) => {
            *last += 1;
            *last
        }
        None => {
            revisions.insert(stream.to_owned(), 0);
            0
        }
    }
}

fn write_line(
    out: &mut Vec<u8>,
    event: &BorrowedEnvelope,
    revision: u64,
    position: u64,
    upcast: bool,
) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"{\"stream\":");
    serde_json::to_writer(&mut *out, event.stream.as_ref()).expect("string writes");
    out.extend_from_slice(b",\"revision\":");
    out.extend_from_slice(number.format(revision).as_bytes());
    out.extend_from_slice(b",\"position\":");
    out.extend_from_slice(number.format(position).as_bytes());
    out.extend_from_slice(b",\"id\":\"");
    let id = derived_event_id(event.id, 0);
    out.extend_from_slice(
        id.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(b"\",\"type\":");
    serde_json::to_writer(&mut *out, event.event_type.as_ref()).expect("string writes");
    out.extend_from_slice(b",\"version\":");
    let version = if upcast {
        event.version + 100
    } else {
        event.version
    };
    out.extend_from_slice(number.format(version).as_bytes());
    out.extend_from_slice(b",\"data\":");
    if upcast {
        let mut data: serde_json::Value =
            serde_json::from_str(event.data.get()).expect("data parses");
        if let Some(fields) = data.as_object_mut() {
            fields
                .entry("migrated")
                .or_insert(serde_json::Value::Bool(true));
        }
        serde_json::to_writer(&mut *out, &data).expect("data writes");
    } else {
        out.extend_from_slice(event.data.get().as_bytes());
    }
    out.extend_from_slice(b",\"metadata\":");
    out.extend_from_slice(event.metadata.get().as_bytes());
    if let Some(recorded_at) = &event.recorded_at {
        out.extend_from_slice(b",\"recorded_at\":");
        serde_json::to_writer(&mut *out, recorded_at.as_ref()).expect("string writes");
    }
    out.extend_from_slice(b"}\n");
}
