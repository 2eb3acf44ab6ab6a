//! The sled event store as a whole: appends, reads, idempotency, cuts and recovery.

use super::*;
use crate::event::Payload;
use crate::store::{EventSource, ExpectedRevision, NewEvent};
use futures::TryStreamExt;
use serde_json::json;
use uuid::Uuid;

fn new_event(n: u128, value: u64) -> NewEvent {
    NewEvent {
        id: Uuid::from_u128(n),
        event_type: "T".into(),
        version: 1,
        data: Payload::Parsed(json!({ "v": value })),
        metadata: Payload::empty_object(),
        recorded_at: None,
    }
}

fn request(stream: &str, expected: ExpectedRevision, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream: stream.into(),
        expected,
        events,
    }
}

#[tokio::test]
async fn appends_check_revisions_and_are_idempotent_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path()).unwrap();
    let first = vec![new_event(1, 1), new_event(2, 2)];
    let out = append_one(&mut store, "a-1", ExpectedRevision::NoStream, first.clone())
        .await
        .unwrap();
    assert_eq!(
        out,
        AppendOutcome {
            last_revision: 1,
            written: 2,
            duplicates: 0
        }
    );
    // The same request again is a no-op that passes its own expected-revision check.
    let again = append_one(&mut store, "a-1", ExpectedRevision::NoStream, first)
        .await
        .unwrap();
    assert_eq!(
        again,
        AppendOutcome {
            last_revision: 1,
            written: 0,
            duplicates: 2
        }
    );
    let wrong = append_one(
        &mut store,
        "a-1",
        ExpectedRevision::Exact(0),
        vec![new_event(3, 3)],
    )
    .await;
    assert!(
        matches!(wrong, Err(StoreError::WrongExpectedRevision { .. })),
        "{wrong:?}"
    );
    // The same id with other data in the same stream is a conflict; ids are per stream.
    let conflict = append_one(
        &mut store,
        "a-1",
        ExpectedRevision::Any,
        vec![new_event(1, 9)],
    )
    .await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::IdConflict {
                existing_revision: 0,
                ..
            })
        ),
        "{conflict:?}"
    );
    assert_eq!(store.len().unwrap(), 2);
    let other_stream = append_one(
        &mut store,
        "b-1",
        ExpectedRevision::Any,
        vec![new_event(1, 9)],
    )
    .await
    .unwrap();
    assert_eq!(other_stream.written, 1);
}

/// One request, alone in its batch.
async fn append_one(
    store: &mut SledStore,
    stream: &str,
    expected: ExpectedRevision,
    events: Vec<NewEvent>,
) -> Result<AppendOutcome, StoreError> {
    Ok(store
        .append_batch(vec![request(stream, expected, events)])
        .await?
        .remove(0))
}

/// Appends events with the ids `ids` to `stream`, one request each, in batches of `per_batch`.
async fn append_many(
    store: &mut SledStore,
    stream: &str,
    ids: std::ops::Range<u128>,
    per_batch: usize,
) {
    let ids: Vec<u128> = ids.collect();
    for batch in ids.chunks(per_batch) {
        let requests = batch
            .iter()
            .map(|&n| request(stream, ExpectedRevision::Any, vec![new_event(n, n as u64)]))
            .collect();
        store.append_batch(requests).await.unwrap();
    }
}

#[tokio::test]
async fn long_streams_span_index_chunks_and_re_sends_within_the_window_are_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path()).unwrap();
    // 600 events: ten index chunks.
    append_many(&mut store, "long", 0..600, 70).await;
    let big = NewEvent {
        data: Payload::Parsed(json!({ "blob": "x".repeat(100_000) })),
        ..new_event(1000, 0)
    };
    append_one(&mut store, "other", ExpectedRevision::NoStream, vec![big])
        .await
        .unwrap();
    drop(store);
    // The nine full chunks went to the index file; the tenth, still filling, stays in sled.
    let index_file = dir.path().join("log").join(log_file::INDEX);
    let chunk_bytes = (layout::CHUNK_EVENTS * 24) as u64;
    assert_eq!(
        std::fs::metadata(&index_file).unwrap().len(),
        9 * chunk_bytes
    );
    let mut store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.stream_state("long").await.unwrap(),
        StreamState::At(599)
    );
    let tail: Vec<Event> = store.read_stream("long", 250).try_collect().await.unwrap();
    assert_eq!(tail.len(), 350);
    assert!(tail
        .iter()
        .enumerate()
        .all(|(i, e)| e.revision == 250 + i as u64 && e.id == Uuid::from_u128(250 + i as u128)));
    let all: Vec<Event> = store.read_all(Some(298)).try_collect().await.unwrap();
    assert_eq!(all.len(), 302);
    assert_eq!(all[0].position, Some(299));
    assert_eq!(
        all[301].data.to_value().unwrap()["blob"]
            .as_str()
            .map(str::len),
        Some(100_000)
    );
    // Event 550 is among the last 64 events of its stream (536..=599): sent again, it is
    // skipped. Event 535 is just outside, and 100 far outside: they are stored again.
    let again = append_one(
        &mut store,
        "long",
        ExpectedRevision::Any,
        vec![new_event(550, 550)],
    )
    .await
    .unwrap();
    assert_eq!(
        (again.written, again.duplicates, again.last_revision),
        (0, 1, 550)
    );
    assert_eq!(store.len().unwrap(), 601);
    let old = append_one(
        &mut store,
        "long",
        ExpectedRevision::Any,
        vec![new_event(535, 535), new_event(100, 100)],
    )
    .await
    .unwrap();
    assert_eq!((old.written, old.last_revision), (2, 601));
}

#[tokio::test]
async fn a_cache_too_small_for_its_streams_writes_and_rereads_the_index_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path()).unwrap();
    // Room for a few tails only: most batches write the index, and many empty the cache.
    store.tail_budget = 2_000;
    let streams = 7u128;
    for round in 0..30u128 {
        let expected = match round {
            0 => ExpectedRevision::NoStream,
            _ => ExpectedRevision::Exact(round as u64 * 5 - 1),
        };
        let requests = (0..streams)
            .map(|s| {
                let ids = (0..5).map(|k| (s << 32) | (round * 5 + k));
                let events = ids.map(|id| new_event(id, id as u64)).collect();
                request(&format!("s-{s}"), expected, events)
            })
            .collect();
        store.append_batch(requests).await.unwrap();
    }
    seven_streams_of_150(&store, 150).await;
    // A re-send within the window is found through the stored index when its tail was dropped.
    let resent = append_one(
        &mut store,
        "s-3",
        ExpectedRevision::Any,
        vec![new_event((3 << 32) | 100, (3 << 32) | 100)],
    )
    .await
    .unwrap();
    assert_eq!(
        (resent.written, resent.duplicates, resent.last_revision),
        (0, 1, 100)
    );
    let outside = append_one(
        &mut store,
        "s-3",
        ExpectedRevision::Exact(149),
        vec![new_event((3 << 32) | 85, 85)],
    )
    .await
    .unwrap();
    assert_eq!((outside.written, outside.last_revision), (1, 150));
    drop(store);
    let mut store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.len().unwrap(), 7 * 150 + 1);
    seven_streams_of_150(&store, 151).await;
    // After a reopen no tail is in memory: the window comes from the stored chunks.
    let id = (5 << 32) | 120;
    let resent = append_one(
        &mut store,
        "s-5",
        ExpectedRevision::Any,
        vec![new_event(id, id as u64)],
    )
    .await
    .unwrap();
    assert_eq!((resent.duplicates, resent.last_revision), (1, 120));
}

#[tokio::test]
async fn a_resumed_job_cuts_the_store_back_to_its_mark() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path()).unwrap();
    append_many(&mut store, "a-1", 0..300, 100).await;
    append_many(&mut store, "b-1", 300..310, 10).await;
    let mark = store.commit().await.unwrap();
    let before: Vec<Event> = store.read_all(None).try_collect().await.unwrap();
    append_many(&mut store, "a-1", 310..320, 3).await;
    append_many(&mut store, "c-1", 320..330, 4).await;
    append_many(&mut store, "b-1", 330..331, 1).await;
    assert_eq!(store.len().unwrap(), 331);
    store.restore(Some(&mark)).await.unwrap();
    let after: Vec<Event> = store.read_all(None).try_collect().await.unwrap();
    assert_eq!(
        after.iter().map(Event::to_json_line).collect::<Vec<_>>(),
        before.iter().map(Event::to_json_line).collect::<Vec<_>>()
    );
    assert_eq!(store.list_streams().await.unwrap(), vec!["a-1", "b-1"]);
    assert_eq!(
        store.stream_state("a-1").await.unwrap(),
        StreamState::At(299)
    );
    // Written again after the cut, the events get the same revisions and positions.
    append_many(&mut store, "a-1", 310..320, 3).await;
    let a: Vec<Event> = store.read_stream("a-1", 300).try_collect().await.unwrap();
    assert_eq!(
        a.iter()
            .map(|e| (e.revision, e.position))
            .collect::<Vec<_>>(),
        (0..10)
            .map(|i| (300 + i, Some(310 + i)))
            .collect::<Vec<_>>()
    );
    let too_long = serde_json::json!({ "events": 10_000 });
    assert!(matches!(
        store.restore(Some(&too_long)).await,
        Err(StoreError::BadMark { .. })
    ));
}

#[tokio::test]
async fn a_failed_batch_loses_no_index_entry_of_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path()).unwrap();
    append_many(&mut store, "a-1", 0..300, 100).await;
    // Takes a-1's tail, with 300 entries not yet in the stored index, then fails.
    let failed = store
        .append_batch(vec![
            request("a-1", ExpectedRevision::Exact(299), vec![new_event(300, 0)]),
            request("b-1", ExpectedRevision::Exact(7), vec![new_event(301, 0)]),
        ])
        .await;
    assert!(matches!(
        failed,
        Err(StoreError::WrongExpectedRevision { .. })
    ));
    assert_eq!(store.len().unwrap(), 300);
    assert_eq!(
        store.stream_state("a-1").await.unwrap(),
        StreamState::At(299)
    );
    let a: Vec<Event> = store.read_stream("a-1", 0).try_collect().await.unwrap();
    assert_eq!(a.len(), 300);
    let next = append_one(
        &mut store,
        "a-1",
        ExpectedRevision::Exact(299),
        vec![new_event(300, 0)],
    )
    .await
    .unwrap();
    assert_eq!(next.last_revision, 300);
}

#[tokio::test]
async fn an_index_left_behind_by_a_crash_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = SledStore::open(dir.path()).unwrap();
        append_many(&mut store, "a-1", 0..300, 100).await;
        append_many(&mut store, "b-1", 300..305, 5).await;
    }
    // What a killed process leaves: its last batch in the log and committed, no index.
    let crashed = [
        ("a-1", 300, 305),
        ("a-1", 301, 306),
        ("b-1", 5, 307),
        ("a-1", 302, 308),
    ];
    let mut segment = Vec::new();
    for (stream, revision, position) in crashed {
        let event = new_event(position as u128, 0);
        serde_json::to_writer(&mut segment, &event.envelope(stream, revision, position)).unwrap();
        segment.push(b'\n');
    }
    {
        let tree = sled::open(dir.path()).unwrap().open_tree("log").unwrap();
        let offset = read_u64(&tree.get(LOG_BYTES).unwrap().unwrap());
        let log = log_file::LogFile::open(dir.path(), log_file::EVENTS, offset).unwrap();
        log.append(offset, &segment).unwrap();
        let value = layout::encode_segment(offset, segment.len());
        tree.insert(layout::segment_key(305), &value).unwrap();
        tree.insert(NEXT_POSITION, &309u64.to_be_bytes()).unwrap();
        let length = offset + segment.len() as u64;
        tree.insert(LOG_BYTES, &length.to_be_bytes()).unwrap();
        tree.flush().unwrap();
    }
    let mut store = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        store.stream_state("a-1").await.unwrap(),
        StreamState::At(302)
    );
    assert_eq!(store.stream_state("b-1").await.unwrap(), StreamState::At(5));
    let a: Vec<Event> = store.read_stream("a-1", 299).try_collect().await.unwrap();
    assert_eq!(
        a.iter()
            .map(|e| (e.revision, e.position))
            .collect::<Vec<_>>(),
        vec![
            (299, Some(299)),
            (300, Some(305)),
            (301, Some(306)),
            (302, Some(308))
        ]
    );
    let next = append_one(
        &mut store,
        "a-1",
        ExpectedRevision::Exact(302),
        vec![new_event(999, 0)],
    )
    .await
    .unwrap();
    assert_eq!(next.last_revision, 303);
}

#[test]
fn a_store_in_another_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.open_tree("log")
            .unwrap()
            .insert(b"E\0\0\0\0\0\0\0\0", b"{}")
            .unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("layout 1"), "{err}");
}

#[tokio::test]
async fn reads_the_log_streams_and_stream_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path()).unwrap();
    store
        .append_batch(vec![
            request("a-1", ExpectedRevision::Any, vec![new_event(1, 1)]),
            request("b-1", ExpectedRevision::Any, vec![new_event(2, 2)]),
            request("a-1", ExpectedRevision::Exact(0), vec![new_event(3, 3)]),
        ])
        .await
        .unwrap();
    let all: Vec<Event> = store.read_all(Some(0)).try_collect().await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position.unwrap()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let stream: Vec<Event> = store.read_stream("a-1", 1).try_collect().await.unwrap();
    assert_eq!(stream.len(), 1);
    assert_eq!(stream[0].id, Uuid::from_u128(3));
    assert_eq!(store.list_streams().await.unwrap(), vec!["a-1", "b-1"]);
}

#[tokio::test]
async fn heads_come_back_from_the_stream_index_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "a-1", "ab", "b"];
    {
        let mut store = SledStore::open(dir.path()).unwrap();
        let requests = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let events = (0..=i as u128).map(|n| new_event(i as u128 * 10 + n, 1));
                request(name, ExpectedRevision::NoStream, events.collect())
            })
            .collect();
        store.append_batch(requests).await.unwrap();
    }
    let mut store = SledStore::open(dir.path()).unwrap();
    assert_eq!(store.list_streams().await.unwrap(), names);
    for (i, name) in names.iter().enumerate() {
        let state = store.stream_state(name).await.unwrap();
        assert_eq!(state, StreamState::At(i as u64), "{name}");
    }
    assert_eq!(
        store.stream_state("a-").await.unwrap(),
        StreamState::NoStream
    );
    let err = append_one(
        &mut store,
        "ab",
        ExpectedRevision::Exact(0),
        vec![new_event(99, 1)],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::WrongExpectedRevision { .. }),
        "{err}"
    );
    let outcome = append_one(
        &mut store,
        "ab",
        ExpectedRevision::Exact(2),
        vec![new_event(99, 1)],
    )
    .await
    .unwrap();
    assert_eq!(outcome.last_revision, 3);
}

#[test]
fn a_second_open_of_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledStore::open(dir.path()).unwrap();
    let second = SledStore::open(dir.path());
    assert!(matches!(second, Err(StoreError::Locked { .. })));
}

/// Checks the streams of the test above: `s-0`..`s-6`, 150 events each (and one more in `s-3`
/// once it was appended), ids by stream and revision.
async fn seven_streams_of_150(store: &SledStore, s3_len: usize) {
    for s in 0..7u128 {
        let stream = format!("s-{s}");
        let mut events: Vec<Event> = store.read_stream(&stream, 0).try_collect().await.unwrap();
        assert_eq!(events.len(), if s == 3 { s3_len } else { 150 }, "{stream}");
        events.truncate(150);
        let expected = |(i, e): (usize, &Event)| {
            e.revision == i as u64 && e.id == Uuid::from_u128((s << 32) | i as u128)
        };
        assert!(events.iter().enumerate().all(expected), "{stream}");
    }
}

#[tokio::test]
async fn an_id_whose_fingerprint_matches_another_in_the_window_is_not_taken_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = SledStore::open(dir.path()).unwrap();
    let first = Uuid::from_u128(1);
    let twin = (2..)
        .map(Uuid::from_u128)
        .find(|id| tail::fingerprint(id) == tail::fingerprint(&first))
        .unwrap();
    let event = |id: Uuid| NewEvent {
        id,
        ..new_event(0, 7)
    };
    let stored = append_one(
        &mut store,
        "a-1",
        ExpectedRevision::NoStream,
        vec![event(first)],
    );
    assert_eq!(stored.await.unwrap().written, 1);
    // Same fingerprint, other id: a new event, not a re-send (nor a conflict).
    let other = append_one(
        &mut store,
        "a-1",
        ExpectedRevision::Exact(0),
        vec![event(twin)],
    );
    assert_eq!(other.await.unwrap().written, 1);
    drop(store);
    // Both are found again from the stored index, each by its own id.
    let mut store = SledStore::open(dir.path()).unwrap();
    for (id, revision) in [(twin, 1), (first, 0)] {
        let again = append_one(&mut store, "a-1", ExpectedRevision::Any, vec![event(id)]);
        let again = again.await.unwrap();
        assert_eq!((again.duplicates, again.last_revision), (1, revision));
    }
}
