//! Splitting a multi-row `INSERT … VALUES (…), (…)` whose rows belong to several shards into
//! one INSERT per shard.
//!
//! The planner records each row's key ([`InsertRowKeys`], from the AST). At split time the keys
//! are resolved (Bind values included), and each shard's statement is cut out of the client's
//! own text: the part before the first row, that shard's rows (in their order, each with the
//! separator that followed it), and the part after the last row (ON CONFLICT, RETURNING,
//! comments) — so casts, literals and comments reach the server byte for byte. The rows are
//! found with the project's lexer in one pass (parentheses at depth 0 after `VALUES`) and must
//! be as many as the AST's; parameters are renumbered `$1…` by first use, also by tokens.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

use shardgate_config::KeyType;

use crate::params::BoundParams;
use crate::plan::{Hint, KeyExpr, Plan};
use crate::ring::ShardIndex;
use crate::router::{Route, RouteError, Router};
use crate::text::{Lexer, TokKind};

/// In [`InsertRowKeys::rows`]: the row's key is NULL.
pub(crate) const NULL_KEY: u32 = u32::MAX;

/// The key of each row of a multi-row INSERT: its distinct keys, and each row's among them
/// (4 bytes a row: plans are cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertRowKeys {
    pub(crate) key_type: KeyType,
    /// Distinct keys, in first-seen order.
    pub(crate) keys: Vec<KeyExpr>,
    /// Per row, in row order: an index into `keys`, or [`NULL_KEY`].
    pub(crate) rows: Vec<u32>,
}

impl InsertRowKeys {
    /// Number of VALUES rows.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Row `i`'s key (`None`: NULL).
    fn key(&self, i: usize) -> Option<&KeyExpr> {
        let at = *self.rows.get(i)?;
        self.keys.get(usize::try_from(at).ok()?)
    }
}

/// A multi-row INSERT split by shard: one part per shard its rows go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertSplit {
    /// Shards ascending; at least two.
    pub parts: Vec<InsertPart>,
}

/// The INSERT one shard runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertPart {
    pub shard: ShardIndex,
    /// The client's statement with only this shard's VALUES rows (in their original order);
    /// everything else (column list, ON CONFLICT, RETURNING, comments) as written, and the
    /// placeholders renumbered `$1…` in order of first use.
    pub sql: String,
    /// For each placeholder of `sql` (`$1`, `$2`, … → index 0, 1, …): the client's parameter
    /// index (0-based) whose value, format code and type it takes.
    pub params: Vec<usize>,
    /// The client's row positions (0-based) of this part's rows, in order: RETURNING rows of
    /// this part answer these rows.
    pub rows: Vec<usize>,
}

fn cannot_split(reason: &str) -> RouteError {
    tracing::warn!(%reason, "multi-row INSERT not split");
    RouteError {
        code: "0A000",
        message: format!("shardgate cannot split this multi-row INSERT by shard key: {reason}"),
        hint: Some(
            "write the rows of each shard in a statement of their own, or add a /* shardgate: shard=… */ hint"
                .into(),
        ),
    }
}

fn no_parameter(text: &str, supplied: usize) -> RouteError {
    if supplied == 0 {
        RouteError {
            code: "42P02",
            message: format!("there is no parameter {text}"),
            hint: None,
        }
    } else {
        RouteError {
            code: "08P01",
            message: format!(
                "statement uses parameter {text} but the bind message supplies {supplied} parameters"
            ),
            hint: None,
        }
    }
}

/// A `$n` in the text.
struct ParamTok {
    range: Range<usize>,
    /// `n`; `None` when too large to be a number.
    number: Option<usize>,
}

/// Where the rows and parameters of an INSERT's text are.
pub(crate) struct Layout {
    /// Each VALUES row, from its `(` to its `)` included.
    pub(crate) rows: Vec<Range<usize>>,
    /// Every parameter, in text order.
    params: Vec<ParamTok>,
    /// For each row, its parameters: a range of `params`.
    row_params: Vec<Range<usize>>,
}

enum State {
    BeforeValues,
    ExpectRow,
    InRow(usize),
    AfterRow,
    Rest,
}

impl Layout {
    /// One lexer pass: the first `VALUES` at parenthesis depth 0, then its rows (`(…)` separated
    /// by commas, comments allowed between them) until the first other token.
    pub(crate) fn of(sql: &str) -> Result<Layout, RouteError> {
        let mut rows = Vec::new();
        let mut params = Vec::new();
        let mut state = State::BeforeValues;
        let mut depth = 0usize;
        for tok in Lexer::new(sql) {
            let text = &sql[tok.range.clone()];
            if tok.kind == TokKind::Param {
                params.push(ParamTok {
                    number: text[1..].parse().ok(),
                    range: tok.range.clone(),
                });
            }
            let open = tok.kind == TokKind::Other && text == "(";
            let close = tok.kind == TokKind::Other && text == ")";
            state = match state {
                State::BeforeValues if open => {
                    depth += 1;
                    State::BeforeValues
                }
                State::BeforeValues if close => {
                    depth = depth.saturating_sub(1);
                    State::BeforeValues
                }
                State::BeforeValues
                    if depth == 0
                        && tok.kind == TokKind::Word
                        && text.eq_ignore_ascii_case("values") =>
                {
                    State::ExpectRow
                }
                State::BeforeValues => State::BeforeValues,
                State::ExpectRow if tok.kind == TokKind::Comment => State::ExpectRow,
                State::ExpectRow if open => {
                    depth = 1;
                    State::InRow(tok.range.start)
                }
                State::ExpectRow => return Err(cannot_split("a VALUES row does not start with (")),
                State::InRow(start) if close && depth <= 1 => {
                    depth = 0;
                    rows.push(start..tok.range.end);
                    State::AfterRow
                }
                State::InRow(start) => {
                    if open {
                        depth += 1;
                    } else if close {
                        depth -= 1;
                    }
                    State::InRow(start)
                }
                State::AfterRow if tok.kind == TokKind::Comment => State::AfterRow,
                State::AfterRow if tok.kind == TokKind::Other && text == "," => State::ExpectRow,
                State::AfterRow | State::Rest => State::Rest,
            };
        }
        if !matches!(state, State::AfterRow | State::Rest) {
            return Err(cannot_split("the VALUES rows are not complete"));
        }
        // Each row's parameters, by one merge walk (rows and parameters are in text order).
        let mut row_params = Vec::with_capacity(rows.len());
        let mut p = 0;
        for row in &rows {
            while params.get(p).is_some_and(|t| t.range.start < row.start) {
                p += 1;
            }
            let first = p;
            while params.get(p).is_some_and(|t| t.range.end <= row.end) {
                p += 1;
            }
            row_params.push(first..p);
        }
        Ok(Layout {
            rows,
            params,
            row_params,
        })
    }
}

/// Builds the parts' texts, renumbering parameters per part.
struct Writer<'a> {
    sql: &'a str,
    layout: &'a Layout,
    supplied: usize,
    /// Per client parameter: its number in the part being written (0: not used yet). Reset
    /// between parts through `order`.
    numbers: Vec<usize>,
    /// Client parameter indexes of the part being written, by new number.
    order: Vec<usize>,
}

impl Writer<'_> {
    /// Appends `sql[range]`, whose parameters are `params`, renumbering them.
    fn emit(
        &mut self,
        out: &mut String,
        range: Range<usize>,
        params: Range<usize>,
    ) -> Result<(), RouteError> {
        let mut at = range.start;
        for p in &self.layout.params[params] {
            out.push_str(&self.sql[at..p.range.start]);
            let index = p
                .number
                .and_then(|n| n.checked_sub(1))
                .filter(|i| *i < self.supplied)
                .ok_or_else(|| no_parameter(&self.sql[p.range.clone()], self.supplied))?;
            if self.numbers[index] == 0 {
                self.order.push(index);
                self.numbers[index] = self.order.len();
            }
            let _ = write!(out, "${}", self.numbers[index]);
            at = p.range.end;
        }
        out.push_str(&self.sql[at..range.end]);
        Ok(())
    }

    fn part(&mut self, shard: ShardIndex, rows: Vec<usize>) -> Result<InsertPart, RouteError> {
        for i in self.order.drain(..) {
            self.numbers[i] = 0;
        }
        let layout = self.layout;
        let (Some(first), Some(last)) = (layout.rows.first(), layout.rows.last()) else {
            return Err(cannot_split("no VALUES rows"));
        };
        let (head_end, tail_start) = (first.start, last.end);
        let head_params = layout.params.partition_point(|p| p.range.end <= head_end);
        let tail_params = layout
            .params
            .partition_point(|p| p.range.start < tail_start);
        let length = head_end
            + (self.sql.len() - tail_start)
            + rows
                .iter()
                .map(|r| layout.rows[*r].len() + 2)
                .sum::<usize>();
        let mut out = String::with_capacity(length + 16);
        self.emit(&mut out, 0..head_end, 0..head_params)?;
        for (j, &r) in rows.iter().enumerate() {
            self.emit(
                &mut out,
                layout.rows[r].clone(),
                layout.row_params[r].clone(),
            )?;
            if j + 1 < rows.len() {
                // The separator that followed this row: its comma and comments, no parameters.
                if let Some(next) = layout.rows.get(r + 1) {
                    out.push_str(&self.sql[layout.rows[r].end..next.start]);
                }
            }
        }
        self.emit(
            &mut out,
            tail_start..self.sql.len(),
            tail_params..layout.params.len(),
        )?;
        Ok(InsertPart {
            shard,
            sql: out,
            params: self.order.clone(),
            rows,
        })
    }
}

impl Router {
    /// How a multi-row `INSERT … VALUES` splits into one INSERT per shard, given the Bind
    /// parameters ([`BoundParams::NONE`] for a simple Query) and the session's hint.
    ///
    /// `plan` must be [`Router::plan`] of `sql` itself (not a normalized shape's plan: use
    /// [`Router::split_query`] for a simple-protocol statement). `Ok(None)`: not a splittable
    /// INSERT, its rows are on one shard, or a hint decides (route it with [`Router::route`]).
    /// `Err`: the statement is refused (a plan's refusal is the error `route` gives, e.g. a
    /// row whose key is an expression), a parameter is missing or not a valid key, or the
    /// rows cannot be cut out of the text (0A000). A row whose key is NULL goes to the default
    /// shard, as a one-row INSERT would.
    pub fn split_insert(
        &self,
        plan: &Plan,
        sql: &str,
        params: &BoundParams<'_>,
        session_hint: Option<&Hint>,
    ) -> Result<Option<InsertSplit>, RouteError> {
        let hint = plan.hint.as_ref().or(session_hint);
        if let Some(r) = &plan.refusal {
            if !(r.hint_overrides && hint.is_some()) {
                return Err(RouteError {
                    code: r.code,
                    message: r.message.clone(),
                    hint: r.hint.clone(),
                });
            }
        }
        let Some(rows) = plan.insert_rows.as_deref() else {
            return Ok(None);
        };
        if hint.is_some() || plan.statement_count != 1 || self.ring().shards().len() < 2 {
            return Ok(None);
        }
        // Each row's shard, before any text work: a one-shard INSERT costs no lexing. Each
        // distinct key is hashed (and its parameter decoded) once.
        let mut key_shards = Vec::with_capacity(rows.keys.len());
        for key in &rows.keys {
            key_shards.push(match key {
                KeyExpr::Value(v) => Some(self.shard_for_key(v)),
                KeyExpr::Param(n) => params
                    .key(*n, rows.key_type)?
                    .map(|v| self.shard_for_key(&v)),
                KeyExpr::ParamArray(_) => return Err(cannot_split("an array row key")),
            });
        }
        let shards: Vec<Option<ShardIndex>> = rows
            .rows
            .iter()
            .map(|at| key_shards.get(*at as usize).copied().flatten())
            .collect();
        let mut found = shards.iter().flatten();
        let first = found.next();
        if !found.any(|s| Some(s) != first) {
            return Ok(None);
        }
        let layout = Layout::of(sql)?;
        if layout.rows.len() != rows.rows() {
            return Err(cannot_split(&format!(
                "found {} VALUES rows in the text where the parser found {}",
                layout.rows.len(),
                rows.rows()
            )));
        }
        // The key parameter of each row is in that row's text (guards against a plan of
        // another text).
        for i in 0..rows.rows() {
            if let Some(KeyExpr::Param(n)) = rows.key(i) {
                let inside = &layout.params[layout.row_params[i].clone()];
                if !inside.iter().any(|p| p.number == Some(*n)) {
                    return Err(cannot_split(&format!(
                        "row {} of the text does not hold its key parameter ${n}",
                        i + 1
                    )));
                }
            }
        }
        let mut by_shard: BTreeMap<ShardIndex, Vec<usize>> = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            by_shard
                .entry(shard.unwrap_or(self.default_shard()))
                .or_default()
                .push(i);
        }
        let supplied = params.values.len();
        let mut writer = Writer {
            sql,
            layout: &layout,
            supplied,
            numbers: vec![0; supplied],
            order: Vec::new(),
        };
        let mut parts = Vec::with_capacity(by_shard.len());
        for (shard, rows) in by_shard {
            // ON CONFLICT DO UPDATE SET key = constant: the constant must be this part's shard.
            self.check_key_updates(plan, &Route::Shard(shard), params)?;
            parts.push(writer.part(shard, rows)?);
        }
        Ok(Some(InsertSplit { parts }))
    }
}
