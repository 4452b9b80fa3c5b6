//! Following a failover: which host of a shard takes writes.
//!
//! Roles are discovered, not assumed: every check reads `pg_is_in_recovery()` and the
//! host's timeline (a primary's from its WAL file name, a standby's from
//! `pg_stat_wal_receiver`, which needs `pg_read_all_stats`). The configured primary is the
//! shard's writer until it is unreachable or in recovery while another host of the shard is a
//! primary on a *later* timeline than the writer had (a promotion of one of its standbys moves
//! to the next timeline). Then that host becomes the writer at once (the highest timeline,
//! then the furthest WAL position; two promoted hosts on one timeline are ambiguous and nothing
//! moves). Every other host that answers as a primary is fenced: no writes go to it, with a
//! loud log line, until an operator names the hosts again (a new hosts list for the shard,
//! through `PUT /api/v1/shards/{name}/hosts` or a reload, resets this state: see
//! [`crate::Health::from_config_after`]).
//!
//! After a failover a standby serves reads only while it follows the writer's timeline; one
//! whose timeline cannot be read leaves the rotation until the hosts are named again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};

use crate::health::{HostHealth, ShardHealth, WalHistory, PRIMARY, STANDBY};

/// One host's answer to a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    pub in_recovery: bool,
    /// 0: unknown.
    pub timeline: u32,
    /// Flush position of a primary, replay position of a standby.
    pub lsn: u64,
}

impl HostHealth {
    /// What the last check found the server to be.
    pub(crate) fn report_role(&self, in_recovery: bool, timeline: u32) {
        let role = if in_recovery { STANDBY } else { PRIMARY };
        self.discovered.store(role, Ordering::Relaxed);
        self.timeline.store(timeline, Ordering::Relaxed);
    }

    /// The host's timeline at its last check (0: unknown).
    pub fn timeline(&self) -> u32 {
        self.timeline.load(Ordering::Relaxed)
    }

    /// A primary that is not its shard's writer.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    fn fence(&self, writer: &HostHealth, writer_timeline: u32, timeline: u32) {
        if !self.fenced.swap(true, Ordering::Relaxed) {
            // Out of every rotation, without a rotation log line: the error says it all.
            self.in_rotation.store(false, Ordering::Relaxed);
            error!(shard = %self.shard, host = %self.host, timeline, writer = %writer.host,
                writer_timeline,
                "SPLIT BRAIN: this host of the shard answers as a primary but is not the shard's \
                 writer; it is FENCED: no writes go to it until an operator names it the primary \
                 (PUT /api/v1/shards/{{name}}/hosts, or [[shards]] and a reload)");
        }
    }

    fn unfence(&self, why: &str) {
        if self.fenced.swap(false, Ordering::Relaxed) {
            info!(shard = %self.shard, host = %self.host, reason = why, "host no longer fenced");
        }
    }
}

impl ShardHealth {
    /// Every host: the configured primary first, then the replicas (the order of
    /// `writer_index` and of the observations `follow_writer` takes).
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<HostHealth>> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// The writer's position in [`ShardHealth::hosts`].
    pub fn writer_index(&self) -> usize {
        self.writer.load(Ordering::Relaxed)
    }

    /// The host that takes the shard's writes.
    pub fn writer(&self) -> &Arc<HostHealth> {
        match self.writer_index() {
            0 => &self.primary,
            i => self.replicas.get(i - 1).unwrap_or(&self.primary),
        }
    }

    /// The writer's timeline when last seen as a primary.
    pub fn writer_timeline(&self) -> Option<u32> {
        Some(self.writer_timeline.load(Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// Failovers this state followed.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// After a round of checks (`seen[i]`: the answer of host `i` of [`ShardHealth::hosts`],
    /// `None` when it failed or was not checked): records the writer's WAL position, moves
    /// writes to a promoted host when the writer is gone, fences the other primaries.
    pub fn follow_writer(&self, seen: &[Option<Observed>]) {
        let hosts: Vec<&Arc<HostHealth>> = self.hosts().collect();
        let current = self.writer_index();
        match seen.get(current).copied().flatten() {
            Some(o) if !o.in_recovery => {
                if o.timeline != 0 {
                    self.writer_timeline.store(o.timeline, Ordering::Relaxed);
                }
                self.record_primary_lsn(o.lsn);
            }
            Some(_) => self.fail_over(&hosts, seen, current, "in recovery"),
            None => self.fail_over(&hosts, seen, current, "unreachable"),
        }
        let writer_index = self.writer_index();
        let writer = hosts[writer_index.min(hosts.len() - 1)];
        let writer_timeline = self.writer_timeline.load(Ordering::Relaxed);
        for (i, host) in hosts.iter().enumerate() {
            if i == writer_index {
                host.unfence("it is the shard's writer");
                continue;
            }
            match seen.get(i).copied().flatten() {
                Some(o) if !o.in_recovery => host.fence(writer, writer_timeline, o.timeline),
                Some(_) => host.unfence("it is a standby now"),
                None => {}
            }
        }
    }

    /// The writer (host `current`) is `why`: a host that is a primary on a later timeline
    /// than the writer's takes over.
    fn fail_over(
        &self,
        hosts: &[&Arc<HostHealth>],
        seen: &[Option<Observed>],
        current: usize,
        why: &str,
    ) {
        let known = self.writer_timeline.load(Ordering::Relaxed);
        let candidates: Vec<(usize, Observed)> = seen
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != current && *i < hosts.len())
            .filter_map(|(i, o)| o.map(|o| (i, o)))
            .filter(|(_, o)| !o.in_recovery && (known == 0 || o.timeline > known))
            .collect();
        let Some(&(to, best)) = candidates.iter().max_by_key(|(_, o)| (o.timeline, o.lsn)) else {
            return;
        };
        if candidates
            .iter()
            .filter(|(_, o)| o.timeline == best.timeline)
            .count()
            > 1
        {
            if !self.ambiguous_logged.swap(true, Ordering::Relaxed) {
                error!(shard = %self.name, timeline = best.timeline, writer = %hosts[current].host,
                    "the shard's writer is {why} and several of its hosts are primaries on the same \
                     timeline: writes stay where they are until an operator names the primary");
            }
            return;
        }
        self.ambiguous_logged.store(false, Ordering::Relaxed);
        let (from, to_host) = (hosts[current], hosts[to]);
        self.writer.store(to, Ordering::Relaxed);
        self.writer_timeline.store(best.timeline, Ordering::Relaxed);
        self.failovers.fetch_add(1, Ordering::Relaxed);
        {
            // Lag is measured against the new writer's positions from now on.
            let mut history = self.wal_history.lock().unwrap_or_else(|e| e.into_inner());
            *history = WalHistory::default();
            history.record(Instant::now(), best.lsn);
        }
        to_host.set_rotation(false, "promoted: it takes the shard's writes");
        warn!(shard = %self.name, from = %from.host, to = %to_host.host, timeline = best.timeline,
            previous_timeline = known, reason = why,
            "FAILOVER: the shard's writer is {why}; writes move to a promoted host");
        metrics::counter!("shardgate_failovers_total", "shard" => self.name.clone()).increment(1);
    }

    /// Whether a standby on `timeline` (0: unknown) may serve reads: it follows the writer.
    pub fn follows_writer(&self, timeline: u32) -> Result<(), &'static str> {
        let writer = self.writer_timeline.load(Ordering::Relaxed);
        if timeline != 0 && writer != 0 && timeline != writer {
            return Err("follows another timeline than the shard's writer");
        }
        if timeline == 0 && self.writer_index() != 0 {
            return Err(
                "its timeline is unknown since the failover (grant pg_read_all_stats to \
                 replicas.monitor_user, or name the shard's hosts again)",
            );
        }
        Ok(())
    }

    /// Keeps what `old` learnt (writer, fences, timelines) when it has the same hosts.
    pub(crate) fn carry_over(&self, old: &ShardHealth) {
        let same_hosts = old.primary.host == self.primary.host
            && old.replicas.len() == self.replicas.len()
            && old
                .replicas
                .iter()
                .zip(&self.replicas)
                .all(|(a, b)| a.host == b.host);
        if !same_hosts {
            if old.writer_index() != 0 || old.hosts().any(|h| h.is_fenced()) {
                info!(shard = %self.name, primary = %self.primary.host,
                    "the shard's hosts were named again: the failover state is reset, the named primary takes writes");
            }
            return;
        }
        self.writer.store(old.writer_index(), Ordering::Relaxed);
        self.writer_timeline.store(
            old.writer_timeline.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.failovers.store(old.failovers(), Ordering::Relaxed);
        for (new, old) in self.hosts().zip(old.hosts()) {
            new.discovered
                .store(old.discovered.load(Ordering::Relaxed), Ordering::Relaxed);
            new.timeline.store(old.timeline(), Ordering::Relaxed);
            new.fenced.store(old.is_fenced(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostChoice;
    use shardgate_config::Host;

    fn shard() -> ShardHealth {
        let host = |port| Host {
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        };
        ShardHealth::new("s0", &host(1), &[host(2), host(3)])
    }

    fn primary(timeline: u32, lsn: u64) -> Option<Observed> {
        Some(Observed {
            in_recovery: false,
            timeline,
            lsn,
        })
    }

    fn standby(timeline: u32, lsn: u64) -> Option<Observed> {
        Some(Observed {
            in_recovery: true,
            timeline,
            lsn,
        })
    }

    #[test]
    fn a_promoted_replica_takes_writes_once_the_primary_is_gone() {
        let s = shard();
        s.follow_writer(&[primary(1, 100), standby(1, 90), standby(1, 90)]);
        assert_eq!(s.writer_index(), 0);
        // Promoted while the primary still answers: fenced, writes stay.
        s.follow_writer(&[primary(1, 120), primary(2, 100), standby(1, 110)]);
        assert_eq!(s.writer_index(), 0);
        assert!(s.replicas[0].is_fenced());
        // The primary is gone: the promoted host takes over.
        s.follow_writer(&[None, primary(2, 130), standby(1, 110)]);
        assert_eq!(s.writer_index(), 1);
        assert_eq!(s.host(HostChoice::Primary).map(|h| h.host.port), Some(2));
        assert!(!s.replicas[0].is_fenced());
        assert_eq!(s.failovers(), 1);
        assert!(s.follows_writer(2).is_ok());
        assert!(s.follows_writer(1).is_err());
        assert!(s.follows_writer(0).is_err(), "unknown after a failover");
        // The old primary comes back as a primary: fenced, writes stay.
        s.follow_writer(&[primary(1, 120), primary(2, 140), standby(2, 140)]);
        assert_eq!(s.writer_index(), 1);
        assert!(s.primary.is_fenced());
        // Rewound into a standby: no longer fenced.
        s.follow_writer(&[standby(2, 140), primary(2, 150), standby(2, 150)]);
        assert!(!s.primary.is_fenced());
    }

    #[test]
    fn no_failover_to_an_older_timeline_or_an_ambiguous_pair() {
        let s = shard();
        s.follow_writer(&[primary(3, 100), standby(3, 90), standby(3, 90)]);
        s.follow_writer(&[None, primary(2, 100), standby(3, 90)]);
        assert_eq!(
            s.writer_index(),
            0,
            "timeline 2 is older than the writer's 3"
        );
        s.follow_writer(&[None, primary(4, 100), primary(4, 120)]);
        assert_eq!(s.writer_index(), 0, "two promotions on one timeline");
        s.follow_writer(&[None, primary(4, 100), primary(5, 90)]);
        assert_eq!(s.writer_index(), 2);
    }

    #[test]
    fn the_state_survives_a_rebuild_with_the_same_hosts_only() {
        let s = shard();
        s.follow_writer(&[primary(1, 100), standby(1, 90), standby(1, 90)]);
        s.follow_writer(&[None, primary(2, 130), standby(1, 110)]);
        s.follow_writer(&[primary(1, 120), primary(2, 140), standby(2, 140)]);
        let same = shard();
        same.carry_over(&s);
        assert_eq!(same.writer_index(), 1);
        assert!(same.primary.is_fenced());
        let host = |port| Host {
            host: "127.0.0.1".into(),
            port,
            ..Default::default()
        };
        let renamed = ShardHealth::new("s0", &host(2), &[host(3), host(1)]);
        renamed.carry_over(&s);
        assert_eq!(renamed.writer_index(), 0);
        assert!(!renamed.hosts().any(|h| h.is_fenced()));
    }
}
