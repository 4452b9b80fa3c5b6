//! Routing hints in comments: `/* shardgate: shard_key=42 */`, `/* shardgate: shard=s1 */`,
//! `/* shardgate: role=replica */` (pairs may be combined with commas) or
//! `-- shardgate: shard=s1`. They are read from the raw text because sqlparser drops
//! comments; the lexer in [`crate::text`] keeps lookalikes inside string literals out.

use crate::plan::{Hint, RoleHint};
use crate::text::comments;

/// What the first `shardgate:` comment asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Hints {
    pub route: Option<Hint>,
    pub role: Option<RoleHint>,
}

/// Why a `shardgate:` comment is not a hint this module reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HintError {
    #[error("empty shardgate hint: {HINT_HELP}")]
    Empty,
    #[error("malformed shardgate hint `{0}`: {HINT_HELP}")]
    Malformed(String),
    #[error("shardgate hint `{0}` has no value")]
    NoValue(String),
    #[error("shardgate hint role={0}: write role=primary, role=replica or role=auto")]
    BadRole(String),
    #[error("unknown shardgate hint `{0}`: {HINT_HELP}")]
    Unknown(String),
}

const HINT_HELP: &str = "write shard_key=<key>, shard=<name> or role=primary|replica|auto";

/// The first `shardgate:` hint in the text's comments. `Err` names a `shardgate:` comment
/// that does not say `shard_key=…`, `shard=…` or `role=…` (a typo should not silently route
/// elsewhere).
pub(crate) fn find_hints(sql: &str) -> Result<Hints, HintError> {
    for comment in comments(sql) {
        let body = comment.trim_start();
        let Some(prefix) = body.get(..9) else {
            continue;
        };
        if !prefix.eq_ignore_ascii_case("shardgate") {
            continue;
        }
        let Some(rest) = body[9..].trim_start().strip_prefix(':') else {
            continue;
        };
        let mut hints = Hints::default();
        for pair in split_pairs(rest) {
            match parse_pair(pair)? {
                Pair::Route(h) => hints.route = Some(h),
                Pair::Role(r) => hints.role = Some(r),
            }
        }
        if hints == Hints::default() {
            return Err(HintError::Empty);
        }
        return Ok(hints);
    }
    Ok(Hints::default())
}

/// The routing (shard) part of the first hint only.
#[cfg(test)]
pub(crate) fn find_hint(sql: &str) -> Result<Option<Hint>, HintError> {
    find_hints(sql).map(|h| h.route)
}

enum Pair {
    Route(Hint),
    Role(RoleHint),
}

/// Splits `a=1, b='x, y'` at the commas outside quotes.
fn split_pairs(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quote = None;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn parse_pair(text: &str) -> Result<Pair, HintError> {
    let text = text.trim();
    let (name, value) = match text.split_once('=') {
        Some((n, v)) => (n.trim(), v.trim_start()),
        None => return Err(HintError::Malformed(text.to_owned())),
    };
    let value = read_value(value);
    if value.is_empty() {
        return Err(HintError::NoValue(name.to_owned()));
    }
    if name.eq_ignore_ascii_case("shard_key") {
        Ok(Pair::Route(Hint::ShardKey(value)))
    } else if name.eq_ignore_ascii_case("shard") {
        Ok(Pair::Route(Hint::Shard(value)))
    } else if name.eq_ignore_ascii_case("role") {
        RoleHint::parse(&value)
            .map(Pair::Role)
            .ok_or(HintError::BadRole(value))
    } else {
        Err(HintError::Unknown(name.to_owned()))
    }
}

/// A value: `'quoted'` / `"quoted"` (a doubled quote escapes itself), or a bare token up to
/// whitespace or a comma.
fn read_value(text: &str) -> String {
    let mut chars = text.chars().peekable();
    match chars.peek().copied() {
        Some(q @ ('\'' | '"')) => {
            chars.next();
            let mut out = String::new();
            while let Some(c) = chars.next() {
                if c == q {
                    if chars.peek() == Some(&q) {
                        chars.next();
                        out.push(q);
                    } else {
                        break;
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        _ => text
            .split(|c: char| c.is_whitespace() || c == ',')
            .next()
            .unwrap_or("")
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_line_hints() {
        assert_eq!(
            find_hint("/* shardgate: shard_key=42 */ SELECT 1"),
            Ok(Some(Hint::ShardKey("42".into())))
        );
        assert_eq!(
            find_hint("SELECT 1 -- ShardGate : SHARD = s1"),
            Ok(Some(Hint::Shard("s1".into())))
        );
        assert_eq!(
            find_hint("/*shardgate:shard_key='a b'*/ SELECT 1"),
            Ok(Some(Hint::ShardKey("a b".into())))
        );
        assert_eq!(
            find_hint("/* other */ /* shardgate: shard=\"x\"\"y\" */"),
            Ok(Some(Hint::Shard("x\"y".into())))
        );
    }

    #[test]
    fn no_hint_in_strings_or_plain_comments() {
        assert_eq!(find_hint("SELECT '/* shardgate: shard=s1 */'"), Ok(None));
        assert_eq!(find_hint("SELECT 1 /* shardgate is great */"), Ok(None));
        assert_eq!(find_hint("SELECT 1"), Ok(None));
    }

    #[test]
    fn role_hints_combine_with_routing_hints() {
        assert_eq!(
            find_hints("/* shardgate: role=replica */ SELECT 1"),
            Ok(Hints {
                route: None,
                role: Some(RoleHint::Replica)
            })
        );
        assert_eq!(
            find_hints("/* shardgate: shard_key='a,b', role=PRIMARY */ SELECT 1"),
            Ok(Hints {
                route: Some(Hint::ShardKey("a,b".into())),
                role: Some(RoleHint::Primary)
            })
        );
        assert!(find_hints("/* shardgate: role=leader */").is_err());
        assert!(find_hints("/* shardgate: */").is_err());
    }

    #[test]
    fn typos_are_errors() {
        assert!(find_hint("/* shardgate: shardkey=1 */").is_err());
        assert!(find_hint("/* shardgate: shard */").is_err());
        assert!(find_hint("/* shardgate: shard= */").is_err());
    }
}
