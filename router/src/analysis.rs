//! The structured walk of a statement: query blocks (each SELECT, and each INSERT/UPDATE/
//! DELETE), the relations visible in each (sharded table references become *nodes*), name
//! resolution of key columns (aliases, schema-qualified names, unqualified names when
//! unambiguous, correlation to outer blocks), CTEs and derived tables that pass a key column
//! through. Data-modifying statements are in [`crate::dml`].
//!
//! Predicates are read by [`crate::keys`]; every subquery inside an expression is found with
//! sqlparser's visitor, so none escapes the walk. As a last safety net the visitor also counts
//! every sharded relation in the statement: if the walk saw fewer, an unanalysable reference is
//! added, which forces a conservative all-shards placement.

use std::collections::HashMap;
use std::ops::ControlFlow;

use shardgate_config::KeyType;
use sqlparser::ast::{
    Expr, Ident, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, Query, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, TableFactor, TableWithJoins, Visit, Visitor,
};

use crate::keys::KeySet;
use crate::merge::has_aggregate_or_window;
use crate::plan::{KeyExpr, Refusal};
pub(crate) use crate::rules::{name_parts, norm, Rules};

pub(crate) type NodeId = usize;

/// A sharded table reference (`real`), or a derived table's / CTE's column that passes a key
/// through (virtual: it never needs a shard itself, it only carries restrictions).
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub block: usize,
    pub real: bool,
    pub key_type: KeyType,
}

#[derive(Debug, Clone)]
pub(crate) enum RelKind {
    /// A sharded table: its node and key column.
    Sharded(NodeId, String),
    /// A derived table or CTE reference: its key pass-through columns.
    Derived(Vec<(String, NodeId)>),
    /// Anything else (unsharded table, function): columns unknown.
    Other,
}

#[derive(Debug, Clone)]
pub(crate) struct Rel {
    pub name: String,
    pub schema: Option<String>,
    pub aliased: bool,
    pub kind: RelKind,
}

impl Rel {
    pub(crate) fn key_node(&self, col: &str) -> Option<NodeId> {
        match &self.kind {
            RelKind::Sharded(n, key) if key == col => Some(*n),
            RelKind::Derived(cols) => cols.iter().find(|(c, _)| c == col).map(|(_, n)| *n),
            _ => None,
        }
    }
}

/// One query block: a SELECT, or the target (and FROM/USING) of INSERT/UPDATE/DELETE.
#[derive(Debug, Clone, Default)]
pub(crate) struct Block {
    pub parent: Option<usize>,
    /// The statement's own top level (not a subquery, derived table or CTE).
    pub top: bool,
    /// Per-shard rows concatenate to the right rows: no LIMIT/DISTINCT/aggregates/….
    pub simple: bool,
    /// Tied to an outer block by a key equality (evaluated per outer row, on its shard).
    pub correlated: bool,
    pub rels: Vec<Rel>,
    pending_on: Vec<crate::keys::Cons>,
    has_outer_join: bool,
}

/// What a query gives its user: its block and the key columns it passes through.
#[derive(Debug, Clone)]
pub(crate) struct QueryOut {
    pub block: usize,
    /// Output columns by position: `Some((name, node))` for a key passed through.
    pub cols: Vec<Option<(String, NodeId)>>,
    /// False when positions are unknown (a `*` over a relation of unknown columns).
    pub positional: bool,
    pub simple: bool,
}

impl QueryOut {
    pub(crate) fn single_key_column(&self) -> Option<NodeId> {
        match self.cols.as_slice() {
            [Some((_, n))] if self.positional => Some(*n),
            _ => None,
        }
    }

    fn named(&self) -> Vec<(String, NodeId)> {
        self.cols.iter().flatten().cloned().collect()
    }
}

pub(crate) fn addr(q: &Query) -> usize {
    q as *const Query as usize
}

/// The analysis of one statement.
pub(crate) struct Analysis<'r> {
    pub rules: &'r Rules,
    pub nodes: Vec<Node>,
    pub blocks: Vec<Block>,
    pub own: Vec<Option<KeySet>>,
    pub bi: Vec<(NodeId, NodeId)>,
    pub flows: Vec<(NodeId, NodeId)>,
    pub coloc: Vec<(NodeId, NodeId)>,
    pub subqueries: HashMap<usize, QueryOut>,
    ctes: Vec<(String, QueryOut)>,
    pub seen_refs: usize,
    pub refusal: Option<Refusal>,
    /// Sharded tables touched, as written (lower-cased), first appearance first.
    pub tables: Vec<String>,
    /// A table that is not sharded is read (it lives on the default shard).
    pub unsharded_tables: bool,
    /// Those tables' names, as written (lower-cased).
    pub other_tables: Vec<String>,
    /// Reference tables touched (copies on every shard), as written, lower-cased.
    pub reference_tables: Vec<String>,
    pub key_type: Option<KeyType>,
    pub key_updates: Vec<KeyExpr>,
    pub multi_row_insert: bool,
    /// The key of each row of a multi-row `INSERT … VALUES` into a sharded table, when every
    /// row's key is a literal, a parameter or NULL (see [`crate::split`]).
    pub insert_rows: Option<crate::split::InsertRowKeys>,
}

struct Finder<'a, 'r> {
    an: &'a mut Analysis<'r>,
    block: usize,
    depth: usize,
}

impl Visitor for Finder<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            let out = self.an.query(q, Some(self.block), false);
            self.an.subqueries.insert(addr(q), out);
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }
}

impl<'r> Analysis<'r> {
    pub(crate) fn new(rules: &'r Rules) -> Analysis<'r> {
        Analysis {
            rules,
            nodes: Vec::new(),
            blocks: Vec::new(),
            own: Vec::new(),
            bi: Vec::new(),
            flows: Vec::new(),
            coloc: Vec::new(),
            subqueries: HashMap::new(),
            ctes: Vec::new(),
            refusal: None,
            seen_refs: 0,
            tables: Vec::new(),
            unsharded_tables: false,
            other_tables: Vec::new(),
            reference_tables: Vec::new(),
            key_type: None,
            key_updates: Vec::new(),
            multi_row_insert: false,
            insert_rows: None,
        }
    }

    /// The row keys of a multi-row INSERT that can be split by key: the INSERT's target is the
    /// statement's only sharded table reference (a sharded table read in a row, ON CONFLICT or
    /// RETURNING would be read on each part's shard only).
    pub(crate) fn splittable_rows(&mut self) -> Option<crate::split::InsertRowKeys> {
        let real = self.nodes.iter().filter(|n| n.real).count();
        self.insert_rows.take().filter(|_| real == 1)
    }

    pub(crate) fn refuse(&mut self, r: Refusal) {
        if self.refusal.is_none() {
            self.refusal = Some(r);
        }
    }

    pub(crate) fn new_block(&mut self, parent: Option<usize>, top: bool) -> usize {
        self.blocks.push(Block {
            parent,
            top,
            simple: true,
            ..Block::default()
        });
        self.blocks.len() - 1
    }

    pub(crate) fn new_node(&mut self, block: usize, real: bool, key_type: KeyType) -> NodeId {
        self.nodes.push(Node {
            block,
            real,
            key_type,
        });
        self.own.push(None);
        self.nodes.len() - 1
    }

    pub(crate) fn is_ancestor(&self, anc: usize, mut b: usize) -> bool {
        while let Some(p) = self.blocks[b].parent {
            if p == anc {
                return true;
            }
            b = p;
        }
        false
    }

    /// Analyses every query inside `v` (subqueries in expressions) as a child of `block`.
    pub(crate) fn discover<V: Visit>(&mut self, v: &V, block: usize) {
        let _ = v.visit(&mut Finder {
            an: self,
            block,
            depth: 0,
        });
    }

    /// The key column node that `qual.col` names from `block` (see the module doc).
    pub(crate) fn resolve(&self, qual: &[String], col: &str, block: usize) -> Option<NodeId> {
        let mut cur = Some(block);
        while let Some(b) = cur {
            let blk = &self.blocks[b];
            if qual.is_empty() {
                if let Some(n) = blk.rels.iter().find_map(|r| r.key_node(col)) {
                    return Some(n);
                }
                if !blk.rels.is_empty() {
                    // Some relation here may have a column of that name: not provably ours.
                    return None;
                }
            } else {
                let table = &qual[qual.len() - 1];
                let schema = (qual.len() >= 2).then(|| &qual[qual.len() - 2]);
                let found = blk.rels.iter().find(|r| {
                    &r.name == table
                        && match schema {
                            None => true,
                            Some(s) => !r.aliased && r.schema.as_ref().is_none_or(|rs| rs == s),
                        }
                });
                if let Some(rel) = found {
                    return rel.key_node(col);
                }
            }
            cur = blk.parent;
        }
        None
    }

    /// Registers a table reference in `block`; returns its node when sharded.
    pub(crate) fn table_ref(
        &mut self,
        name: &ObjectName,
        alias: Option<&Ident>,
        block: usize,
    ) -> Option<NodeId> {
        let parts = name_parts(name);
        let rule = self.rules.lookup(name);
        if rule.is_some() {
            self.seen_refs += 1;
        }
        let exposed = alias
            .map(norm)
            .or_else(|| parts.last().cloned())
            .unwrap_or_default();
        // A one-part name may be a CTE in scope (innermost first).
        if parts.len() == 1 {
            if let Some((_, out)) = self
                .ctes
                .iter()
                .rev()
                .find(|(n, _)| n == &parts[0])
                .cloned()
            {
                let kind = self.derived_rel(&out, block);
                self.blocks[block].rels.push(Rel {
                    name: exposed,
                    schema: None,
                    aliased: alias.is_some(),
                    kind,
                });
                return None;
            }
        }
        let kind = match rule {
            Some(r) => {
                let rule = self.rules.tables[r].clone();
                let node = self.new_node(block, true, rule.key_type);
                self.key_type.get_or_insert(rule.key_type);
                let display = parts.join(".");
                if !self.tables.contains(&display) {
                    self.tables.push(display);
                }
                RelKind::Sharded(node, rule.key_column)
            }
            None if self.rules.lookup_reference(name) => {
                // A copy on every shard: adds no placement of its own.
                let display = parts.join(".");
                if !self.reference_tables.contains(&display) {
                    self.reference_tables.push(display);
                }
                RelKind::Other
            }
            None => {
                self.unsharded_tables = true;
                let display = parts.join(".");
                if !self.other_tables.contains(&display) {
                    self.other_tables.push(display);
                }
                RelKind::Other
            }
        };
        let node = match kind {
            RelKind::Sharded(n, _) => Some(n),
            _ => None,
        };
        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].clone());
        self.blocks[block].rels.push(Rel {
            name: exposed,
            schema,
            aliased: alias.is_some(),
            kind,
        });
        node
    }

    /// A derived relation over `out`: fresh virtual nodes fed by the inner key columns.
    fn derived_rel(&mut self, out: &QueryOut, block: usize) -> RelKind {
        let mut cols = Vec::new();
        for (name, inner) in out.named() {
            let v = self.new_node(block, false, self.nodes[inner].key_type);
            self.flows.push((inner, v));
            if out.simple {
                self.coloc.push((inner, v));
            }
            cols.push((name, v));
        }
        RelKind::Derived(cols)
    }

    fn with_alias_columns(
        mut out: QueryOut,
        alias: Option<&sqlparser::ast::TableAlias>,
    ) -> QueryOut {
        if let Some(a) = alias.filter(|a| !a.columns.is_empty()) {
            if !out.positional {
                out.cols.clear();
                return out;
            }
            for (i, c) in a.columns.iter().enumerate() {
                if let Some(Some((name, _))) = out.cols.get_mut(i) {
                    *name = norm(&c.name);
                }
            }
        }
        out
    }

    pub(crate) fn table_factor(&mut self, tf: &TableFactor, block: usize) {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if let Some(args) = args {
                    self.discover(args, block);
                    self.blocks[block].rels.push(Rel {
                        name: alias.as_ref().map(|a| norm(&a.name)).unwrap_or_default(),
                        schema: None,
                        aliased: true,
                        kind: RelKind::Other,
                    });
                } else {
                    self.table_ref(name, alias.as_ref().map(|a| &a.name), block);
                }
            }
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let out = self.query(subquery, Some(block), false);
                let out = Self::with_alias_columns(out, alias.as_ref());
                let kind = self.derived_rel(&out, block);
                self.blocks[block].rels.push(Rel {
                    name: alias.as_ref().map(|a| norm(&a.name)).unwrap_or_default(),
                    schema: None,
                    aliased: true,
                    kind,
                });
            }
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins, block),
            other => {
                self.discover(other, block);
                self.blocks[block].rels.push(Rel {
                    name: String::new(),
                    schema: None,
                    aliased: true,
                    kind: RelKind::Other,
                });
            }
        }
    }

    fn using_eqs(&mut self, cols: &[String], left: std::ops::Range<usize>, block: usize) {
        let right_start = left.end;
        let rels = self.blocks[block].rels.clone();
        for col in cols {
            for l in &rels[left.clone()] {
                for r in &rels[right_start..] {
                    if let (Some(a), Some(b)) = (l.key_node(col), r.key_node(col)) {
                        self.bi.push((a, b));
                        self.coloc.push((a, b));
                    }
                }
            }
        }
    }

    pub(crate) fn table_with_joins(&mut self, twj: &TableWithJoins, block: usize) {
        let first = self.blocks[block].rels.len();
        self.table_factor(&twj.relation, block);
        for join in &twj.joins {
            let left = first..self.blocks[block].rels.len();
            self.table_factor(&join.relation, block);
            use JoinOperator as J;
            let (constraint, outer) = match &join.join_operator {
                J::Join(c) | J::Inner(c) | J::CrossJoin(c) | J::StraightJoin(c) => (Some(c), false),
                J::Left(c) | J::LeftOuter(c) | J::Right(c) | J::RightOuter(c) | J::FullOuter(c) => {
                    (Some(c), true)
                }
                _ => (None, true),
            };
            if outer {
                self.blocks[block].has_outer_join = true;
            }
            match constraint {
                Some(JoinConstraint::On(e)) => {
                    self.discover(e, block);
                    let c = self.pred(e, block);
                    if outer {
                        self.apply(c, block, true);
                    } else {
                        self.blocks[block].pending_on.push(c);
                    }
                }
                Some(JoinConstraint::Using(names)) => {
                    let cols: Vec<String> =
                        names.iter().filter_map(|n| name_parts(n).pop()).collect();
                    self.using_eqs(&cols, left, block);
                }
                Some(JoinConstraint::Natural) => {
                    let rels = &self.blocks[block].rels[left.end..];
                    let cols: Vec<String> = rels
                        .iter()
                        .flat_map(|r| match &r.kind {
                            RelKind::Sharded(_, k) => vec![k.clone()],
                            RelKind::Derived(c) => c.iter().map(|(n, _)| n.clone()).collect(),
                            RelKind::Other => vec![],
                        })
                        .collect();
                    self.using_eqs(&cols, left, block);
                }
                _ => {}
            }
        }
    }

    /// After a block's FROM: inner-join ON restrictions count unless an outer join could
    /// null-extend their tables (then only their key equalities do).
    pub(crate) fn finish_from(&mut self, block: usize) {
        let pending = std::mem::take(&mut self.blocks[block].pending_on);
        let eqs_only = self.blocks[block].has_outer_join;
        for c in pending {
            self.apply(c, block, eqs_only);
        }
    }

    pub(crate) fn filter(&mut self, selection: Option<&Expr>, block: usize) {
        if let Some(e) = selection {
            self.discover(e, block);
            let c = self.pred(e, block);
            self.apply(c, block, false);
        }
    }

    /// Analyses a query as a block under `parent`.
    pub(crate) fn query(&mut self, q: &Query, parent: Option<usize>, top: bool) -> QueryOut {
        let scope = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let out = self.query(&cte.query, parent, false);
                let out = Self::with_alias_columns(out, Some(&cte.alias));
                self.ctes.push((norm(&cte.alias.name), out));
            }
        }
        let mut out = self.set_expr(&q.body, parent, top);
        if let Some(ob) = &q.order_by {
            self.discover(ob, out.block);
        }
        if let Some(l) = &q.limit_clause {
            self.discover(l, out.block);
        }
        if q.limit_clause.is_some() || q.fetch.is_some() {
            out.simple = false;
            self.blocks[out.block].simple = false;
        }
        self.ctes.truncate(scope);
        out
    }

    pub(crate) fn set_expr(
        &mut self,
        body: &SetExpr,
        parent: Option<usize>,
        top: bool,
    ) -> QueryOut {
        match body {
            SetExpr::Select(s) => {
                let b = self.new_block(parent, top);
                for twj in &s.from {
                    self.table_with_joins(twj, b);
                }
                self.finish_from(b);
                self.filter(s.selection.as_ref(), b);
                let (cols, positional) = self.projection(&s.projection, b);
                self.discover(&s.group_by, b);
                self.discover(&s.having, b);
                self.discover(&s.named_window, b);
                self.discover(&s.qualify, b);
                let grouped = !matches!(&s.group_by, sqlparser::ast::GroupByExpr::Expressions(g, _) if g.is_empty());
                let simple = s.distinct.is_none()
                    && !grouped
                    && s.having.is_none()
                    && !has_aggregate_or_window(&s.projection);
                self.blocks[b].simple = simple;
                QueryOut {
                    block: b,
                    cols,
                    positional,
                    simple,
                }
            }
            SetExpr::Query(q) => self.query(q, parent, top),
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left, parent, top);
                let r = self.set_expr(right, parent, top);
                self.blocks[l.block].simple = false;
                self.blocks[r.block].simple = false;
                QueryOut {
                    block: l.block,
                    cols: Vec::new(),
                    positional: false,
                    simple: false,
                }
            }
            SetExpr::Values(v) => {
                let b = self.new_block(parent, top);
                self.discover(v, b);
                QueryOut {
                    block: b,
                    cols: Vec::new(),
                    positional: true,
                    simple: true,
                }
            }
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => {
                let b = self
                    .statement(st, parent, top)
                    .unwrap_or_else(|| self.new_block(parent, top));
                QueryOut {
                    block: b,
                    cols: Vec::new(),
                    positional: false,
                    simple: false,
                }
            }
            SetExpr::Table(t) => {
                let b = self.new_block(parent, top);
                if let Some(name) = &t.table_name {
                    let mut parts = Vec::new();
                    if let Some(s) = &t.schema_name {
                        parts.push(ObjectNamePart::Identifier(s.clone()));
                    }
                    parts.push(ObjectNamePart::Identifier(name.clone()));
                    self.table_ref(&ObjectName(parts), None, b);
                }
                QueryOut {
                    block: b,
                    cols: Vec::new(),
                    positional: false,
                    simple: true,
                }
            }
        }
    }

    fn projection(
        &mut self,
        items: &[SelectItem],
        b: usize,
    ) -> (Vec<Option<(String, NodeId)>>, bool) {
        let mut cols = Vec::new();
        let mut positional = true;
        for item in items {
            self.discover(item, b);
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = match e {
                        Expr::Identifier(id) => Some(norm(id)),
                        Expr::CompoundIdentifier(ids) => ids.last().map(norm),
                        _ => None,
                    };
                    cols.push(name.zip(self.key_col(e, b)));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    cols.push(self.key_col(expr, b).map(|n| (norm(alias), n)));
                }
                SelectItem::ExprWithAliases { .. } => cols.push(None),
                SelectItem::Wildcard(_) => {
                    positional = false;
                    let rels = self.blocks[b].rels.clone();
                    cols.extend(rels.iter().flat_map(rel_key_cols).map(Some));
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    positional = false;
                    if let SelectItemQualifiedWildcardKind::ObjectName(n) = kind {
                        let want = name_parts(n).pop().unwrap_or_default();
                        let rels = self.blocks[b].rels.clone();
                        if let Some(rel) = rels.iter().find(|r| r.name == want) {
                            cols.extend(rel_key_cols(rel).into_iter().map(Some));
                        }
                    }
                }
            }
        }
        (cols, positional)
    }
}

fn rel_key_cols(rel: &Rel) -> Vec<(String, NodeId)> {
    match &rel.kind {
        RelKind::Sharded(n, k) => vec![(k.clone(), *n)],
        RelKind::Derived(cols) => cols.clone(),
        RelKind::Other => vec![],
    }
}
