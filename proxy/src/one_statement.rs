//! Batches that run exactly one parameterless statement — a simple Query of one statement, or
//! one `Parse? Bind Describe? Execute Sync` run — and that the proxy answers itself, message
//! by message as the server would: a deferred BEGIN, and transaction control run on several
//! shards.

use shardgate_router::lexer::split_statements;
use shardgate_wire::{backend, frontend, Frame};

use crate::session::Session;

/// How to answer a one-statement batch (see [`Session::one_statement`]).
pub(crate) struct OneStatement {
    /// The statement's text.
    pub(crate) text: String,
    /// The batch's own Parse: (name, text, parameter types), recorded when answered.
    parsed: Option<(String, String, Vec<u32>)>,
}

impl Session {
    /// The batch's one statement, when it is a one-statement batch without parameters.
    pub(crate) fn one_statement(&mut self, batch: &[Frame]) -> Option<OneStatement> {
        if let [query] = batch {
            if query.tag() != frontend::QUERY {
                return None;
            }
            let text = self.sql(frontend::query_text(query).ok()?).into_owned();
            if split_statements(&text).len() != 1 {
                return None;
            }
            return Some(OneStatement { text, parsed: None });
        }
        let (last, body) = batch.split_last()?;
        if last.tag() != frontend::SYNC {
            return None;
        }
        // A statement with parameters (the usual execution) is never one: said by the Bind's
        // count before anything is decoded or copied.
        let bind = body.iter().find(|f| f.tag() == frontend::BIND)?;
        if frontend::bind_value_count(bind).ok()? != 0 {
            return None;
        }
        use frontend::{BIND as B, DESCRIBE as D, EXECUTE as E, PARSE as P};
        let tags: Vec<u8> = body.iter().map(Frame::tag).collect();
        if !matches!(
            tags.as_slice(),
            [B, E] | [B, D, E] | [P, B, E] | [P, B, D, E] | [P, D, B, E]
        ) {
            return None;
        }
        let mut parsed: Option<(String, String, Vec<u32>)> = None;
        let mut text = None;
        for frame in body {
            match frame.tag() {
                frontend::PARSE => {
                    let p = frontend::parse(frame).ok()?;
                    let text = self.sql(p.query).into_owned();
                    parsed = Some((p.name.to_owned(), text, p.param_types.clone()));
                }
                frontend::BIND => {
                    let b = frontend::bind(frame).ok()?;
                    if !b.portal.is_empty() {
                        return None;
                    }
                    text = match &parsed {
                        Some((name, query, _)) if name == b.statement => Some(query.clone()),
                        Some(_) => return None,
                        None if b.statement.is_empty() => {
                            self.routing.unnamed().map(|u| u.0.clone())
                        }
                        None => self
                            .client_state
                            .statements_mut()
                            .get(b.statement)
                            .map(|s| s.query.clone()),
                    };
                }
                frontend::EXECUTE
                    if !frontend::execute(frame).is_ok_and(|(portal, _)| portal.is_empty()) =>
                {
                    return None;
                }
                _ => {}
            }
        }
        Some(OneStatement {
            text: text?,
            parsed,
        })
    }

    /// Answers a one-statement batch with command tag `tag` and ReadyForQuery in the
    /// transaction's current status; the batch's Parse is recorded as the server would.
    pub(crate) fn answer_one_statement(&mut self, batch: &[Frame], stmt: OneStatement, tag: &str) {
        self.answer_statement_messages(batch, stmt, tag);
        self.io.push_ready(self.txn.status());
    }

    /// [`Session::answer_one_statement`] without the ReadyForQuery (more of the batch follows).
    pub(crate) fn answer_statement_messages(
        &mut self,
        batch: &[Frame],
        stmt: OneStatement,
        tag: &str,
    ) {
        if let Some((name, query, types)) = stmt.parsed {
            if name.is_empty() {
                self.routing.set_unnamed(&query, &types);
            } else {
                let context = self.statement_context();
                let global = self.shared.statements.intern(&query, &types, &context);
                self.client_state.statements_mut().insert(name, global);
            }
        }
        for frame in batch {
            match frame.tag() {
                frontend::PARSE => backend::write_parse_complete(&mut self.io.out),
                frontend::BIND => backend::write_bind_complete(&mut self.io.out),
                frontend::DESCRIBE => {
                    if frontend::describe(frame).is_ok_and(|d| d.kind == b'S') {
                        frontend::write_message(
                            &mut self.io.out,
                            backend::PARAMETER_DESCRIPTION,
                            |b| b.extend_from_slice(&[0, 0]),
                        );
                    }
                    backend::write_no_data(&mut self.io.out);
                }
                _ => {}
            }
        }
        backend::write_command_complete(&mut self.io.out, tag);
    }
}
