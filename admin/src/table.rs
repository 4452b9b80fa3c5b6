//! Aligned plain-text tables for the admin CLI, and the tables of shards, pools and replicas.

use crate::control::{PoolInfo, ReplicaInfo, ShardInfo};

/// How a column's cells line up.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Align {
    Left,
    /// Numbers, so their digits line up.
    Right,
}

/// Renders `rows` under `columns` (name, alignment), two spaces between columns, no trailing
/// spaces. Rows shorter than the header are padded with empty cells.
pub fn render(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns
        .iter()
        .map(|(name, _)| name.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = columns.iter().map(|(name, _)| (*name).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, ((_, align), width)) in columns.iter().zip(&widths).enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            let pad = width.saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(crate) fn shards_table(shards: Vec<ShardInfo>) -> String {
    let Some(version) = shards.iter().map(|s| s.topology_version).max() else {
        return "no shards\n".to_owned();
    };
    // Failovers and fences are printed under the table: they are what an operator must act on.
    let mut notes = String::new();
    for s in &shards {
        if let Some(configured) = &s.configured_primary {
            notes.push_str(&format!(
                "shard {}: FAILED OVER: writes go to {}, the shard map names {}; confirm with `shardgate admin shards hosts {} --primary {} …`\n",
                s.name, s.primary, configured, s.name, s.primary
            ));
        }
        for host in &s.fenced {
            notes.push_str(&format!(
                "shard {}: FENCED {host}: a primary that takes no writes (split brain)\n",
                s.name
            ));
        }
    }
    let rows: Vec<Vec<String>> = shards
        .into_iter()
        .map(|s| {
            let share = if s.total_slots == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{:.1}%",
                    100.0 * f64::from(s.slots) / f64::from(s.total_slots)
                )
            };
            vec![
                s.name,
                s.primary,
                yes_no(s.primary_up).to_owned(),
                list_or_dash(&s.replicas),
                s.slots.to_string(),
                share,
            ]
        })
        .collect();
    let columns = [
        ("NAME", Align::Left),
        ("PRIMARY", Align::Left),
        ("UP", Align::Left),
        ("REPLICAS", Align::Left),
        ("SLOTS", Align::Right),
        ("SHARE", Align::Right),
    ];
    format!(
        "topology version {version}\n{}{notes}",
        render(&columns, &rows)
    )
}

pub(crate) fn pools_table(pools: Vec<PoolInfo>) -> String {
    if pools.is_empty() {
        return "no pools\n".to_owned();
    }
    let rows: Vec<Vec<String>> = pools
        .into_iter()
        .map(|p| {
            vec![
                p.shard,
                p.role,
                p.host,
                p.database,
                p.user,
                p.size.to_string(),
                p.min_size.to_string(),
                p.max_size.to_string(),
                p.connections.to_string(),
                p.idle.to_string(),
                p.in_use.to_string(),
                p.waiting.to_string(),
            ]
        })
        .collect();
    let columns = [
        ("SHARD", Align::Left),
        ("ROLE", Align::Left),
        ("HOST", Align::Left),
        ("DB", Align::Left),
        ("USER", Align::Left),
        ("SIZE", Align::Right),
        ("MIN", Align::Right),
        ("MAX", Align::Right),
        ("OPEN", Align::Right),
        ("IDLE", Align::Right),
        ("IN_USE", Align::Right),
        ("WAITING", Align::Right),
    ];
    render(&columns, &rows)
}

/// `shardgate admin verify references`: one row per reference table, database and shard, then
/// the verdict.
pub(crate) fn references_table(report: crate::rebalance::ReferencesReport) -> String {
    let mut out = String::new();
    if report.tables.is_empty() && report.warnings.is_empty() {
        out.push_str("no reference tables (sharding.reference_tables)\n");
        return out;
    }
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .flat_map(|t| {
            t.copies.iter().map(move |c| {
                vec![
                    t.table.clone(),
                    t.database.clone(),
                    c.shard.clone(),
                    c.rows.map_or("-".into(), |r| r.to_string()),
                    c.checksum.clone().unwrap_or_else(|| "-".into()),
                    if t.drift { "DRIFT" } else { "ok" }.to_owned(),
                    c.error.clone().unwrap_or_default(),
                ]
            })
        })
        .collect();
    let columns = [
        ("TABLE", Align::Left),
        ("DATABASE", Align::Left),
        ("SHARD", Align::Left),
        ("ROWS", Align::Right),
        ("CHECKSUM", Align::Right),
        ("STATE", Align::Left),
        ("ERROR", Align::Left),
    ];
    out.push_str(&render(&columns, &rows));
    for w in &report.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out.push_str(if report.drift {
        "reference tables differ between shards\n"
    } else {
        "reference tables are identical on every shard\n"
    });
    out
}

/// `shardgate admin sequences`: one row per sequence and shard, then the warnings.
pub(crate) fn sequences_table(report: crate::rebalance::SequencesReport) -> String {
    let mut out = if report.lanes == 0 {
        "id lanes are off (sharding.id_lanes = 0)\n".to_owned()
    } else {
        format!("{} id lanes\n", report.lanes)
    };
    if report.sequences.is_empty() {
        out.push_str("no sequences on sharded tables\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .sequences
            .iter()
            .map(|s| {
                vec![
                    s.shard.clone(),
                    s.database.clone(),
                    format!("{}.{}", s.table, s.column),
                    s.sequence.clone(),
                    s.data_type.clone(),
                    s.lane.map_or("-".into(), |l| l.to_string()),
                    s.increment.to_string(),
                    s.last_value.map_or("-".into(), |v| v.to_string()),
                    if s.on_lane { "yes" } else { "NO" }.to_owned(),
                ]
            })
            .collect();
        let columns = [
            ("SHARD", Align::Left),
            ("DATABASE", Align::Left),
            ("COLUMN", Align::Left),
            ("SEQUENCE", Align::Left),
            ("TYPE", Align::Left),
            ("LANE", Align::Right),
            ("INCREMENT", Align::Right),
            ("LAST_VALUE", Align::Right),
            ("ON_LANE", Align::Left),
        ];
        out.push_str(&render(&columns, &rows));
    }
    for w in &report.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

pub(crate) fn replicas_table(replicas: Vec<ReplicaInfo>) -> String {
    if replicas.is_empty() {
        return "no replicas\n".to_owned();
    }
    let rows: Vec<Vec<String>> = replicas
        .into_iter()
        .map(|r| {
            vec![
                r.shard,
                r.host,
                r.state,
                yes_no(r.in_rotation).to_owned(),
                r.lag_seconds.map_or("-".into(), |s| format!("{s:.3}s")),
                r.lag_bytes.map_or("-".into(), |b| b.to_string()),
                r.replay_lsn.unwrap_or_else(|| "-".into()),
                r.queries.to_string(),
                r.outstanding.to_string(),
                r.banned_ms
                    .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
            ]
        })
        .collect();
    let columns = [
        ("SHARD", Align::Left),
        ("HOST", Align::Left),
        ("STATE", Align::Left),
        ("READS", Align::Left),
        ("LAG", Align::Right),
        ("LAG_BYTES", Align::Right),
        ("REPLAY_LSN", Align::Left),
        ("QUERIES", Align::Right),
        ("RUNNING", Align::Right),
        ("BANNED_FOR", Align::Right),
    ];
    render(&columns, &rows)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let text = render(
            &[
                ("NAME", Align::Left),
                ("SIZE", Align::Right),
                ("HOST", Align::Left),
            ],
            &[
                vec!["s1".into(), "5".into(), "127.0.0.1:5433".into()],
                vec!["shard_two".into(), "120".into(), "h".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME       SIZE  HOST\n\
             s1            5  127.0.0.1:5433\n\
             shard_two   120  h\n"
        );
    }

    #[test]
    fn short_rows_and_empty_tables() {
        assert_eq!(
            render(&[("A", Align::Left), ("B", Align::Right)], &[]),
            "A  B\n"
        );
        let text = render(
            &[("A", Align::Left), ("B", Align::Right)],
            &[vec!["long".into()]],
        );
        assert_eq!(text, "A     B\nlong\n");
    }
}
