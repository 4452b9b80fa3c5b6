//! Routing hints in comments: `/* shardgate: shard_key=42 */`, `/* shardgate: shard=s1 */`
//! or `-- shardgate: shard=s1`. They are read from the raw text because sqlparser drops
//! comments; the lexer in [`crate::text`] keeps lookalikes inside string literals out.

use crate::plan::Hint;
use crate::text::comments;

/// The first `shardgate:` hint in the text's comments. `Err` names a `shardgate:` comment
/// that does not say `shard_key=…` or `shard=…` (a typo should not silently route elsewhere).
pub(crate) fn find_hint(sql: &str) -> Result<Option<Hint>, String> {
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
        return parse_pairs(rest).map(Some);
    }
    Ok(None)
}

fn parse_pairs(text: &str) -> Result<Hint, String> {
    let text = text.trim();
    let (name, value) = match text.split_once('=') {
        Some((n, v)) => (n.trim(), v.trim_start()),
        None => {
            return Err(format!(
                "malformed shardgate hint `{text}`: write shard_key=<key> or shard=<name>"
            ))
        }
    };
    let value = read_value(value);
    if value.is_empty() {
        return Err(format!("shardgate hint `{name}` has no value"));
    }
    if name.eq_ignore_ascii_case("shard_key") {
        Ok(Hint::ShardKey(value))
    } else if name.eq_ignore_ascii_case("shard") {
        Ok(Hint::Shard(value))
    } else {
        Err(format!(
            "unknown shardgate hint `{name}`: write shard_key=<key> or shard=<name>"
        ))
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
    fn typos_are_errors() {
        assert!(find_hint("/* shardgate: shardkey=1 */").is_err());
        assert!(find_hint("/* shardgate: shard */").is_err());
        assert!(find_hint("/* shardgate: shard= */").is_err());
    }
}
