//! SQL-level cursors, read from the text with the one lexer: `DECLARE name CURSOR FOR query`
//! (to run the query across shards and hold its result in the proxy), and the commands that
//! read such a cursor (`FETCH`, `MOVE`, `CLOSE`). Only what the proxy can answer exactly is
//! recognised; anything else (a scrollable or binary cursor, a backward fetch) is reported as
//! such so the caller can refuse it with a reason.

use crate::text::{code_tokens, Lexer, Tok, TokKind};

/// The first word of `sql` (comments skipped), without lexing the rest: the planner asks
/// every statement whether it is a DECLARE.
fn first_word(sql: &str) -> Option<&str> {
    Lexer::new(sql)
        .find(|t| t.kind != TokKind::Comment)
        .filter(|t| t.kind == TokKind::Word)
        .map(|t| &sql[t.range])
}

/// `DECLARE name [BINARY] [ASENSITIVE | INSENSITIVE] [[NO] SCROLL] CURSOR [{WITH | WITHOUT} HOLD]
/// FOR query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declare {
    /// The cursor's name as PostgreSQL folds it (lower case unless quoted).
    pub name: String,
    /// The query's text (everything after `FOR`).
    pub query: String,
    /// `WITH HOLD`: the cursor outlives its transaction.
    pub hold: bool,
    /// `SCROLL`: it may be read backwards.
    pub scroll: bool,
    /// `BINARY`: rows in binary format.
    pub binary: bool,
}

/// A command on a cursor by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorCommand {
    /// `FETCH` (or `MOVE`, which skips rows without returning them).
    Fetch {
        name: String,
        count: FetchCount,
        moving: bool,
    },
    /// `CLOSE name`.
    Close(String),
    /// `CLOSE ALL`.
    CloseAll,
}

/// How many rows a FETCH or MOVE asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchCount {
    /// The next `n` rows (`NEXT` is 1, `FORWARD` alone is 1).
    Forward(u64),
    /// All remaining rows (`ALL`, `FORWARD ALL`).
    All,
    /// A direction that reads backwards or jumps (`PRIOR`, `FIRST`, `LAST`, `ABSOLUTE`,
    /// `RELATIVE`, `BACKWARD`, a negative count): the proxy holds a forward-only result.
    NotForward,
}

/// The statement as a `DECLARE … CURSOR … FOR query`, if it is one.
pub fn declare(sql: &str) -> Option<Declare> {
    if !first_word(sql)?.eq_ignore_ascii_case("declare") {
        return None;
    }
    let toks = code_tokens(sql);
    let mut words = Words::new(sql, &toks);
    if !words.keyword("declare") {
        return None;
    }
    let name = words.name()?;
    let mut d = Declare {
        name,
        query: String::new(),
        hold: false,
        scroll: false,
        binary: false,
    };
    loop {
        if words.keyword("binary") {
            d.binary = true;
        } else if words.keyword("asensitive") || words.keyword("insensitive") {
        } else if words.keyword("no") {
            if !words.keyword("scroll") {
                return None;
            }
        } else if words.keyword("scroll") {
            d.scroll = true;
        } else if words.keyword("cursor") {
            break;
        } else {
            return None;
        }
    }
    if words.keyword("with") {
        d.hold = words.keyword("hold");
        if !d.hold {
            return None;
        }
    } else if words.keyword("without") && !words.keyword("hold") {
        return None;
    }
    if !words.keyword("for") {
        return None;
    }
    let start = words.next_start()?;
    d.query = sql[start..]
        .trim_end()
        .trim_end_matches(';')
        .trim_end()
        .to_owned();
    Some(d)
}

/// The statement as `FETCH`, `MOVE` or `CLOSE` on a named cursor, if it is one.
pub fn cursor_command(sql: &str) -> Option<CursorCommand> {
    let first = first_word(sql)?;
    if !["fetch", "move", "close"]
        .iter()
        .any(|w| first.eq_ignore_ascii_case(w))
    {
        return None;
    }
    let toks = code_tokens(sql);
    let mut words = Words::new(sql, &toks);
    if words.keyword("close") {
        if words.keyword("all") {
            return words.at_end().then_some(CursorCommand::CloseAll);
        }
        let name = words.name()?;
        return words.at_end().then_some(CursorCommand::Close(name));
    }
    let moving = if words.keyword("fetch") {
        false
    } else if words.keyword("move") {
        true
    } else {
        return None;
    };
    let count = if words.keyword("next") {
        FetchCount::Forward(1)
    } else if words.keyword("forward") {
        if words.keyword("all") {
            FetchCount::All
        } else {
            words.count().unwrap_or(FetchCount::Forward(1))
        }
    } else if words.keyword("all") {
        FetchCount::All
    } else if ["prior", "first", "last", "absolute", "relative", "backward"]
        .iter()
        .any(|k| words.peek_keyword(k))
    {
        FetchCount::NotForward
    } else {
        words.count().unwrap_or(FetchCount::Forward(1))
    };
    if count == FetchCount::NotForward {
        // The name comes after the direction's own words: find the last name.
        let name = words.last_name()?;
        return Some(CursorCommand::Fetch {
            name,
            count,
            moving,
        });
    }
    // `FROM` / `IN` are optional.
    let _ = words.keyword("from") || words.keyword("in");
    let name = words.name()?;
    words.at_end().then_some(CursorCommand::Fetch {
        name,
        count,
        moving,
    })
}

/// A cursor over a statement's tokens.
struct Words<'a> {
    sql: &'a str,
    toks: &'a [Tok],
    at: usize,
}

impl<'a> Words<'a> {
    fn new(sql: &'a str, toks: &'a [Tok]) -> Words<'a> {
        Words { sql, toks, at: 0 }
    }

    fn text(&self, t: &Tok) -> &'a str {
        &self.sql[t.range.clone()]
    }

    fn peek_keyword(&self, k: &str) -> bool {
        self.toks
            .get(self.at)
            .is_some_and(|t| t.kind == TokKind::Word && self.text(t).eq_ignore_ascii_case(k))
    }

    /// Consumes the keyword `k` if it comes next.
    fn keyword(&mut self, k: &str) -> bool {
        let found = self.peek_keyword(k);
        if found {
            self.at += 1;
        }
        found
    }

    /// An identifier: folded to lower case, or a quoted one as written.
    fn name(&mut self) -> Option<String> {
        let t = self.toks.get(self.at)?;
        let text = self.text(t);
        let name = match t.kind {
            TokKind::Word => text.to_ascii_lowercase(),
            TokKind::Quoted if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') => {
                text[1..text.len() - 1].replace("\"\"", "\"")
            }
            _ => return None,
        };
        self.at += 1;
        Some(name)
    }

    /// The last token as a name (for the directions the proxy does not run).
    fn last_name(&mut self) -> Option<String> {
        let end = self
            .toks
            .iter()
            .rposition(|t| t.kind != TokKind::Semicolon)?;
        self.at = end;
        self.name()
    }

    /// A row count: a non-negative integer (a negative one reads backwards).
    fn count(&mut self) -> Option<FetchCount> {
        let mut negative = false;
        if let Some(t) = self.toks.get(self.at) {
            if t.kind == TokKind::Other && matches!(self.text(t), "-" | "+") {
                negative = self.text(t) == "-";
                self.at += 1;
            }
        }
        let t = self.toks.get(self.at)?;
        if t.kind != TokKind::Number {
            return negative.then_some(FetchCount::NotForward);
        }
        self.at += 1;
        let n: u64 = self.text(t).parse().ok()?;
        Some(if negative && n > 0 {
            FetchCount::NotForward
        } else {
            FetchCount::Forward(n)
        })
    }

    fn next_start(&self) -> Option<usize> {
        self.toks.get(self.at).map(|t| t.range.start)
    }

    fn at_end(&self) -> bool {
        self.toks[self.at..]
            .iter()
            .all(|t| t.kind == TokKind::Semicolon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_declare_as_drivers_send_it() {
        let d = declare(r#"DECLARE "c_1" CURSOR WITHOUT HOLD FOR SELECT * FROM orders ORDER BY 1"#)
            .unwrap();
        assert_eq!(d.name, "c_1");
        assert_eq!(d.query, "SELECT * FROM orders ORDER BY 1");
        assert!(!d.hold && !d.scroll && !d.binary);
        let d = declare("declare Big no scroll cursor for select 1;").unwrap();
        assert_eq!((d.name.as_str(), d.query.as_str()), ("big", "select 1"));
        let d = declare("DECLARE c BINARY SCROLL CURSOR WITH HOLD FOR SELECT 1").unwrap();
        assert!(d.hold && d.scroll && d.binary);
        assert_eq!(declare("DECLARE c CURSOR SELECT 1"), None);
        assert_eq!(declare("SELECT 1"), None);
        assert_eq!(
            declare("/* hint */ declare c cursor for select 2").map(|d| d.query),
            Some("select 2".into())
        );
    }

    #[test]
    fn reads_fetch_move_and_close() {
        let fetch = |sql| cursor_command(sql).unwrap();
        assert_eq!(
            fetch(r#"FETCH FORWARD 2000 FROM "Django_1""#),
            CursorCommand::Fetch {
                name: "Django_1".into(),
                count: FetchCount::Forward(2000),
                moving: false
            }
        );
        assert_eq!(
            fetch("fetch c"),
            CursorCommand::Fetch {
                name: "c".into(),
                count: FetchCount::Forward(1),
                moving: false
            }
        );
        assert_eq!(
            fetch("FETCH ALL IN c;"),
            CursorCommand::Fetch {
                name: "c".into(),
                count: FetchCount::All,
                moving: false
            }
        );
        assert_eq!(
            fetch("MOVE 5 c"),
            CursorCommand::Fetch {
                name: "c".into(),
                count: FetchCount::Forward(5),
                moving: true
            }
        );
        assert_eq!(
            fetch("FETCH BACKWARD 2 FROM c"),
            CursorCommand::Fetch {
                name: "c".into(),
                count: FetchCount::NotForward,
                moving: false
            }
        );
        assert_eq!(
            fetch("FETCH -1 FROM c"),
            CursorCommand::Fetch {
                name: "c".into(),
                count: FetchCount::NotForward,
                moving: false
            }
        );
        assert_eq!(fetch("CLOSE c"), CursorCommand::Close("c".into()));
        assert_eq!(fetch("close all"), CursorCommand::CloseAll);
        assert_eq!(cursor_command("SELECT 1"), None);
        assert_eq!(cursor_command("FETCH 1 FROM c extra"), None);
    }
}
