//! The sharded tables of the config, and how table and column names are matched against
//! them: PostgreSQL's identifier folding (quoted keeps case, unquoted is lower-cased), schema-
//! qualified names, and unqualified config names that match a table in any schema.

use shardgate_config::{KeyType, Sharding};
use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

/// Identifier as PostgreSQL folds it: quoted keeps its case, unquoted is lower-cased.
pub(crate) fn norm(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

pub(crate) fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(id) => norm(id),
            ObjectNamePart::Function(f) => f.name.value.to_lowercase(),
        })
        .collect()
}

/// A config name (`orders`, `public.orders`, `"Orders"`) as PostgreSQL would fold it.
pub(crate) fn config_parts(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = name.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '.' if !quoted => {
                parts.push(fold(&cur, was_quoted));
                cur.clear();
                was_quoted = false;
            }
            c => cur.push(c),
        }
    }
    parts.push(fold(&cur, was_quoted));
    parts
}

fn fold(s: &str, quoted: bool) -> String {
    if quoted {
        s.to_owned()
    } else {
        s.trim().to_lowercase()
    }
}

/// A sharded table from the config.
#[derive(Debug, Clone)]
pub(crate) struct TableRule {
    pub schema: Option<String>,
    pub name: String,
    pub key_column: String,
    pub key_type: KeyType,
}

/// A table name of `[sharding]` that cannot be matched against references.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RulesError {
    #[error("sharded table name `{0}` is not `table` or `schema.table`")]
    ShardedTableName(String),
    #[error("sharded table `{0}` has an empty key column")]
    EmptyKeyColumn(String),
    #[error("reference table name `{0}` is not `table` or `schema.table`")]
    ReferenceTableName(String),
}

/// The sharded tables, ready for matching references.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub tables: Vec<TableRule>,
    /// Reference tables as (schema, table), folded; `None` schema matches any.
    pub references: Vec<(Option<String>, String)>,
}

impl Rules {
    pub(crate) fn from_config(s: &Sharding) -> Result<Rules, RulesError> {
        let mut tables = Vec::new();
        for t in &s.tables {
            let mut parts = config_parts(&t.name);
            let name = parts.pop().unwrap_or_default();
            if name.is_empty() || parts.len() > 1 || parts.iter().any(String::is_empty) {
                return Err(RulesError::ShardedTableName(t.name.clone()));
            }
            let key = t.key_column.as_deref().unwrap_or(&s.key_column);
            let key_column = config_parts(key).pop().unwrap_or_default();
            if key_column.is_empty() {
                return Err(RulesError::EmptyKeyColumn(t.name.clone()));
            }
            tables.push(TableRule {
                schema: parts.pop(),
                name,
                key_column,
                key_type: t.key_type.unwrap_or(s.key_type),
            });
        }
        let mut references = Vec::new();
        for t in &s.reference_tables {
            let mut parts = config_parts(&t.name);
            let name = parts.pop().unwrap_or_default();
            if name.is_empty() || parts.len() > 1 || parts.iter().any(String::is_empty) {
                return Err(RulesError::ReferenceTableName(t.name.clone()));
            }
            references.push((parts.pop(), name));
        }
        Ok(Rules { tables, references })
    }

    /// Whether a table reference names a reference table (and no sharded table: those win).
    pub(crate) fn lookup_reference(&self, name: &ObjectName) -> bool {
        if self.references.is_empty() || self.lookup(name).is_some() {
            return false;
        }
        let parts = name_parts(name);
        let (table, schema) = match parts.as_slice() {
            [.., s, t] => (t, Some(s)),
            [t] => (t, None),
            [] => return false,
        };
        self.references.iter().any(|(rs, rt)| {
            rt == table
                && match (rs, schema) {
                    (Some(rs), Some(s)) => rs == s,
                    _ => true,
                }
        })
    }

    /// The key column of a sharded table named as in [`crate::plan::Plan::sharded_tables`].
    pub(crate) fn key_column_of(&self, display: &str) -> Option<&str> {
        let parts = config_parts(display);
        let name = parts.last()?;
        self.tables
            .iter()
            .find(|r| &r.name == name)
            .map(|r| r.key_column.as_str())
    }

    /// The rule for a table reference; unqualified references match any schema.
    pub(crate) fn lookup(&self, name: &ObjectName) -> Option<usize> {
        let parts = name_parts(name);
        let (table, schema) = match parts.as_slice() {
            [.., s, t] => (t, Some(s)),
            [t] => (t, None),
            [] => return None,
        };
        self.tables.iter().position(|r| {
            &r.name == table
                && match (&r.schema, schema) {
                    (Some(rs), Some(s)) => rs == s,
                    _ => true,
                }
        })
    }
}
