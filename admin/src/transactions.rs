//! `shardgate admin transactions`: the in-doubt two-phase transactions and the stored commit
//! decisions, and what a recovery round did (`--resolve`).

use crate::control::{RecoveryReport, ShardProblem, TransactionsReport};
use crate::table::{render, Align};

/// The in-doubt transactions, then the stored decisions, then the shards that did not answer.
/// `now_ms` dates the decisions.
pub(crate) fn transactions_table(report: TransactionsReport, now_ms: u64) -> String {
    let mut out = format!("proxy {}\n", report.proxy);
    if report.in_doubt.is_empty() {
        out.push_str("no in-doubt transactions\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .in_doubt
            .into_iter()
            .map(|t| {
                vec![
                    t.shard,
                    t.gid,
                    t.database,
                    t.owner,
                    format!("{:.1}s", t.age_seconds),
                    t.decision,
                    if t.in_flight { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        let columns = [
            ("SHARD", Align::Left),
            ("GID", Align::Left),
            ("DATABASE", Align::Left),
            ("OWNER", Align::Left),
            ("AGE", Align::Right),
            ("DECISION", Align::Left),
            ("IN_FLIGHT", Align::Left),
        ];
        out.push_str(&render(&columns, &rows));
    }
    if let Some(e) = &report.store_error {
        out.push_str(&format!(
            "warning: the commit decisions cannot be read: {e}\n"
        ));
    }
    if report.decisions.is_empty() {
        out.push_str("no commit decisions stored\n");
    } else {
        out.push_str("commit decisions stored:\n");
        let rows: Vec<Vec<String>> = report
            .decisions
            .into_iter()
            .map(|d| {
                let age = now_ms.saturating_sub(d.decided_unix_ms) as f64 / 1000.0;
                vec![
                    d.proxy,
                    d.txid.to_string(),
                    d.participants.join(","),
                    format!("{age:.1}s"),
                ]
            })
            .collect();
        let columns = [
            ("PROXY", Align::Left),
            ("TXID", Align::Right),
            ("PARTICIPANTS", Align::Left),
            ("AGE", Align::Right),
        ];
        out.push_str(&render(&columns, &rows));
    }
    out.push_str(&unreachable_lines(&report.unreachable));
    out
}

/// What a recovery round did, one line per kind of outcome.
pub(crate) fn recovery_text(report: RecoveryReport) -> String {
    let mut out = String::new();
    let list = |label: &str, gids: &[String]| {
        if gids.is_empty() {
            String::new()
        } else {
            format!("{label} ({}): {}\n", gids.len(), gids.join(", "))
        }
    };
    out.push_str(&list("committed", &report.committed));
    out.push_str(&list("rolled back", &report.rolled_back));
    for left in &report.left {
        out.push_str(&format!(
            "left alone: {} on {}: {}\n",
            left.gid, left.shard, left.reason
        ));
    }
    out.push_str(&list("decisions forgotten", &report.forgotten));
    out.push_str(&unreachable_lines(&report.unreachable));
    for e in &report.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    if out.is_empty() {
        out.push_str("nothing in doubt\n");
    }
    out
}

fn unreachable_lines(shards: &[ShardProblem]) -> String {
    shards
        .iter()
        .map(|p| format!("warning: shard {} did not answer: {}\n", p.shard, p.error))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{InDoubtTransaction, LeftTransaction};
    use shardgate_topology::CommitDecision;

    #[test]
    fn the_table_shows_transactions_and_decisions() {
        let report = TransactionsReport {
            proxy: "host-6432".into(),
            in_doubt: vec![InDoubtTransaction {
                gid: "sg_host-6432_17_s1".into(),
                shard: "s1".into(),
                database: "app".into(),
                owner: "app".into(),
                proxy: "host-6432".into(),
                txid: 17,
                age_seconds: 3.25,
                decision: "commit".into(),
                in_flight: false,
            }],
            decisions: vec![CommitDecision {
                proxy: "host-6432".into(),
                txid: 17,
                participants: vec!["s0".into(), "s1".into()],
                decided_unix_ms: 10_000,
            }],
            unreachable: vec![ShardProblem {
                shard: "s2".into(),
                error: "timed out".into(),
            }],
            store_error: None,
        };
        assert_eq!(
            transactions_table(report, 12_500),
            "proxy host-6432\n\
             SHARD  GID                 DATABASE  OWNER   AGE  DECISION  IN_FLIGHT\n\
             s1     sg_host-6432_17_s1  app       app    3.2s  commit    no\n\
             commit decisions stored:\n\
             PROXY      TXID  PARTICIPANTS   AGE\n\
             host-6432    17  s0,s1         2.5s\n\
             warning: shard s2 did not answer: timed out\n"
        );
    }

    #[test]
    fn nothing_in_doubt_says_so() {
        let report = TransactionsReport {
            proxy: "p".into(),
            in_doubt: vec![],
            decisions: vec![],
            unreachable: vec![],
            store_error: Some("down".into()),
        };
        assert_eq!(
            transactions_table(report, 0),
            "proxy p\nno in-doubt transactions\n\
             warning: the commit decisions cannot be read: down\nno commit decisions stored\n"
        );
        assert_eq!(
            recovery_text(RecoveryReport::default()),
            "nothing in doubt\n"
        );
        let report = RecoveryReport {
            committed: vec!["sg_p_1_s0".into(), "sg_p_1_s1".into()],
            left: vec![LeftTransaction {
                gid: "sg_q_2_s0".into(),
                shard: "s0".into(),
                reason: "its proxy is alive".into(),
            }],
            ..RecoveryReport::default()
        };
        assert_eq!(
            recovery_text(report),
            "committed (2): sg_p_1_s0, sg_p_1_s1\n\
             left alone: sg_q_2_s0 on s0: its proxy is alive\n"
        );
    }
}
