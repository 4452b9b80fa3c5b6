//! DDL and keyless writes run on every shard at once. Outside the client's transaction the
//! shards each run the statement in a transaction of their own and commit together through the
//! commit protocol (`multi_txn`), or not at all: a DDL one shard refuses leaves no shard with
//! it. Statements PostgreSQL will not run in a transaction block (VACUUM, CREATE INDEX
//! CONCURRENTLY, …) are then run on each shard on their own, and a failure names the shards
//! that applied it. Inside the client's transaction the statement is simply part of it.
//!
//! The client gets one answer, as from one PostgreSQL: the row counts of the shards' command
//! tags added up, and RETURNING rows from every shard — except for a write to reference tables
//! (`one_copy`), where every shard changed its own copy of the same rows: the first shard's
//! answer is the client's.

use bytes::BytesMut;
use shardgate_wire::backend::{self, CursorPosition};
use shardgate_wire::{frontend, Frame};

use crate::multi_txn::commit_all;
use crate::multi_txn::fanout::{
    rollback_all, run_each, run_everywhere, run_messages, Member, Outcome, TxnError,
};
use crate::scatter::ScatterRequest;
use crate::Shared;

/// PostgreSQL's "cannot run inside a transaction block".
const ACTIVE_SQL_TRANSACTION: &str = "25001";

/// A shard whose connection was lost, and why.
pub(crate) type Lost = (String, String);

/// Runs the request on every member and writes the client's answer (without ReadyForQuery) to
/// `out`. Returns the shard whose connection broke, if one did.
pub(crate) async fn broadcast(
    shared: &Shared,
    members: &mut [Member<'_>],
    request: &ScatterRequest,
    out: &mut BytesMut,
    in_transaction: bool,
    one_copy: bool,
) -> Option<Lost> {
    let sql = match request {
        ScatterRequest::Simple { sql } => sql.clone(),
        ScatterRequest::Extended { sql, .. } => sql.clone(),
    };
    // With Bind parameters every shard gets the client's execution itself (the same text and
    // values: each shard acts on its own rows); without, the text as a simple query.
    let messages = extended_messages(request);
    if in_transaction || members.len() == 1 {
        let outcomes = run_request(members, &sql, messages.as_ref()).await;
        return answer(members, &outcomes, request, out, None, one_copy);
    }
    if let Err(TxnError(e)) = run_everywhere(members, "BEGIN").await {
        rollback_all(members).await;
        out.extend_from_slice(&e);
        return None;
    }
    let outcomes = run_request(members, &sql, messages.as_ref()).await;
    let refused_in_block = outcomes.iter().any(|o| {
        matches!(o, Outcome::Refused(e)
            if backend::error_fields(e).is_ok_and(|f| f.code == ACTIVE_SQL_TRANSACTION))
    });
    if refused_in_block {
        rollback_all(members).await;
        let outcomes = run_request(members, &sql, messages.as_ref()).await;
        let applied: Vec<&str> = members
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.ok())
            .map(|(m, _)| m.name.as_str())
            .collect();
        let applied = applied.join(", ");
        return answer(members, &outcomes, request, out, Some(&applied), one_copy);
    }
    if !outcomes.iter().all(Outcome::ok) {
        let lost = answer(members, &outcomes, request, out, None, one_copy);
        rollback_all(members).await;
        return lost;
    }
    let mode = shared.config().sharding.cross_shard_transactions;
    match commit_all(shared, members, mode).await {
        Ok(()) => answer(members, &outcomes, request, out, None, one_copy),
        Err(TxnError(e)) => {
            out.extend_from_slice(&e);
            None
        }
    }
}

/// Runs the statement on every member at once: the client's extended-protocol execution when
/// it has parameters, else the text as a simple query.
async fn run_request(
    members: &mut [Member<'_>],
    sql: &str,
    messages: Option<&BytesMut>,
) -> Vec<Outcome> {
    match messages {
        Some(m) => {
            let runs: Vec<_> = members
                .iter_mut()
                .map(|member| run_messages(member.conn, m))
                .collect();
            crate::scatter::join_all(runs).await
        }
        None => {
            let all: Vec<usize> = (0..members.len()).collect();
            run_each(members, &all, |_| sql.to_owned()).await
        }
    }
}

/// Writes the combined answer, or the first shard's error (`applied`: the shards that kept
/// the statement anyway, for statements run outside a transaction).
fn answer(
    members: &[Member<'_>],
    outcomes: &[Outcome],
    request: &ScatterRequest,
    out: &mut BytesMut,
    applied: Option<&str>,
    one_copy: bool,
) -> Option<Lost> {
    let mut replies: Vec<&[Frame]> = Vec::with_capacity(outcomes.len());
    for (m, o) in members.iter().zip(outcomes) {
        match o {
            Outcome::Done(frames) => replies.push(frames),
            Outcome::Refused(error) => {
                let prefix = match applied {
                    Some(a) if !a.is_empty() => {
                        format!("shard {} (already applied on {a}): ", m.name)
                    }
                    _ => format!("shard {}: ", m.name),
                };
                if backend::write_error_with_prefix(out, error, &prefix, CursorPosition::Keep)
                    .is_err()
                {
                    out.extend_from_slice(error.as_bytes());
                }
                return None;
            }
            Outcome::Lost(e) => return Some((m.name.clone(), e.to_string())),
        }
    }
    let mut forward_parse = true;
    if let ScatterRequest::Extended {
        client_sent_parse,
        client_describe,
        params,
        ..
    } = request
    {
        if !params.is_empty() {
            // The shards ran the client's execution itself: their ParseComplete,
            // BindComplete and descriptions are the answer (ParseComplete only if the client
            // sent the Parse).
            forward_parse = *client_sent_parse;
        } else {
            // The shards ran the text as a simple query: answer the client's messages.
            if *client_sent_parse {
                backend::write_parse_complete(out);
            }
            if *client_describe == Some(b'S') {
                frontend::write_message(out, backend::PARAMETER_DESCRIPTION, |b| {
                    b.extend_from_slice(&[0, 0])
                });
                backend::write_no_data(out);
            }
            backend::write_bind_complete(out);
            if *client_describe == Some(b'P') {
                backend::write_no_data(out);
            }
        }
    }
    if one_copy {
        // Identical copies: one shard's rows and count, not their sum. Copies that answered
        // different counts have drifted apart: say so in the log.
        let tags = |frames: &[Frame]| -> Vec<Frame> {
            frames
                .iter()
                .filter(|f| f.tag() == backend::COMMAND_COMPLETE)
                .cloned()
                .collect()
        };
        if let Some((first, rest)) = replies.split_first() {
            let want = tags(first);
            for (m, other) in members.iter().skip(1).zip(rest) {
                if tags(other)
                    .iter()
                    .map(Frame::body)
                    .ne(want.iter().map(Frame::body))
                {
                    tracing::warn!(shard = %m.name, first = %members[0].name, "a write to a reference table changed a different number of rows on two shards: their copies differ (see `shardgate admin verify references`)");
                }
            }
        }
        replies.truncate(1);
    }
    combine(&replies, forward_parse, out);
    None
}

/// The client's extended-protocol execution as one shard is sent it (Parse, Describe as the
/// client asked, Bind with its values, Execute, Sync); `None` without Bind parameters.
fn extended_messages(request: &ScatterRequest) -> Option<BytesMut> {
    let ScatterRequest::Extended {
        sql,
        param_types,
        param_formats,
        params,
        result_formats,
        client_describe,
        ..
    } = request
    else {
        return None;
    };
    if params.is_empty() {
        return None;
    }
    let mut m = BytesMut::new();
    frontend::write_parse(&mut m, "", sql.as_bytes(), param_types);
    if *client_describe == Some(b'S') {
        frontend::write_describe(&mut m, b'S', "");
    }
    crate::scatter::write_bind(&mut m, param_formats, params, result_formats);
    if *client_describe == Some(b'P') {
        frontend::write_describe(&mut m, b'P', "");
    }
    crate::scatter::write_execute(&mut m);
    frontend::write_sync(&mut m);
    Some(m)
}

/// One answer from every shard's replies to the same statements: per statement, the first
/// shard's row description and notices, every shard's rows, and the command tag with the row
/// counts added up.
fn combine(replies: &[&[Frame]], forward_parse: bool, out: &mut BytesMut) {
    let split = |frames: &[Frame]| -> Vec<Vec<Frame>> {
        let mut groups = vec![Vec::new()];
        for f in frames
            .iter()
            .filter(|f| f.tag() != backend::READY_FOR_QUERY)
        {
            let ends = matches!(
                f.tag(),
                backend::COMMAND_COMPLETE | backend::EMPTY_QUERY_RESPONSE
            );
            if let Some(g) = groups.last_mut() {
                g.push(f.clone());
            }
            if ends {
                groups.push(Vec::new());
            }
        }
        groups
    };
    let shards: Vec<Vec<Vec<Frame>>> = replies.iter().map(|r| split(r)).collect();
    let Some(first) = shards.first() else {
        return;
    };
    if shards.iter().any(|s| s.len() != first.len()) {
        // Not the same statements everywhere (cannot happen for one text): the first's.
        for group in first {
            for f in group {
                out.extend_from_slice(f.as_bytes());
            }
        }
        return;
    }
    for (k, group) in first.iter().enumerate() {
        for f in group.iter().filter(|f| {
            !matches!(f.tag(), backend::DATA_ROW | backend::COMMAND_COMPLETE)
                && (forward_parse || f.tag() != backend::PARSE_COMPLETE)
        }) {
            out.extend_from_slice(f.as_bytes());
        }
        for shard in &shards {
            for f in shard[k].iter().filter(|f| f.tag() == backend::DATA_ROW) {
                out.extend_from_slice(f.as_bytes());
            }
        }
        if let Some(tag) = group.iter().find(|f| f.tag() == backend::COMMAND_COMPLETE) {
            let tags: Vec<&Frame> = shards
                .iter()
                .filter_map(|s| s[k].iter().find(|f| f.tag() == backend::COMMAND_COMPLETE))
                .collect();
            match summed_tag(&tags) {
                Some(text) => backend::write_command_complete(out, &text),
                None => out.extend_from_slice(tag.as_bytes()),
            }
        }
    }
}

/// `UPDATE 3` + `UPDATE 4` = `UPDATE 7` (`INSERT 0 n` keeps its 0); `None` for tags without
/// a count or that differ in their words.
fn summed_tag(tags: &[&Frame]) -> Option<String> {
    let texts: Vec<&str> = tags
        .iter()
        .map(|f| {
            std::str::from_utf8(f.body())
                .ok()
                .map(|t| t.trim_end_matches('\0'))
        })
        .collect::<Option<_>>()?;
    let (prefix, _) = texts.first()?.rsplit_once(' ')?;
    let mut total: u64 = 0;
    for t in &texts {
        let (p, n) = t.rsplit_once(' ')?;
        if p != prefix {
            return None;
        }
        total = total.checked_add(n.parse::<u64>().ok()?)?;
    }
    Some(format!("{prefix} {total}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(text: &str) -> Frame {
        let mut out = BytesMut::new();
        backend::write_command_complete(&mut out, text);
        Frame::from_bytes(out.freeze())
    }

    #[test]
    fn counts_add_up() {
        let (a, b) = (tag("UPDATE 3"), tag("UPDATE 4"));
        assert_eq!(summed_tag(&[&a, &b]).as_deref(), Some("UPDATE 7"));
        let (a, b) = (tag("INSERT 0 1"), tag("INSERT 0 2"));
        assert_eq!(summed_tag(&[&a, &b]).as_deref(), Some("INSERT 0 3"));
        let (a, b) = (tag("CREATE TABLE"), tag("CREATE TABLE"));
        assert_eq!(summed_tag(&[&a, &b]), None);
    }
}
