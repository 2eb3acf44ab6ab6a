//! recast: upcast event-sourced streams and rebuild what is derived from them.
//!
//! Data flows one way:
//!
//! ```text
//!  EventSource ──read_all──> Event ──Registry::upcast──> Event(s) ──StreamTemplate──> EventSink
//!  (jsonl, sled)            (raw payload)  (upcast chain)             (target names)  (batched appends)
//!                                                                                   └─> checkpoint (sled)
//! ```
//!
//! - [`event`]: the envelope ([`event::Event`]) with payloads kept raw until touched.
//! - [`store`]: the [`store::EventSource`] / [`store::EventSink`] traits, JSONL files and the
//!   embedded sled store, and canonical digests.
//! - [`upcast`]: the [`upcast::Upcaster`] trait, declarative upcaster files, and the checked
//!   [`upcast::Registry`] that applies the chain.
//! - [`migrate`]: resumable copy-transform migrations, dry runs, `plan` and `verify`.
//! - [`checkpoint`]: where long jobs record their progress.
//! - [`import`] and [`generate`]: bringing NDJSON in, and synthetic logs for tests and benches.
//!
//! The library never prints; the `recast` binary's `cli` module does.
//!
//! Upcasting one event on read:
//!
//! ```
//! use recast::event::Event;
//! use recast::upcast::Registry;
//!
//! let registry = Registry::load_dir(std::path::Path::new("upcasters")).unwrap();
//! let old: Event = serde_json::from_str(r#"{"stream":"user-1","revision":0,
//!     "id":"6f1c7a52-5d1e-4a47-9a37-1b9e3f0e8a11","type":"UserRegistered","version":1,
//!     "data":{"first_name":"Ada","last_name":"Lovelace","email":"ada@example.com"},
//!     "metadata":{"user_id":"user-0"}}"#).unwrap();
//! let current = registry.upcast(old).unwrap().events;
//! assert_eq!((current[0].event_type.as_str(), current[0].version), ("UserRegistered", 3));
//! assert_eq!(current[0].data.to_value().unwrap()["full_name"], "Ada Lovelace");
//! assert_eq!(current[0].data.to_value().unwrap()["registered_by"], "user-0");
//! ```

pub mod checkpoint;
pub mod error;
pub mod event;
pub mod generate;
pub mod import;
pub mod migrate;
pub mod store;
pub mod upcast;

pub use error::{Error, Result};
pub use event::{Event, EventKind, Payload};
pub use migrate::{Migration, MigrationReport};
pub use store::{EventSink, EventSource, Location};
pub use upcast::{Registry, Upcaster};
pub mod project;
pub mod readmodel;
