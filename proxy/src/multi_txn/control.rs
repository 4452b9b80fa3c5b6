//! Transaction-control statements as a transaction on several shards must treat them: run on
//! every shard it touched (savepoints, `SET LOCAL`), replayed on shards it joins later, or ended
//! by the commit protocol (COMMIT, ROLLBACK).

use shardgate_router::lexer::leading_names;

/// What a statement does to the transaction, read from its first words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    /// COMMIT / END (`and_chain`: `AND CHAIN`, which keeps a transaction open).
    Commit {
        and_chain: bool,
    },
    /// ROLLBACK / ABORT (not `ROLLBACK TO`).
    Rollback {
        and_chain: bool,
    },
    Savepoint(String),
    Release(String),
    RollbackTo(String),
    /// `SET LOCAL …` or `SET TRANSACTION …`: holds for the rest of the transaction.
    Local,
    /// PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED: the client's own two-phase
    /// commit, which cannot span the proxy's shards.
    ClientTwoPhase,
    /// Not transaction control.
    None,
}

impl Control {
    pub(crate) fn of(sql: &str) -> Control {
        let words = leading_names(sql, 5);
        let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        let chain = || words.iter().any(|w| w == "chain") && !words.iter().any(|w| w == "no");
        match word(0) {
            "commit" | "end" if word(1) == "prepared" => Control::ClientTwoPhase,
            "commit" | "end" => Control::Commit { and_chain: chain() },
            "rollback" | "abort" => {
                let rest: Vec<&str> = words[1..].iter().map(String::as_str).collect();
                let (rest, to) = match rest.as_slice() {
                    ["work" | "transaction", rest @ ..] => (rest, false),
                    rest => (rest, false),
                };
                match rest {
                    ["prepared", ..] => Control::ClientTwoPhase,
                    ["to", "savepoint", name, ..] | ["to", name, ..] if !to => {
                        Control::RollbackTo((*name).to_owned())
                    }
                    _ => Control::Rollback { and_chain: chain() },
                }
            }
            "savepoint" if !word(1).is_empty() => Control::Savepoint(word(1).to_owned()),
            "release" if word(1) == "savepoint" && !word(2).is_empty() => {
                Control::Release(word(2).to_owned())
            }
            "release" if !word(1).is_empty() => Control::Release(word(1).to_owned()),
            "set" if matches!(word(1), "local" | "transaction") => Control::Local,
            "prepare" if word(1) == "transaction" => Control::ClientTwoPhase,
            _ => Control::None,
        }
    }

    /// Whether the statement must run on every shard of a transaction on several shards.
    pub(crate) fn is_control(&self) -> bool {
        !matches!(self, Control::None)
    }
}

/// A savepoint name as SQL: quoted, so the name is exactly the one the client made
/// (`leading_names` lower-cases plain identifiers as PostgreSQL does).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The savepoints open in the transaction, oldest first: replayed on a shard the transaction
/// joins after they were made, so `ROLLBACK TO` works on every shard.
#[derive(Debug, Default)]
pub(crate) struct Savepoints {
    names: Vec<String>,
}

impl Savepoints {
    pub(crate) fn note(&mut self, control: &Control) {
        match control {
            Control::Savepoint(name) => self.names.push(name.clone()),
            Control::Release(name) => {
                if let Some(i) = self.names.iter().rposition(|n| n == name) {
                    self.names.truncate(i);
                }
            }
            Control::RollbackTo(name) => {
                if let Some(i) = self.names.iter().rposition(|n| n == name) {
                    self.names.truncate(i + 1);
                }
            }
            _ => {}
        }
    }

    pub(crate) fn clear(&mut self) {
        self.names.clear();
    }

    /// How many savepoints are open.
    pub(crate) fn depth(&self) -> usize {
        self.names.len()
    }

    /// `SAVEPOINT` statements recreating the open savepoints, in order.
    pub(crate) fn replay(&self) -> impl Iterator<Item = String> + '_ {
        self.names
            .iter()
            .map(|n| format!("SAVEPOINT {}", quote_ident(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transaction_control() {
        assert_eq!(Control::of("COMMIT"), Control::Commit { and_chain: false });
        assert_eq!(
            Control::of("end transaction"),
            Control::Commit { and_chain: false }
        );
        assert_eq!(
            Control::of("commit and chain"),
            Control::Commit { and_chain: true }
        );
        assert_eq!(
            Control::of("commit and no chain"),
            Control::Commit { and_chain: false }
        );
        assert_eq!(
            Control::of("ROLLBACK"),
            Control::Rollback { and_chain: false }
        );
        assert_eq!(
            Control::of("abort work"),
            Control::Rollback { and_chain: false }
        );
        assert_eq!(
            Control::of("SAVEPOINT \"s1_x\""),
            Control::Savepoint("s1_x".into())
        );
        assert_eq!(Control::of("savepoint Sp"), Control::Savepoint("sp".into()));
        assert_eq!(
            Control::of("RELEASE SAVEPOINT sp"),
            Control::Release("sp".into())
        );
        assert_eq!(Control::of("release sp"), Control::Release("sp".into()));
        assert_eq!(
            Control::of("ROLLBACK TO SAVEPOINT sp"),
            Control::RollbackTo("sp".into())
        );
        assert_eq!(
            Control::of("rollback work to sp"),
            Control::RollbackTo("sp".into())
        );
        assert_eq!(
            Control::of("SET LOCAL statement_timeout = 5"),
            Control::Local
        );
        assert_eq!(Control::of("set transaction read only"), Control::Local);
        assert_eq!(
            Control::of("PREPARE TRANSACTION 'x'"),
            Control::ClientTwoPhase
        );
        assert_eq!(Control::of("COMMIT PREPARED 'x'"), Control::ClientTwoPhase);
        assert_eq!(
            Control::of("ROLLBACK PREPARED 'x'"),
            Control::ClientTwoPhase
        );
        assert_eq!(Control::of("SET search_path = a"), Control::None);
        assert_eq!(Control::of("select 1"), Control::None);
        assert_eq!(
            Control::of("/* c */ commit"),
            Control::Commit { and_chain: false }
        );
    }

    #[test]
    fn savepoints_follow_release_and_rollback_to() {
        let mut s = Savepoints::default();
        for sql in ["savepoint a", "savepoint b", "savepoint c", "rollback to b"] {
            s.note(&Control::of(sql));
        }
        assert_eq!(
            s.replay().collect::<Vec<_>>(),
            ["SAVEPOINT \"a\"", "SAVEPOINT \"b\""]
        );
        s.note(&Control::of("release a"));
        assert_eq!(s.replay().count(), 0);
        s.note(&Control::of("savepoint \"Q\"\"x\""));
        assert_eq!(s.replay().collect::<Vec<_>>(), ["SAVEPOINT \"Q\"\"x\""]);
    }
}
