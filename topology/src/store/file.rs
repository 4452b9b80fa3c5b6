//! The file store: one proxy's shard map, job and reported versions in a JSON state file,
//! replaced atomically (temp file in the same directory, fsync, rename) so a crash leaves
//! either the old state or the new one, never half of either.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shardgate_config::Shard;
use tokio::sync::Mutex;

use super::{ProxyVersion, StoreError};
use crate::{Job, ShardMap};

/// What the state file holds.
#[derive(Clone, Serialize, Deserialize)]
struct State {
    shard_map: ShardMap,
    #[serde(default)]
    job: Option<Job>,
    /// A snapshot of the reported versions, for people reading the file; never read back
    /// (reports live in memory: only this proxy reports to a file store).
    #[serde(default)]
    proxies: Vec<ProxyVersion>,
}

pub(super) struct FileStore {
    path: Option<PathBuf>,
    /// The last state read or written. Authoritative when there is no file; otherwise each
    /// operation re-reads the file (someone may have restored or edited it) under this lock,
    /// which also serialises read-modify-write cycles within the process.
    state: Mutex<State>,
    proxies: std::sync::Mutex<HashMap<String, (u64, Instant)>>,
}

impl FileStore {
    pub(super) async fn open(path: Option<PathBuf>, seed: ShardMap) -> Result<Self, StoreError> {
        let mut state = State {
            shard_map: seed,
            job: None,
            proxies: Vec::new(),
        };
        if let Some(path) = &path {
            // Nothing stored yet: version 1 stays in memory until the first change is written,
            // so a proxy whose config directory is read-only (a mounted ConfigMap) still starts.
            if let Some(stored) = read_state(path).await? {
                state = stored;
            }
        }
        Ok(FileStore {
            path,
            state: Mutex::new(state),
            proxies: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub(super) async fn shard_map(&self) -> Result<ShardMap, StoreError> {
        self.read(|s| s.shard_map.clone()).await
    }

    pub(super) async fn job(&self) -> Result<Option<Job>, StoreError> {
        self.read(|s| s.job.clone()).await
    }

    /// Publishes `shards` as `expected + 1` and, with `job`, saves the job in the same
    /// atomic rename. Finding exactly this map at `expected + 1` already (an earlier attempt
    /// landed) is success.
    pub(super) async fn publish(
        &self,
        expected: u64,
        shards: Vec<Shard>,
        job: Option<&Job>,
    ) -> Result<ShardMap, StoreError> {
        let current = self.shard_map().await?;
        if current.version == expected + 1 && current.shards == shards {
            return Ok(current);
        }
        self.update(|s| {
            if s.shard_map.version != expected {
                return Err(StoreError::Conflict {
                    expected,
                    found: s.shard_map.version,
                });
            }
            // The lanes change with the shard list, in the same write.
            s.shard_map = ShardMap::new(expected + 1, shards, &s.shard_map.id_lanes);
            if let Some(job) = job {
                let abort = s
                    .job
                    .as_ref()
                    .is_some_and(|old| old.id == job.id && old.abort_requested);
                let mut job = job.clone();
                job.abort_requested |= abort;
                s.job = Some(job);
            }
            Ok(s.shard_map.clone())
        })
        .await
    }

    pub(super) async fn try_start_job(&self, job: &Job) -> Result<(), StoreError> {
        self.update(|s| {
            if let Some(running) = &s.job {
                if !running.phase.is_terminal() {
                    return Err(StoreError::Busy(Box::new(running.clone())));
                }
            }
            s.job = Some(job.clone());
            Ok(())
        })
        .await
    }

    pub(super) async fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        self.update(|s| {
            // An abort requested since the runner last read the job stays requested.
            let abort = !job.phase.is_terminal()
                && s.job
                    .as_ref()
                    .is_some_and(|old| old.id == job.id && old.abort_requested);
            let mut job = job.clone();
            job.abort_requested |= abort;
            s.job = Some(job);
            Ok(())
        })
        .await
    }

    pub(super) async fn request_abort(&self) -> Result<Option<Job>, StoreError> {
        self.update(|s| {
            if let Some(job) = &mut s.job {
                if !job.phase.is_terminal() {
                    job.abort_requested = true;
                }
            }
            Ok(s.job.clone())
        })
        .await
    }

    pub(super) fn report_version(&self, proxy_id: &str, version: u64) {
        let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        proxies.insert(proxy_id.to_string(), (version, Instant::now()));
    }

    pub(super) fn proxies(&self) -> Vec<ProxyVersion> {
        let proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<ProxyVersion> = proxies
            .iter()
            .map(|(id, (version, seen))| ProxyVersion {
                proxy_id: id.clone(),
                version: *version,
                seen_seconds_ago: seen.elapsed().as_secs_f64(),
            })
            .collect();
        list.sort_by(|a, b| a.seen_seconds_ago.total_cmp(&b.seen_seconds_ago));
        list
    }

    /// Re-reads the file (when there is one) into the cached state; a file that disappeared
    /// leaves the cache as it was (the next write recreates it).
    async fn refresh(&self, state: &mut State) -> Result<(), StoreError> {
        if let Some(path) = &self.path {
            if let Some(stored) = read_state(path).await? {
                *state = stored;
            }
        }
        Ok(())
    }

    async fn read<T>(&self, f: impl FnOnce(&State) -> T) -> Result<T, StoreError> {
        let mut state = self.state.lock().await;
        self.refresh(&mut state).await?;
        Ok(f(&state))
    }

    /// Applies `f` to the current state and, if it succeeds, writes the result.
    async fn update<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.state.lock().await;
        self.refresh(&mut state).await?;
        let mut next = state.clone();
        let out = f(&mut next)?;
        if let Some(path) = &self.path {
            next.proxies = self.proxies();
            write_state(path, &next).await?;
        }
        *state = next;
        Ok(out)
    }
}

fn file_error(path: &Path, message: String) -> StoreError {
    StoreError::File {
        path: path.to_path_buf(),
        message,
    }
}

/// Reads and parses the state file; `None` when it does not exist.
async fn read_state(path: &Path) -> Result<Option<State>, StoreError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(file_error(
                path,
                format!("cannot read it ({e}); check its permissions"),
            ))
        }
    };
    let state: Result<State, _> = serde_json::from_slice(&bytes);
    state
        .map(|mut s| {
            // A file written before id lanes existed: deal them now (stable: the same map
            // always gives the same lanes, and the next publish writes them down).
            s.shard_map = s.shard_map.with_lanes();
            Some(s)
        })
        .map_err(|e| {
            file_error(
                path,
                format!(
                    "cannot parse it ({e}); restore it from a backup, or delete it to start again \
                 from the config's [[shards]] as version 1 (only if no rebalance has run)"
                ),
            )
        })
}

/// Writes the state file atomically; the blocking file calls (fsync) run off the runtime.
async fn write_state(path: &Path, state: &State) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| file_error(path, format!("cannot encode the state: {e}")))?;
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_atomically(&owned, &bytes))
        .await
        .map_err(|e| file_error(path, format!("the write task failed: {e}")))?
        .map_err(|e| {
            file_error(
                path,
                format!("cannot write it ({e}); check that its directory exists and is writable"),
            )
        })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A unique temp name, so two stores in one process (tests) never share a temp file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "topology".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the directory is synced; some filesystems
        // refuse to open a directory for that, which is not worth failing the write over.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
