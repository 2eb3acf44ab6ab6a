//! `recast status`: one row per projection, from the read-model store and the definitions.

use recast::project::ProjectionSet;
use recast::readmodel::{ReadModelError, ReadModelStore};
use recast::upcast::Registry;
use serde::Serialize;
use std::collections::BTreeSet;

/// What `status` shows of one projection.
#[derive(Debug, Serialize)]
pub struct StatusRow {
    pub name: String,
    pub live: Option<u32>,
    pub live_version: Option<u32>,
    /// The newest generation after the live one: `N building` or `N ready` (for swap).
    pub next: Option<String>,
    pub position: Option<u64>,
    pub lag: Option<u64>,
    pub rate: f64,
    pub stale: Vec<String>,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub last_error: Option<String>,
}

/// Gathers status rows for every projection the store or the definitions know.
pub fn collect(
    store: &dyn ReadModelStore,
    definitions: Option<&ProjectionSet>,
    registry: Option<&Registry>,
    head: Option<u64>,
) -> Result<Vec<StatusRow>, ReadModelError> {
    let mut names: BTreeSet<String> = store.projections()?.into_iter().collect();
    if let Some(set) = definitions {
        names.extend(set.all().iter().map(|p| p.name().to_string()));
    }
    let mut rows = Vec::new();
    for name in names {
        let meta = store.meta(&name)?;
        let newer = meta
            .generations
            .iter()
            .next_back()
            .filter(|(g, _)| Some(**g) > meta.live);
        let next = newer
            .map(|(g, gen)| format!("{g} {}", if gen.complete { "ready" } else { "building" }));
        let shown = newer.map(|(g, _)| *g).or(meta.live);
        let parts = match shown {
            Some(generation) => store.checkpoints(&name, generation)?,
            None => Vec::new(),
        };
        let position = parts.iter().map(|p| p.position).min().flatten();
        let live = meta.live.and_then(|g| meta.generations.get(&g));
        let mut stale = Vec::new();
        let definition = definitions.and_then(|set| set.get(&name).ok());
        match (live, definition) {
            (Some(live), Some(definition)) if live.definition_checksum != definition.checksum() => {
                stale.push("definition changed".into())
            }
            (Some(_), None) if definitions.is_some() => stale.push("no definition file".into()),
            (None, _) => stale.push("nothing live".into()),
            _ => {}
        }
        if let (Some(live), Some(registry)) = (live, registry) {
            if live.upcaster_checksum != registry.checksum() {
                stale.push("upcasters changed".into());
            }
        }
        rows.push(StatusRow {
            name,
            live: meta.live,
            live_version: live.map(|g| g.definition_version),
            next,
            position,
            lag: head.map(|h| position.map_or(h + 1, |p| h.saturating_sub(p))),
            rate: parts.iter().map(|p| p.rate).sum::<f64>() + 0.0,
            stale,
            skipped: parts.iter().map(|p| p.skipped).sum(),
            dead_lettered: parts.iter().map(|p| p.dead_lettered).sum(),
            last_error: parts.iter().find_map(|p| p.last_error.clone()),
        });
    }
    Ok(rows)
}
