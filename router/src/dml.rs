//! The data-modifying statements in the structured walk: INSERT (the key column's position,
//! the key of each VALUES row, INSERT … SELECT passing a key through, ON CONFLICT), UPDATE
//! (its SET of the key column: allowed only to a constant checked at routing), DELETE, MERGE,
//! EXPLAIN; and the coverage safety net over the whole statement.

use std::collections::HashMap;
use std::ops::ControlFlow;

use shardgate_config::KeyType;
use sqlparser::ast::{
    Assignment, AssignmentTarget, Expr, FromTable, OnConflictAction, OnInsert, SelectItem, SetExpr,
    Statement, TableObject, Visit,
};

use crate::analysis::{Analysis, NodeId, Rel, RelKind};
use crate::keys::{key_value, KeySet};
use crate::plan::{KeyExpr, Refusal};
use crate::rules::{name_parts, norm};
use crate::split::{InsertRowKeys, NULL_KEY};

impl Analysis<'_> {
    /// Analyses a data-modifying (or query) statement; returns its block.
    pub(crate) fn statement(
        &mut self,
        st: &Statement,
        parent: Option<usize>,
        top: bool,
    ) -> Option<usize> {
        match st {
            Statement::Query(q) => Some(self.query(q, parent, top).block),
            Statement::Insert(ins) => Some(self.insert(ins, parent, top)),
            Statement::Update(u) => {
                let b = self.new_block(parent, top);
                self.table_with_joins(&u.table, b);
                if let Some(from) = &u.from {
                    let tables = match from {
                        sqlparser::ast::UpdateTableFromKind::BeforeSet(t)
                        | sqlparser::ast::UpdateTableFromKind::AfterSet(t) => t,
                    };
                    for twj in tables {
                        self.table_with_joins(twj, b);
                    }
                }
                self.finish_from(b);
                self.discover(&u.assignments, b);
                if let Some(rel) = self.blocks[b].rels.first().cloned() {
                    self.key_assignments(&u.assignments, &rel, b, false);
                }
                self.filter(u.selection.as_ref(), b);
                self.discover(&u.returning, b);
                Some(b)
            }
            Statement::Delete(d) => {
                let b = self.new_block(parent, top);
                let (FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables)) =
                    &d.from;
                for twj in tables.iter().chain(d.using.iter().flatten()) {
                    self.table_with_joins(twj, b);
                }
                self.finish_from(b);
                self.filter(d.selection.as_ref(), b);
                self.discover(&d.returning, b);
                Some(b)
            }
            Statement::Merge(m) => {
                let b = self.new_block(parent, top);
                self.table_factor(&m.table, b);
                self.table_factor(&m.source, b);
                self.discover(&*m.on, b);
                let c = self.pred(&m.on, b);
                self.apply(c, b, true);
                self.discover(&m.clauses, b);
                Some(b)
            }
            Statement::Explain { statement, .. } => self.statement(statement, parent, top),
            _ => None,
        }
    }

    fn insert(&mut self, ins: &sqlparser::ast::Insert, parent: Option<usize>, top: bool) -> usize {
        let b = self.new_block(parent, top);
        let node = match &ins.table {
            TableObject::TableName(name) => {
                self.table_ref(name, ins.table_alias.as_ref().map(|a| &a.alias), b)
            }
            other => {
                self.discover(other, b);
                None
            }
        };
        let rel = self.blocks[b].rels.first().cloned();
        match (node, rel) {
            (Some(node), Some(rel)) => self.insert_keys(ins, node, &rel, b),
            _ => {
                if let Some(src) = &ins.source {
                    self.query(src, Some(b), false);
                }
            }
        }
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let OnConflictAction::DoUpdate(du) = &oc.action {
                self.discover(&du.assignments, b);
                self.discover(&du.selection, b);
                if let Some(rel) = self.blocks[b].rels.first().cloned() {
                    self.key_assignments(&du.assignments, &rel, b, true);
                }
            }
        }
        self.discover(&ins.returning, b);
        b
    }

    fn insert_keys(&mut self, ins: &sqlparser::ast::Insert, node: NodeId, rel: &Rel, b: usize) {
        let RelKind::Sharded(_, key_col) = &rel.kind else {
            return;
        };
        let table = self.tables.last().cloned().unwrap_or_default();
        let refusal = |message: String, hint: &str| Refusal {
            code: "0A000",
            message,
            hint: Some(hint.to_owned()),
            hint_overrides: true,
        };
        let pos = ins
            .columns
            .iter()
            .position(|c| name_parts(c).last() == Some(key_col));
        let Some(pos) = pos else {
            let message = if ins.columns.is_empty() {
                format!("INSERT into sharded table {table} must list its columns so shardgate can find {key_col}")
            } else {
                format!("INSERT into sharded table {table} must give a value for its shard key {key_col}")
            };
            self.refuse(refusal(message, "name the key column and give its value, or add a /* shardgate: shard_key=… */ hint"));
            if let Some(src) = &ins.source {
                self.query(src, Some(b), false);
            }
            return;
        };
        let Some(src) = &ins.source else {
            return;
        };
        let key_type = self.nodes[node].key_type;
        if let (SetExpr::Values(values), None) = (&*src.body, &src.with) {
            // The rows' distinct keys in first-seen order (what `union` row by row gives,
            // without its quadratic cost on a 1,000-row INSERT), and each row's key among them.
            let mut keys = KeySet::new();
            let mut index: HashMap<KeyExpr, u32> = HashMap::new();
            // Row keys for splitting the rows by shard: only for the plain PostgreSQL form (no
            // ORDER BY/LIMIT on the VALUES, no MySQL `ROW(…)`/`VALUE`).
            let plain = !values.explicit_row
                && !values.value_keyword
                && src.order_by.is_none()
                && src.limit_clause.is_none()
                && src.fetch.is_none()
                && src.locks.is_empty()
                && ins.assignments.is_empty();
            let mut row_keys = plain.then(|| Vec::with_capacity(values.rows.len()));
            for (i, row) in values.rows.iter().enumerate() {
                self.discover(&row.content, b);
                match row.content.get(pos).and_then(|e| key_value(e, key_type)) {
                    Some(Ok(ks)) => {
                        // The row's key: its index in `keys` (NULL_KEY for NULL).
                        let mut row_key = NULL_KEY;
                        for k in &ks {
                            row_key = match index.get(k) {
                                Some(n) => *n,
                                None => {
                                    let n = u32::try_from(keys.len()).unwrap_or(NULL_KEY);
                                    index.insert(k.clone(), n);
                                    keys.push(k.clone());
                                    n
                                }
                            };
                        }
                        let usable = ks.is_empty() || (ks.len() == 1 && row_key != NULL_KEY);
                        match &mut row_keys {
                            Some(rk) if usable => rk.push(row_key),
                            _ => row_keys = None,
                        }
                    }
                    Some(Err(r)) => self.refuse(r),
                    None => self.refuse(refusal(
                        format!("INSERT into {table}: the value of {key_col} in row {} must be a literal or a parameter", i + 1),
                        "compute the key in the application, or add a /* shardgate: shard_key=… */ hint",
                    )),
                }
            }
            self.multi_row_insert = values.rows.len() > 1;
            if self.refusal.is_none() && values.rows.len() > 1 {
                self.insert_rows = row_keys.map(|rows| InsertRowKeys {
                    key_type,
                    keys: keys.clone(),
                    rows,
                });
            }
            self.own[node] = Some(keys);
            return;
        }
        let out = self.query(src, Some(b), false);
        if let Some(Some((_, inner))) = out.cols.get(pos).filter(|_| out.positional) {
            self.flows.push((*inner, node));
            if out.simple {
                self.coloc.push((*inner, node));
            }
        } else if let SetExpr::Select(s) = &*src.body {
            let expr = match s.projection.get(pos) {
                Some(SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) => {
                    Some(e)
                }
                _ => None,
            };
            match expr.and_then(|e| key_value(e, key_type)) {
                Some(Ok(ks)) => self.own[node] = Some(ks),
                Some(Err(r)) => self.refuse(r),
                None => {}
            }
        }
    }

    /// UPDATE … SET key = v (or ON CONFLICT DO UPDATE): v must be a constant whose shard is
    /// checked at routing, the key itself, or (ON CONFLICT) `EXCLUDED.key`.
    fn key_assignments(
        &mut self,
        assignments: &[Assignment],
        rel: &Rel,
        b: usize,
        on_conflict: bool,
    ) {
        let RelKind::Sharded(node, key_col) = &rel.kind else {
            return;
        };
        let key_type = self.nodes[*node].key_type;
        let refusal = |what: &str| {
            Refusal {
            code: "0A000",
            message: format!("{what} sets the shard key {key_col} to a value shardgate cannot check: the row could belong on another shard"),
            hint: Some("moving a row between shards needs a DELETE and an INSERT".to_owned()),
            hint_overrides: false,
        }
        };
        let what = if on_conflict {
            "ON CONFLICT DO UPDATE"
        } else {
            "UPDATE"
        };
        for a in assignments {
            match &a.target {
                AssignmentTarget::ColumnName(n) if name_parts(n).last() == Some(key_col) => {
                    if self.key_col(&a.value, b) == Some(*node) {
                        continue;
                    }
                    if on_conflict {
                        if let Expr::CompoundIdentifier(ids) = &a.value {
                            if ids.len() == 2
                                && norm(&ids[0]) == "excluded"
                                && &norm(&ids[1]) == key_col
                            {
                                continue;
                            }
                        }
                    }
                    match key_value(&a.value, key_type) {
                        Some(Ok(ks)) => self.key_updates.extend(ks),
                        Some(Err(r)) => self.refuse(r),
                        None => self.refuse(refusal(what)),
                    }
                }
                AssignmentTarget::Tuple(names)
                    if names.iter().any(|n| name_parts(n).last() == Some(key_col)) =>
                {
                    self.refuse(refusal(what));
                }
                _ => {}
            }
        }
    }

    /// The safety net: sharded relations the visitor finds that the walk did not see make
    /// the statement unanalysable (an unrestricted node in a block of its own).
    pub(crate) fn check_coverage<V: Visit>(&mut self, root: &V) {
        let rules = self.rules;
        let mut total = 0usize;
        let _ = sqlparser::ast::visit_relations(root, |name| {
            if rules.lookup(name).is_some() {
                total += 1;
            }
            ControlFlow::<()>::Continue(())
        });
        if total > self.seen_refs {
            tracing::debug!(
                total,
                seen = self.seen_refs,
                "sharded relation outside the analysed structure"
            );
            let b = self.new_block(None, false);
            self.blocks[b].simple = false;
            let kt = self.key_type.unwrap_or(KeyType::Bigint);
            self.new_node(b, true, kt);
        }
    }
}
