//! The file store: one proxy's shard map, job and reported versions in a JSON state file,
//! replaced atomically (temp file in the same directory, fsync, rename) so a crash leaves
//! either the old state or the new one, never half of either.
//!
//! Commit decisions of two-phase commits do not go through the state file (a rewrite per
//! commit would cost a whole-file write and two fsyncs): they are lines appended to
//! `<state file>.decisions` ([`DecisionLog`]).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use shardgate_config::Shard;
use tokio::sync::Mutex;

use super::{ProxyVersion, StoreError};
use crate::decisions::LogRecord;
use crate::{CommitDecision, Job, ShardMap};

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
    decisions: DecisionLog,
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
        let decisions = DecisionLog::open(path.as_deref()).await?;
        Ok(FileStore {
            path,
            state: Mutex::new(state),
            proxies: std::sync::Mutex::new(HashMap::new()),
            decisions,
        })
    }

    pub(super) fn decisions(&self) -> &DecisionLog {
        &self.decisions
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
        // One clock reading for all, and the order by when each was seen: ages read one after
        // the other could swap two proxies that reported moments apart.
        let now = Instant::now();
        let mut seen: Vec<(&String, &(u64, Instant))> = proxies.iter().collect();
        seen.sort_by_key(|(_, (_, at))| std::cmp::Reverse(*at));
        seen.into_iter()
            .map(|(id, (version, at))| ProxyVersion {
                proxy_id: id.clone(),
                version: *version,
                seen_seconds_ago: now.saturating_duration_since(*at).as_secs_f64(),
            })
            .collect()
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

/// Forgotten records the decision log may hold beyond its live ones before it is compacted,
/// so it stays under about 2 × (live + `COMPACT_MARGIN`) lines.
const COMPACT_MARGIN: usize = 512;

/// The file store's commit decisions: an append-only log of [`LogRecord`] lines in
/// `<state file>.decisions`, replayed at open and compacted (the live records rewritten
/// atomically) once forgotten records outnumber the live ones by [`COMPACT_MARGIN`]. Only this
/// process writes it; what it holds is read once, at open. Without a state file (an embedded
/// proxy) the decisions live in memory only.
pub(super) struct DecisionLog {
    path: Option<PathBuf>,
    /// Serialises appends, their fsyncs and compaction.
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    live: HashMap<(String, u64), CommitDecision>,
    /// Lines in the file that describe no live record (a forgotten decision's two lines).
    dead_lines: usize,
    /// Bytes of whole lines in the file: where a failed append is cut back to.
    len: u64,
    /// Opened by the first append, so a proxy whose config directory is read-only still
    /// starts as long as it records nothing.
    file: Option<Arc<std::fs::File>>,
}

impl DecisionLog {
    async fn open(state_file: Option<&Path>) -> Result<DecisionLog, StoreError> {
        let Some(path) = state_file.map(decisions_path) else {
            return Ok(DecisionLog {
                path: None,
                state: Mutex::new(LogState::default()),
            });
        };
        let owned = path.clone();
        let (state, rewrite) = tokio::task::spawn_blocking(move || replay(&owned))
            .await
            .map_err(|e| file_error(&path, format!("the read task failed: {e}")))??;
        let log = DecisionLog {
            path: Some(path),
            state: Mutex::new(state),
        };
        {
            let mut state = log.state.lock().await;
            if rewrite || state.too_long() {
                log.compact(&mut state).await?;
            }
        }
        Ok(log)
    }

    /// Records a commit decision, durably (written and fsynced) before it returns. Recording
    /// one already recorded does nothing.
    pub(super) async fn record(
        &self,
        proxy: &str,
        txid: u64,
        participants: &[String],
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let key = (proxy.to_owned(), txid);
        if state.live.contains_key(&key) {
            return Ok(());
        }
        let decision = CommitDecision {
            proxy: proxy.to_owned(),
            txid,
            participants: participants.to_vec(),
            decided_unix_ms: crate::now_ms(),
        };
        self.append(&mut state, &LogRecord::Commit(decision.clone()), true)
            .await?;
        state.live.insert(key, decision);
        Ok(())
    }

    pub(super) async fn decided(&self, proxy: &str, txid: u64) -> bool {
        let state = self.state.lock().await;
        state.live.contains_key(&(proxy.to_owned(), txid))
    }

    /// Forgets a decision. Not fsynced: a forget lost in a crash leaves a decision whose
    /// transaction has no prepared participant left, which recovery forgets again.
    pub(super) async fn forget(&self, proxy: &str, txid: u64) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let key = (proxy.to_owned(), txid);
        if !state.live.contains_key(&key) {
            return Ok(());
        }
        let record = LogRecord::Forget {
            proxy: proxy.to_owned(),
            txid,
        };
        self.append(&mut state, &record, false).await?;
        state.live.remove(&key);
        state.dead_lines += 2;
        if state.too_long() {
            // The log stays correct, only longer: the next forget tries again.
            if let Err(e) = self.compact(&mut state).await {
                tracing::warn!(error = %e, "cannot compact the commit decision log");
            }
        }
        Ok(())
    }

    /// Every live decision, oldest first.
    pub(super) async fn all(&self) -> Vec<CommitDecision> {
        let state = self.state.lock().await;
        let mut all: Vec<CommitDecision> = state.live.values().cloned().collect();
        all.sort_by(|a, b| {
            (a.decided_unix_ms, &a.proxy, a.txid).cmp(&(b.decided_unix_ms, &b.proxy, b.txid))
        });
        all
    }

    /// Appends one line (and with `sync`, waits for it to be on disk). A failed append is cut
    /// back off the file, so the next one starts on a fresh line.
    async fn append(
        &self,
        state: &mut LogState,
        record: &LogRecord,
        sync: bool,
    ) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let line = record.encode();
        let file = match &state.file {
            Some(file) => Arc::clone(file),
            None => {
                let owned = path.clone();
                let file = tokio::task::spawn_blocking(move || open_for_append(&owned))
                    .await
                    .map_err(|e| file_error(path, format!("the open task failed: {e}")))?
                    .map_err(|e| {
                        file_error(
                            path,
                            format!(
                                "cannot open it for appending ({e}); check that its directory \
                                 is writable"
                            ),
                        )
                    })?;
                let file = Arc::new(file);
                state.file = Some(Arc::clone(&file));
                file
            }
        };
        let whole = state.len;
        let bytes = line.len() as u64;
        let written = tokio::task::spawn_blocking(move || {
            let mut writer: &std::fs::File = &file;
            let result = writer.write_all(line.as_bytes()).and_then(|()| {
                if sync {
                    file.sync_data()
                } else {
                    Ok(())
                }
            });
            if result.is_err() {
                let _ = file.set_len(whole);
            }
            result
        })
        .await
        .map_err(|e| file_error(path, format!("the write task failed: {e}")))?;
        match written {
            Ok(()) => {
                state.len += bytes;
                Ok(())
            }
            Err(e) => {
                // Reopened by the next append.
                state.file = None;
                Err(file_error(path, format!("cannot append to it: {e}")))
            }
        }
    }

    /// Rewrites the log with the live records only (temp file, fsync, rename, directory
    /// fsync: a crash leaves the old log or the new one).
    async fn compact(&self, state: &mut LogState) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut live: Vec<&CommitDecision> = state.live.values().collect();
        live.sort_by_key(|d| (d.decided_unix_ms, d.txid));
        let text: String = live
            .into_iter()
            .map(|d| LogRecord::Commit(d.clone()).encode())
            .collect();
        let len = text.len() as u64;
        let owned = path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&owned, text.as_bytes()))
            .await
            .map_err(|e| file_error(path, format!("the compaction task failed: {e}")))?
            .map_err(|e| file_error(path, format!("cannot compact it: {e}")))?;
        // The old handle points at the replaced file.
        state.file = None;
        state.len = len;
        state.dead_lines = 0;
        Ok(())
    }
}

impl LogState {
    fn too_long(&self) -> bool {
        self.dead_lines / 2 >= self.live.len() + COMPACT_MARGIN
    }
}

fn decisions_path(state_file: &Path) -> PathBuf {
    let mut name = state_file.as_os_str().to_owned();
    name.push(".decisions");
    PathBuf::from(name)
}

/// Reads the log: its live records, and whether it must be rewritten before the next append
/// (its tail was torn by a crash).
///
/// Every commit record is fsynced before it is acknowledged, and an fsync covers every line
/// before it; so only lines after the last commit record can be damaged. A last line without
/// its newline, or an unreadable line after the last commit record, was never acknowledged
/// (a torn commit) or is a forget (whose loss recovery repairs): both are ignored. An
/// unreadable line before a commit record is corruption, and refused.
fn replay(path: &Path) -> Result<(LogState, bool), StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((LogState::default(), false))
        }
        Err(e) => {
            return Err(file_error(
                path,
                format!("cannot read it ({e}); check its permissions"),
            ))
        }
    };
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut rewrite = whole < bytes.len();
    let mut state = LogState {
        len: whole as u64,
        ..LogState::default()
    };
    let text = &bytes[..whole];
    // `text` ends with a newline (or is empty): the split's last piece is empty, not a line.
    let records: Vec<Option<LogRecord>> = text
        .split(|b| *b == b'\n')
        .take(text.iter().filter(|b| **b == b'\n').count())
        .map(|line| std::str::from_utf8(line).ok().and_then(LogRecord::parse))
        .collect();
    let last_commit = records
        .iter()
        .rposition(|r| matches!(r, Some(LogRecord::Commit(_))));
    for (i, record) in records.into_iter().enumerate() {
        match record {
            Some(LogRecord::Commit(d)) => {
                if state.live.insert((d.proxy.clone(), d.txid), d).is_some() {
                    state.dead_lines += 1;
                }
            }
            Some(LogRecord::Forget { proxy, txid }) => {
                state.dead_lines += if state.live.remove(&(proxy, txid)).is_some() {
                    2
                } else {
                    1
                };
            }
            None if last_commit.is_none_or(|last| i > last) => rewrite = true,
            None => {
                return Err(file_error(
                    path,
                    format!(
                        "line {} is not a commit decision record; restore the file from a \
                         backup, or resolve the prepared transactions by hand \
                         (pg_prepared_xacts on every shard) before deleting it",
                        i + 1
                    ),
                ))
            }
        }
    }
    if rewrite {
        tracing::warn!(path = %path.display(),
            "the commit decision log ends with a torn record (a crash while writing it); ignored");
    }
    Ok((state, rewrite))
}

/// Opens the log for appending, creating it; a new file's directory entry is synced, or a
/// crash could lose the whole file with the records fsynced into it.
fn open_for_append(path: &Path) -> std::io::Result<std::fs::File> {
    let existed = path.exists();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if !existed {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Ok(d) = std::fs::File::open(&dir) {
            d.sync_all()?;
        }
    }
    Ok(file)
}
