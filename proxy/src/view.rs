//! A session's copy of the shared config and shard map, taken again only when either was
//! replaced. Each read of `Shared::config` or `Shared::topo` is an `arc_swap` load (~80
//! instructions, most of them touching the thread's debt list); a transaction read them 17
//! times. The view checks one counter instead and reloads both only when it moved.
//!
//! A session refreshes its view at the start of each batch, at each client message it relays
//! and at each ReadyForQuery, so what it reads is never older than the message being handled.
//! What must see a change the moment it is published (the map version a transaction was
//! routed by, compared at each statement) keeps reading `Shared` directly.
//!
//! An idle session keeps the config and map of its last batch alive until its next one: one
//! old version per idle session at most, in exchange for no reference count touched per
//! transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shardgate_config::Config;

use crate::topology::Topo;
use crate::Shared;

/// Counts replacements of the shared config or map (`Shared::set_config`, `set_topo`).
#[derive(Default)]
pub(crate) struct ViewGeneration(AtomicU64);

impl ViewGeneration {
    /// After a store: views taken before it reload at their next refresh.
    pub(crate) fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

pub(crate) struct View {
    generation: u64,
    config: Arc<Config>,
    topo: Arc<Topo>,
}

impl View {
    pub(crate) fn new(shared: &Shared) -> View {
        // The counter first: a store after these loads makes the next refresh reload.
        let generation = shared.view_generation.current();
        View {
            generation,
            config: shared.config_arc(),
            topo: shared.topo_arc(),
        }
    }

    /// Reloads the config and map if either was replaced since; one atomic load otherwise.
    pub(crate) fn refresh(&mut self, shared: &Shared) {
        if shared.view_generation.current() != self.generation {
            *self = View::new(shared);
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    pub(crate) fn topo(&self) -> &Topo {
        &self.topo
    }
}
