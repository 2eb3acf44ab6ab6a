//! A read-model store wrapper that lets the harness see what a rebuild writes.
//!
//! [`Observed`] forwards every call to the store it wraps, and on `commit` it adds the time the
//! commit took to a shared total, keeps the window's rows as the bytes a raw sled insert would
//! write (when recording), or drops the window (when discarding, to time parse + fold alone).

use recast::project::{ColumnType, ProjectionKind};
use recast::readmodel::{
    DeadLetter, PartCheckpoint, PartId, ProjectionMeta, ReadModelError, ReadModelStore, Window,
};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What an [`Observed`] store does with windows.
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// Forward and time them.
    Forward,
    /// Forward them and keep their rows.
    Record,
    /// Drop them.
    Discard,
}

/// The rows of one window, as the (key, JSON) bytes a raw sled insert writes.
pub type WindowRows = Vec<(Vec<u8>, Vec<u8>)>;

/// What every handle of one observed store shares.
#[derive(Default)]
pub struct Seen {
    /// Seconds spent in `commit` of the wrapped store.
    pub commit_seconds: Mutex<f64>,
    /// The rows of each window, as (key, JSON) bytes.
    pub windows: Mutex<Vec<WindowRows>>,
}

/// The wrapper.
pub struct Observed {
    inner: Box<dyn ReadModelStore>,
    mode: Mode,
    seen: Arc<Seen>,
}

impl Observed {
    pub fn new(inner: Box<dyn ReadModelStore>, mode: Mode) -> (Self, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let store = Observed {
            inner,
            mode,
            seen: seen.clone(),
        };
        (store, seen)
    }
}

impl ReadModelStore for Observed {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn fork(&self) -> Result<Box<dyn ReadModelStore>, ReadModelError> {
        Ok(Box::new(Observed {
            inner: self.inner.fork()?,
            mode: self.mode,
            seen: self.seen.clone(),
        }))
    }
    fn new_row_bytes(&self) -> usize {
        self.inner.new_row_bytes()
    }
    fn row_write_bytes(&self) -> usize {
        self.inner.row_write_bytes()
    }
    fn projections(&self) -> Result<Vec<String>, ReadModelError> {
        self.inner.projections()
    }
    fn meta(&self, name: &str) -> Result<ProjectionMeta, ReadModelError> {
        self.inner.meta(name)
    }
    fn save_meta(&self, name: &str, meta: &ProjectionMeta) -> Result<(), ReadModelError> {
        self.inner.save_meta(name, meta)
    }
    fn prepare_generation(
        &self,
        name: &str,
        generation: u32,
        kind: ProjectionKind,
        columns: &[(String, ColumnType)],
    ) -> Result<(), ReadModelError> {
        self.inner
            .prepare_generation(name, generation, kind, columns)
    }
    fn lock_projection(&self, name: &str) -> Result<(), ReadModelError> {
        self.inner.lock_projection(name)
    }
    fn unlock_projection(&self, name: &str) -> Result<(), ReadModelError> {
        self.inner.unlock_projection(name)
    }
    fn wait_for_projection(&self, name: &str) -> Result<(), ReadModelError> {
        self.inner.wait_for_projection(name)
    }
    fn checkpoint(&self, part: &PartId) -> Result<Option<PartCheckpoint>, ReadModelError> {
        self.inner.checkpoint(part)
    }
    fn checkpoints(
        &self,
        name: &str,
        generation: u32,
    ) -> Result<Vec<PartCheckpoint>, ReadModelError> {
        self.inner.checkpoints(name, generation)
    }
    fn row(&self, name: &str, generation: u32, key: &str) -> Result<Option<Value>, ReadModelError> {
        self.inner.row(name, generation, key)
    }
    fn scan_rows(
        &self,
        name: &str,
        generation: u32,
        visit: &mut dyn FnMut(String, Value) -> bool,
    ) -> Result<(), ReadModelError> {
        self.inner.scan_rows(name, generation, visit)
    }
    fn dead_letters(&self, name: &str, generation: u32) -> Result<Vec<DeadLetter>, ReadModelError> {
        self.inner.dead_letters(name, generation)
    }
    fn commit(&self, window: Window) -> Result<(), ReadModelError> {
        if self.mode == Mode::Discard {
            return Ok(());
        }
        if self.mode == Mode::Record {
            let rows = window
                .rows
                .iter()
                .map(|row| {
                    let key = format!("r{}\0{}\0{}", row.projection, row.generation, row.key);
                    let value = row
                        .value
                        .as_ref()
                        .map_or_else(Vec::new, |v| serde_json::to_vec(v).expect("rows serialize"));
                    (key.into_bytes(), value)
                })
                .collect();
            self.seen.windows.lock().expect("not poisoned").push(rows);
        }
        let started = Instant::now();
        let result = self.inner.commit(window);
        *self.seen.commit_seconds.lock().expect("not poisoned") += started.elapsed().as_secs_f64();
        result
    }
    fn drop_generation(&self, name: &str, generation: u32) -> Result<(), ReadModelError> {
        self.inner.drop_generation(name, generation)
    }
}
