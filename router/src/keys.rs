//! Shard keys from predicates: which keys each sharded table reference is restricted to, and
//! which references are tied together by equalities on their key columns.
//!
//! A predicate gives a [`Cons`]: per node (a sharded table reference, or a derived table's
//! column that passes a key through) the set of keys it is restricted to, plus key-column
//! equalities and "flows" (`key IN (SELECT key …)`). AND intersects and concatenates, OR keeps
//! only what both sides restrict (the union of their keys), anything else restricts nothing.
//! [`crate::analysis`] applies the constraints of each WHERE/ON and [`Analysis::solve`] turns
//! them into a placement.

use shardgate_config::KeyType;
use sqlparser::ast::{BinaryOperator, DataType, Expr, InTarget, UnaryOperator, Value};

use crate::analysis::{addr, Analysis, NodeId};
use crate::params::{parse_key_text, parse_text_array};
use crate::plan::{KeyExpr, Placement, Refusal};

/// Keys a node is restricted to; empty = the predicate matches no row (e.g. `key = NULL`).
pub(crate) type KeySet = Vec<KeyExpr>;

/// What one predicate says about shard keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cons {
    pub keys: Vec<(NodeId, KeySet)>,
    pub eqs: Vec<(NodeId, NodeId)>,
    /// `(from, to)`: `to`'s keys are among `from`'s (`to IN (SELECT from …)`).
    pub flows: Vec<(NodeId, NodeId)>,
}

impl Cons {
    fn and(mut self, other: Cons) -> Cons {
        for (node, ks) in other.keys {
            match self.keys.iter_mut().find(|(n, _)| *n == node) {
                Some((_, mine)) => *mine = intersect(mine, &ks),
                None => self.keys.push((node, ks)),
            }
        }
        self.eqs.extend(other.eqs);
        self.flows.extend(other.flows);
        self
    }

    fn or(self, other: Cons) -> Cons {
        let keys = self
            .keys
            .into_iter()
            .filter_map(|(node, ks)| {
                let theirs = other.keys.iter().find(|(n, _)| *n == node)?;
                Some((node, union(&ks, &theirs.1)))
            })
            .collect();
        Cons {
            keys,
            ..Cons::default()
        }
    }
}

fn weight(ks: &KeySet) -> usize {
    ks.iter()
        .map(|k| match k {
            KeyExpr::ParamArray(_) => 1 << 20,
            _ => 1,
        })
        .sum()
}

/// Both restrictions hold. With literals only: the exact intersection (on a conflict the
/// statement matches nothing, so any one shard will do: the first key is kept). With
/// parameters the values are unknown: the smaller restriction is kept (both are correct).
pub(crate) fn intersect(a: &KeySet, b: &KeySet) -> KeySet {
    let literal = |ks: &KeySet| ks.iter().all(|k| matches!(k, KeyExpr::Value(_)));
    if literal(a) && literal(b) {
        let both: KeySet = a.iter().filter(|k| b.contains(k)).cloned().collect();
        if both.is_empty() && !a.is_empty() && !b.is_empty() {
            return a[..1].to_vec();
        }
        return both;
    }
    if weight(b) < weight(a) {
        b.clone()
    } else {
        a.clone()
    }
}

pub(crate) fn union(a: &KeySet, b: &KeySet) -> KeySet {
    let mut out = a.clone();
    for k in b {
        if !out.contains(k) {
            out.push(k.clone());
        }
    }
    out
}

/// Whether a cast to `dt` keeps values of `key_type` comparable as keys.
pub(crate) fn same_family(dt: &DataType, key_type: KeyType) -> bool {
    use DataType as D;
    match key_type {
        KeyType::Bigint => matches!(
            dt,
            D::Int(_)
                | D::Integer(_)
                | D::Int2(_)
                | D::Int4(_)
                | D::Int8(_)
                | D::BigInt(_)
                | D::SmallInt(_)
        ),
        KeyType::Text => matches!(
            dt,
            D::Text | D::Varchar(_) | D::CharacterVarying(_) | D::String(_)
        ),
        KeyType::Uuid => matches!(dt, D::Uuid),
        // Custom names such as `int8` spelled through a schema are left alone.
    }
}

fn array_family(dt: &DataType, key_type: KeyType) -> bool {
    match dt {
        DataType::Array(def) => match def {
            sqlparser::ast::ArrayElemTypeDef::AngleBracket(t)
            | sqlparser::ast::ArrayElemTypeDef::SquareBracket(t, _)
            | sqlparser::ast::ArrayElemTypeDef::Parenthesis(t) => same_family(t, key_type),
            _ => true,
        },
        _ => false,
    }
}

fn placeholder(s: &str) -> Option<usize> {
    s.strip_prefix('$')?.parse().ok().filter(|n| *n > 0)
}

fn string_literal(v: &Value) -> Option<&str> {
    match v {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s) => Some(s),
        Value::DollarQuotedString(d) => Some(&d.value),
        _ => None,
    }
}

fn bad_literal(text: &str, key_type: KeyType, message: String) -> Refusal {
    Refusal {
        code: if message.contains("out of range") {
            "22003"
        } else {
            "22P02"
        },
        message: format!("{message} (shard key literal '{text}' for a {key_type} key)"),
        hint: None,
        hint_overrides: false,
    }
}

/// A key value (or list) written in SQL: a literal, `$n`, NULL, with casts of the key's type.
/// `None` when it is not a constant shardgate understands (no restriction).
pub(crate) fn key_value(e: &Expr, key_type: KeyType) -> Option<Result<KeySet, Refusal>> {
    match e {
        Expr::Nested(inner) => key_value(inner, key_type),
        Expr::Cast {
            expr, data_type, ..
        } if same_family(data_type, key_type) => key_value(expr, key_type),
        Expr::TypedString(ts) if same_family(&ts.data_type, key_type) => {
            let text = string_literal(&ts.value.value)?;
            Some(literal(text, key_type))
        }
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } if key_type == KeyType::Bigint => match &**expr {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => {
                    let sign = if *op == UnaryOperator::Minus { "-" } else { "" };
                    let i: i64 = format!("{sign}{n}").parse().ok()?;
                    Some(Ok(vec![KeyExpr::Value(crate::plan::KeyValue::Int(i))]))
                }
                _ => None,
            },
            _ => None,
        },
        Expr::Value(v) => match &v.value {
            Value::Null => Some(Ok(Vec::new())),
            Value::Placeholder(p) => Some(Ok(vec![KeyExpr::Param(placeholder(p)?)])),
            // Non-integers and out-of-range numbers compare false with every bigint: no error,
            // no restriction.
            Value::Number(n, _) if key_type == KeyType::Bigint => n
                .parse::<i64>()
                .ok()
                .map(|i| Ok(vec![KeyExpr::Value(crate::plan::KeyValue::Int(i))])),
            other => string_literal(other).map(|text| literal(text, key_type)),
        },
        _ => None,
    }
}

fn literal(text: &str, key_type: KeyType) -> Result<KeySet, Refusal> {
    parse_key_text(key_type, text)
        .map(|k| vec![KeyExpr::Value(k)])
        .map_err(|e| bad_literal(text, key_type, e.message))
}

/// The right side of `key = ANY(…)`: `$n` (an array parameter), `'{1,2}'`, `ARRAY[…]`.
fn array_value(e: &Expr, key_type: KeyType) -> Option<Result<KeySet, Refusal>> {
    match e {
        Expr::Nested(inner) => array_value(inner, key_type),
        Expr::Cast {
            expr, data_type, ..
        } if array_family(data_type, key_type) => array_value(expr, key_type),
        Expr::Array(arr) => {
            let mut out = KeySet::new();
            for elem in &arr.elem {
                match key_value(elem, key_type)? {
                    Ok(ks) => out = union(&out, &ks),
                    Err(r) => return Some(Err(r)),
                }
            }
            Some(Ok(out))
        }
        Expr::Value(v) => match &v.value {
            Value::Null => Some(Ok(Vec::new())),
            Value::Placeholder(p) => Some(Ok(vec![KeyExpr::ParamArray(placeholder(p)?)])),
            other => {
                let text = string_literal(other)?;
                let Some(items) = parse_text_array(text) else {
                    return Some(Err(Refusal {
                        code: "22P02",
                        message: format!("malformed array literal: \"{text}\""),
                        hint: None,
                        hint_overrides: false,
                    }));
                };
                let mut out = KeySet::new();
                for item in items.into_iter().flatten() {
                    match literal(&item, key_type) {
                        Ok(ks) => out = union(&out, &ks),
                        Err(r) => return Some(Err(r)),
                    }
                }
                Some(Ok(out))
            }
        },
        _ => None,
    }
}

/// The operands of a chain of one operator (through parentheses), left to right, without
/// recursion.
fn chain<'e>(e: &'e Expr, want: &BinaryOperator) -> Vec<&'e Expr> {
    let mut out = Vec::new();
    let mut stack = vec![e];
    while let Some(x) = stack.pop() {
        match x {
            Expr::BinaryOp { left, op, right } if op == want => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(inner) if matches!(&**inner, Expr::BinaryOp { op, .. } if op == want) => {
                stack.push(inner);
            }
            other => out.push(other),
        }
    }
    out
}

impl Analysis<'_> {
    /// The key column node an expression names (through parentheses and casts of its type).
    pub(crate) fn key_col(&self, e: &Expr, block: usize) -> Option<NodeId> {
        match e {
            Expr::Nested(inner) => self.key_col(inner, block),
            Expr::Cast {
                expr, data_type, ..
            } => {
                let node = self.key_col(expr, block)?;
                same_family(data_type, self.nodes[node].key_type).then_some(node)
            }
            Expr::Identifier(id) => self.resolve(&[], &crate::analysis::norm(id), block),
            Expr::CompoundIdentifier(ids) => {
                let (col, qual) = ids.split_last()?;
                let qual: Vec<String> = qual.iter().map(crate::analysis::norm).collect();
                self.resolve(&qual, &crate::analysis::norm(col), block)
            }
            _ => None,
        }
    }

    fn restrict(&mut self, node: NodeId, value: Option<Result<KeySet, Refusal>>) -> Cons {
        match value {
            Some(Ok(ks)) => Cons {
                keys: vec![(node, ks)],
                ..Cons::default()
            },
            Some(Err(refusal)) => {
                self.refuse(refusal);
                Cons::default()
            }
            None => Cons::default(),
        }
    }

    /// `key IN (SELECT key …)`: the subquery (already analysed) passes a key through.
    fn semi_join(&mut self, node: NodeId, query: &sqlparser::ast::Query) -> Cons {
        let Some(out) = self.subqueries.get(&addr(query)) else {
            return Cons::default();
        };
        match out.single_key_column() {
            Some(inner) => {
                if out.simple {
                    self.coloc.push((inner, node));
                }
                Cons {
                    flows: vec![(inner, node)],
                    ..Cons::default()
                }
            }
            None => Cons::default(),
        }
    }

    /// What a predicate (evaluated in `block`) says about keys. Subqueries in it must have
    /// been analysed already (see `discover`).
    pub(crate) fn pred(&mut self, e: &Expr, block: usize) -> Cons {
        match e {
            Expr::Nested(inner) => self.pred(inner, block),
            Expr::BinaryOp { left, op, right } => match op {
                // Long chains are walked iteratively: `a AND b AND …` is a left-deep tree.
                BinaryOperator::And => chain(e, &BinaryOperator::And)
                    .into_iter()
                    .fold(None, |acc: Option<Cons>, part| {
                        let c = self.pred(part, block);
                        Some(match acc {
                            Some(acc) => acc.and(c),
                            None => c,
                        })
                    })
                    .unwrap_or_default(),
                BinaryOperator::Or => chain(e, &BinaryOperator::Or)
                    .into_iter()
                    .fold(None, |acc: Option<Cons>, part| {
                        let c = self.pred(part, block);
                        Some(match acc {
                            Some(acc) => acc.or(c),
                            None => c,
                        })
                    })
                    .unwrap_or_default(),
                BinaryOperator::Eq => {
                    let (lk, rk) = (self.key_col(left, block), self.key_col(right, block));
                    match (lk, rk) {
                        (Some(a), Some(b)) if a != b => Cons {
                            eqs: vec![(a, b)],
                            ..Cons::default()
                        },
                        (Some(_), Some(_)) => Cons::default(),
                        (Some(a), None) => {
                            let v = key_value(right, self.nodes[a].key_type);
                            self.restrict(a, v)
                        }
                        (None, Some(b)) => {
                            let v = key_value(left, self.nodes[b].key_type);
                            self.restrict(b, v)
                        }
                        (None, None) => Cons::default(),
                    }
                }
                _ => Cons::default(),
            },
            Expr::In {
                expr,
                target,
                negated: false,
                ..
            } => {
                let Some(node) = self.key_col(expr, block) else {
                    return Cons::default();
                };
                match target {
                    InTarget::List(items) => {
                        let kt = self.nodes[node].key_type;
                        let mut all = Some(Ok(KeySet::new()));
                        for item in items {
                            all = match (all, key_value(item, kt)) {
                                (Some(Ok(acc)), Some(Ok(ks))) => Some(Ok(union(&acc, &ks))),
                                (Some(Err(r)), _) | (_, Some(Err(r))) => Some(Err(r)),
                                _ => None,
                            };
                        }
                        self.restrict(node, all)
                    }
                    InTarget::Subquery(q) => self.semi_join(node, q),
                    _ => Cons::default(),
                }
            }
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => {
                let Some(node) = self.key_col(left, block) else {
                    return Cons::default();
                };
                match &**right {
                    Expr::Subquery(q) => self.semi_join(node, q),
                    other => {
                        let v = array_value(other, self.nodes[node].key_type);
                        self.restrict(node, v)
                    }
                }
            }
            _ => Cons::default(),
        }
    }

    /// Applies the constraint of a WHERE (or inner-join ON) of `block`. With `eqs_only`
    /// (outer-join ON clauses) restrictions are dropped: they do not filter the preserved side.
    pub(crate) fn apply(&mut self, c: Cons, block: usize, eqs_only: bool) {
        if !eqs_only {
            for (node, ks) in c.keys {
                self.own[node] = Some(match &self.own[node] {
                    Some(mine) => intersect(mine, &ks),
                    None => ks,
                });
            }
            self.flows.extend(c.flows);
        }
        for (a, b) in c.eqs {
            let (ba, bb) = (self.nodes[a].block, self.nodes[b].block);
            if ba == block && bb == block {
                self.bi.push((a, b));
                self.coloc.push((a, b));
            } else if ba == block && self.is_ancestor(bb, block) {
                self.flows.push((b, a));
                self.coloc.push((a, b));
                self.blocks[block].correlated = true;
            } else if bb == block && self.is_ancestor(ba, block) {
                self.flows.push((a, b));
                self.coloc.push((a, b));
                self.blocks[block].correlated = true;
            }
        }
    }
}

/// Union-find over node indexes.
pub(crate) struct Classes(Vec<usize>);

impl Classes {
    pub(crate) fn new(n: usize, pairs: &[(NodeId, NodeId)]) -> Classes {
        let mut c = Classes((0..n).collect());
        for (a, b) in pairs {
            let (ra, rb) = (c.find(*a), c.find(*b));
            if ra != rb {
                c.0[ra.max(rb)] = ra.min(rb);
            }
        }
        c
    }

    pub(crate) fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
}

/// The outcome of solving a statement's constraints.
pub(crate) struct Solved {
    pub placement: Placement,
    pub unsupported: Option<String>,
}

impl Analysis<'_> {
    /// Effective restriction of every node: own restrictions, merged across key equalities,
    /// then pushed along flows until nothing changes.
    fn effective(&self) -> (Classes, Vec<Option<KeySet>>) {
        let n = self.nodes.len();
        let mut classes = Classes::new(n, &self.bi);
        let mut eff: Vec<Option<KeySet>> = vec![None; n];
        for node in 0..n {
            let c = classes.find(node);
            if let Some(ks) = &self.own[node] {
                eff[c] = Some(match &eff[c] {
                    Some(cur) => intersect(cur, ks),
                    None => ks.clone(),
                });
            }
        }
        for _ in 0..=self.flows.len() {
            let mut changed = false;
            for (from, to) in &self.flows {
                let (cf, ct) = (classes.find(*from), classes.find(*to));
                let Some(incoming) = eff[cf].clone() else {
                    continue;
                };
                let next = match &eff[ct] {
                    Some(cur) => intersect(cur, &incoming),
                    None => incoming,
                };
                if eff[ct].as_ref() != Some(&next) {
                    eff[ct] = Some(next);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        (classes, eff)
    }

    /// The placement of the statement, and why a multi-shard run would be wrong (if it would).
    pub(crate) fn solve(&self, multi_row_insert: bool) -> Solved {
        let real: Vec<NodeId> = (0..self.nodes.len())
            .filter(|n| self.nodes[*n].real)
            .collect();
        if real.is_empty() {
            return Solved {
                placement: Placement::Default,
                unsupported: None,
            };
        }
        let (mut classes, eff) = self.effective();
        let mut coloc_pairs = self.coloc.clone();
        coloc_pairs.extend(self.bi.iter().copied());
        let mut coloc = Classes::new(self.nodes.len(), &coloc_pairs);
        let mut components: Vec<usize> = real.iter().map(|n| coloc.find(*n)).collect();
        components.sort_unstable();
        components.dedup();

        let restricted: Option<Vec<&KeySet>> = real
            .iter()
            .map(|n| eff[classes.find(*n)].as_ref())
            .collect();
        if let Some(sets) = restricted {
            let key_type = self.nodes[real[0]].key_type;
            if let Some(other) = real.iter().find(|n| self.nodes[**n].key_type != key_type) {
                return Solved {
                    placement: Placement::AllShards,
                    unsupported: Some(format!(
                        "shard keys of different types ({key_type} and {}) in one statement",
                        self.nodes[*other].key_type
                    )),
                };
            }
            let keys = sets.iter().fold(KeySet::new(), |acc, ks| union(&acc, ks));
            let unsupported = self.nested_blocks_unmergeable(&real);
            return Solved {
                placement: Placement::Keys {
                    key_type,
                    keys,
                    single_shard_required: components.len() > 1 || multi_row_insert,
                },
                unsupported,
            };
        }
        let unsupported = if components.len() > 1 {
            let same_block = real.iter().any(|a| {
                real.iter().any(|b| {
                    self.nodes[*a].block == self.nodes[*b].block && coloc.find(*a) != coloc.find(*b)
                })
            });
            Some(if same_block {
                "a join of sharded tables that is not on the shard key".to_owned()
            } else {
                "a subquery or CTE over a sharded table that is not tied to the outer query by the shard key"
                    .to_owned()
            })
        } else {
            self.nested_blocks_unmergeable(&real)
        };
        Solved {
            placement: Placement::AllShards,
            unsupported,
        }
    }

    /// Run on several shards, a nested block (subquery, derived table, CTE) over a sharded table
    /// must give per-shard rows that concatenate to the right answer: no LIMIT, DISTINCT,
    /// aggregate, window or set operation, unless it is correlated to an outer row by the key.
    fn nested_blocks_unmergeable(&self, real: &[NodeId]) -> Option<String> {
        for node in real {
            let mut block = Some(self.nodes[*node].block);
            while let Some(b) = block {
                let info = &self.blocks[b];
                if info.top || info.correlated {
                    break;
                }
                if !info.simple {
                    return Some(
                        "a subquery or CTE over a sharded table with LIMIT, DISTINCT, GROUP BY, aggregates, window functions or set operations"
                            .to_owned(),
                    );
                }
                block = info.parent;
            }
        }
        None
    }
}
