//! Commit decisions of two-phase commits: the record that makes a transaction spanning shards
//! committed. A proxy prepares the transaction on every shard that wrote, records the decision
//! here (durably: this is the commit point), commits the prepared transactions, and forgets
//! the decision once every participant committed. Recovery commits a prepared transaction
//! whose decision is recorded and rolls back one whose decision is not (presumed abort).
//!
//! The file store keeps the decisions in an append-only log next to its state file, one line
//! per record (see [`LogRecord`]); the postgres store in a table.

use serde::{Deserialize, Serialize};

/// A recorded commit decision: transaction `txid` of proxy `proxy` commits on every
/// participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitDecision {
    /// The proxy that decided (the token its gids carry).
    pub proxy: String,
    pub txid: u64,
    /// The shards the transaction was prepared on.
    pub participants: Vec<String>,
    /// When the decision was recorded (milliseconds since the Unix epoch; the metadata
    /// database's clock for the postgres store).
    pub decided_unix_ms: u64,
}

/// One line of the file store's decision log:
/// `C <proxy> <txid> <participant,participant,…> <decided_unix_ms>` or `F <proxy> <txid>`.
/// Names are percent-escaped (`%`, `,`, spaces, control and non-ASCII bytes), so a line always
/// splits into its fields on single spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogRecord {
    Commit(CommitDecision),
    Forget { proxy: String, txid: u64 },
}

impl LogRecord {
    /// The record as one line, with its newline.
    pub(crate) fn encode(&self) -> String {
        match self {
            LogRecord::Commit(d) => {
                let participants: Vec<String> = d.participants.iter().map(|p| escape(p)).collect();
                format!(
                    "C {} {} {} {}\n",
                    escape(&d.proxy),
                    d.txid,
                    participants.join(","),
                    d.decided_unix_ms
                )
            }
            LogRecord::Forget { proxy, txid } => format!("F {} {txid}\n", escape(proxy)),
        }
    }

    /// Parses one line (without its newline); `None` when it is not a whole record.
    pub(crate) fn parse(line: &str) -> Option<LogRecord> {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["C", proxy, txid, participants, ms] => {
                let participants = if participants.is_empty() {
                    Vec::new()
                } else {
                    participants
                        .split(',')
                        .map(unescape)
                        .collect::<Option<Vec<_>>>()?
                };
                Some(LogRecord::Commit(CommitDecision {
                    proxy: unescape(proxy)?,
                    txid: txid.parse().ok()?,
                    participants,
                    decided_unix_ms: ms.parse().ok()?,
                }))
            }
            ["F", proxy, txid] => Some(LogRecord::Forget {
                proxy: unescape(proxy)?,
                txid: txid.parse().ok()?,
            }),
            _ => None,
        }
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b',' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(proxy: &str, participants: &[&str]) -> CommitDecision {
        CommitDecision {
            proxy: proxy.into(),
            txid: 1_733_000_000_123_456,
            participants: participants.iter().map(|p| p.to_string()).collect(),
            decided_unix_ms: 1_733_000_000_123,
        }
    }

    #[test]
    fn records_round_trip() {
        for d in [
            decision("proxy-1", &["s0", "s1"]),
            decision("odd name%, with spaces", &["shard_a", "b,c", "ünï"]),
            decision("", &[]),
        ] {
            let line = LogRecord::Commit(d.clone()).encode();
            assert!(
                line.ends_with('\n') && line.matches('\n').count() == 1,
                "{line}"
            );
            assert_eq!(
                LogRecord::parse(line.trim_end_matches('\n')),
                Some(LogRecord::Commit(d))
            );
        }
        let forget = LogRecord::Forget {
            proxy: "p 1".into(),
            txid: 7,
        };
        assert_eq!(forget.encode(), "F p%201 7\n");
        assert_eq!(LogRecord::parse("F p%201 7"), Some(forget));
        assert_eq!(
            LogRecord::Commit(decision("p", &["s0", "s1"])).encode(),
            "C p 1733000000123456 s0,s1 1733000000123\n"
        );
    }

    #[test]
    fn torn_or_foreign_lines_do_not_parse() {
        for line in [
            "",
            "C p 1733000000123456 s0,s1",
            "C p 17x s0 1",
            "F p",
            "F p 1 extra",
            "X p 1",
            "C p%2 1 s0 1",
        ] {
            assert_eq!(LogRecord::parse(line), None, "{line:?}");
        }
        // A line cut inside its last number still parses: which is why the log's reader takes
        // only lines that ended with their newline.
        assert!(LogRecord::parse("C p 1733000000123456 s0,s1 17330").is_some());
    }
}
