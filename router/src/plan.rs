//! What the router decides about a statement from its text alone (cached by text), and how a
//! decision becomes a concrete route once parameter values are known.

use shardgate_config::KeyType;

/// What kind of statement it is, as far as routing, roles and transactions care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE, WITH … SELECT. `locking` for FOR UPDATE / FOR SHARE (and
    /// FOR NO KEY UPDATE / FOR KEY SHARE). `side_effects` when it calls a function known to
    /// write (nextval, setval, pg_advisory_lock*, set_config, …).
    Read {
        locking: bool,
        side_effects: bool,
    },
    /// INSERT, UPDATE, DELETE, MERGE, COPY … FROM, and WITH queries containing them.
    Write,
    /// CREATE / ALTER / DROP / TRUNCATE / CREATE INDEX / COMMENT / GRANT / REVOKE …
    Ddl,
    /// BEGIN / START TRANSACTION; `read_only` for `READ ONLY`.
    Begin {
        read_only: bool,
    },
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO, PREPARE TRANSACTION, SET CONSTRAINTS, …
    TransactionOther,
    /// `SET TRANSACTION …` (not `SET SESSION CHARACTERISTICS`); `read_only` for READ ONLY.
    SetTransaction {
        read_only: bool,
    },
    /// A session SET / RESET / DISCARD that is not one of shardgate's own.
    Set,
    /// `SET [LOCAL] shardgate.shard_key|shardgate.shard = …` or `RESET shardgate.…`.
    ShardgateSet(ShardgateSetting),
    /// `SHARDGATE ROUTE <statement>`: answer where the statement would go.
    ShardgateRoute(String),
    /// SHOW, EXPLAIN, LISTEN, VACUUM, ANALYZE, and other statements that are neither reads of
    /// sharded data nor writes.
    Utility,
    /// sqlparser could not parse it (e.g. `DO $$…$$`, `CREATE PUBLICATION`).
    Unparsed,
}

/// A `SET shardgate.…` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardgateSetting {
    pub name: ShardgateParam,
    /// `None` for RESET or `SET … TO DEFAULT`.
    pub value: Option<String>,
    /// `SET LOCAL`: for the current transaction only.
    pub local: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardgateParam {
    ShardKey,
    Shard,
    /// `shardgate.role = primary | replica | auto`: where reads go.
    Role,
}

/// Which server of a shard a statement should use, when a hint or `SET shardgate.role` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoleHint {
    /// Always the primary.
    Primary,
    /// Reads on a replica (writes still go to the primary, or fail there if in a read-only
    /// transaction).
    Replica,
    /// shardgate decides (the default).
    Auto,
}

impl RoleHint {
    pub fn parse(value: &str) -> Option<RoleHint> {
        match value.trim().to_ascii_lowercase().as_str() {
            "primary" => Some(RoleHint::Primary),
            "replica" => Some(RoleHint::Replica),
            "auto" => Some(RoleHint::Auto),
            _ => None,
        }
    }
}

/// A shard-key value, typed as the table's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
}

/// Where a shard key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyExpr {
    /// A literal in the statement.
    Value(KeyValue),
    /// Parameter `$n` (1-based), bound at Bind.
    Param(usize),
    /// Parameter `$n` holding an array of keys (`key = ANY($n)`): every element is a key.
    ParamArray(usize),
}

/// Which shards a statement needs, before parameter values are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Touches no sharded table: the default shard.
    Default,
    /// Touches sharded tables and names keys: the shards owning them. For an IN list (or
    /// `= ANY`) any subset; for a multi-row INSERT every row must land on one shard.
    Keys {
        key_type: KeyType,
        keys: Vec<KeyExpr>,
        single_shard_required: bool,
    },
    /// Touches sharded tables without a usable key: every shard (a cross-shard read, a
    /// broadcast DDL, or a refused keyless write).
    AllShards,
}

/// A routing hint in a comment: `/* shardgate: shard_key=42 */` or `/* shardgate: shard=s1 */`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    ShardKey(String),
    Shard(String),
}

/// Everything the router knows about a statement text.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub kind: StatementKind,
    pub placement: Placement,
    pub hint: Option<Hint>,
    /// `/* shardgate: role=… */` in the text.
    pub role_hint: Option<RoleHint>,
    /// Sharded tables the statement touches (as written, lower-cased), for messages.
    pub sharded_tables: Vec<String>,
    /// The statement reads a table that is not sharded (so lives on the default shard).
    /// Reference tables do not count: every shard has them.
    pub unsharded_tables: bool,
    /// The tables that are neither sharded nor reference tables, as written (lower-cased),
    /// for the sharding readiness report.
    pub other_tables: Vec<String>,
    /// Reference tables the statement touches (as written, lower-cased): they add no
    /// placement, so a read of reference tables alone runs on any one shard.
    pub reference_tables: Vec<String>,
    /// A write or DDL on reference tables: it runs on every shard (`placement` is
    /// `AllShards`) and the client gets one copy's answer.
    pub reference_write: Option<crate::reference::ReferenceWrite>,
    /// For a cross-shard read that cannot be merged correctly: the feature that prevents it
    /// (e.g. "DISTINCT across shards"), reported as 0A000.
    pub unsupported_cross_shard: Option<String>,
    /// Number of statements in the text (a simple Query may carry several).
    pub statement_count: usize,
    /// The kind of each statement, in order (`kind` is their combination: the most demanding
    /// of Write/Unparsed > Ddl > Read, else the first), so that e.g. a `SET shardgate.…` inside
    /// a multi-statement text is not lost.
    pub statement_kinds: Vec<StatementKind>,
    /// A refusal known from the text alone (a malformed key literal, an UPDATE of the key
    /// column to an unknown value, an INSERT without a column list…): routing it fails.
    pub refusal: Option<Refusal>,
    /// Key type of the first sharded table the statement touches: a `shard_key` hint is hashed
    /// as this type (the configured default type when there is none).
    pub key_type: Option<KeyType>,
    /// New key values an UPDATE (or `ON CONFLICT DO UPDATE`) assigns to the key column: each
    /// must land on the statement's one shard, or the row would end up on the wrong shard.
    pub key_updates: Vec<KeyExpr>,
    /// The command of the (first) statement, upper case: `SELECT`, `INSERT`, `UPDATE`,
    /// `DELETE`, `MERGE`, `COPY`, … (`""` for unparsed text); for messages.
    pub command: &'static str,
    /// For a read that may run on several shards: how to merge the shards' results.
    pub merge: Option<crate::merge::MergeSpec>,
    /// For a cross-shard read neither pushed down nor merged exactly in the proxy: how to
    /// gather it into PostgreSQL (then `merge` is `None` and nothing is refused).
    pub gather: Option<crate::gather::GatherSpec>,
    /// For one multi-row `INSERT … VALUES` into a sharded table whose rows each name their key
    /// (a literal, a parameter or NULL): the key of every row, so that
    /// [`crate::Router::split_insert`] can split the rows by shard. `route` still refuses such a
    /// statement when its rows span shards; a proxy that runs the split asks for it first.
    pub insert_rows: Option<std::sync::Arc<crate::split::InsertRowKeys>>,
    /// For `COPY <sharded table> FROM STDIN`: how its data splits by key. `route` refuses
    /// the statement (it needs every shard, row by row); a proxy that splits COPY asks for it.
    pub copy_in: Option<std::sync::Arc<crate::copy_in::CopyInSpec>>,
    /// For `COPY … TO STDOUT` that may run on several shards: how their outputs join.
    pub copy_out: Option<crate::copy_in::CopyOutSpec>,
    /// For `DECLARE … CURSOR FOR query`: the cursor, while the rest of the plan is the
    /// query's (so a cursor over several shards is planned as that read, and a proxy can hold
    /// its result for FETCH).
    pub cursor: Option<std::sync::Arc<crate::cursor::Declare>>,
}

/// A statement shardgate refuses to route, with the SQLSTATE and message the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    /// Whether a routing hint (comment or session) lifts the refusal: true for "shardgate
    /// cannot see where this goes" (e.g. INSERT without a column list), false for errors in
    /// the statement itself (a malformed key literal).
    pub hint_overrides: bool,
}

impl Plan {
    /// A plan with the given kind that touches no sharded table.
    pub fn simple(kind: StatementKind, command: &'static str) -> Plan {
        Plan {
            statement_kinds: vec![kind.clone()],
            kind,
            placement: Placement::Default,
            hint: None,
            role_hint: None,
            sharded_tables: Vec::new(),
            unsharded_tables: false,
            other_tables: Vec::new(),
            reference_tables: Vec::new(),
            reference_write: None,
            unsupported_cross_shard: None,
            statement_count: 1,
            refusal: None,
            key_type: None,
            key_updates: Vec::new(),
            command,
            merge: None,
            gather: None,
            insert_rows: None,
            copy_in: None,
            copy_out: None,
            cursor: None,
        }
    }

    /// Whether the statement is a multi-row INSERT that [`crate::Router::split_insert`] may
    /// split into one INSERT per shard (it does when the rows' keys span shards).
    pub fn splittable_insert(&self) -> bool {
        self.insert_rows.is_some()
    }

    /// Whether the text may run on a replica when no transaction is open: every statement is
    /// a plain read (no FOR UPDATE/SHARE, no function with side effects), possibly inside a
    /// `BEGIN READ ONLY` (or `BEGIN; SET TRANSACTION READ ONLY`) … `COMMIT` of its own. A
    /// read inside a read-write transaction belongs on the primary with the transaction.
    pub fn runs_on_replica(&self) -> bool {
        use StatementKind as K;
        // Some(read_only) while a transaction opened by this text is open.
        let mut transaction: Option<bool> = None;
        for kind in &self.statement_kinds {
            match kind {
                K::Read {
                    locking: false,
                    side_effects: false,
                } if transaction != Some(false) => {}
                K::Begin { read_only } if transaction.is_none() => transaction = Some(*read_only),
                K::SetTransaction { read_only: true } if transaction.is_some() => {
                    transaction = Some(true)
                }
                K::Commit | K::Rollback if transaction == Some(true) => transaction = None,
                _ => return false,
            }
        }
        self.statement_count > 0 && transaction != Some(false)
    }
}
