//! Global transaction ids of the prepared transactions a proxy leaves on shards:
//! `sg_<proxy>_<txid>_<shard>`. The proxy part is the proxy id sanitized to `[A-Za-z0-9-]`, so
//! the first two `_` after `sg_` always delimit it and the decimal txid; the shard name (which
//! may hold `_`) is the rest. Recovery finds its own transactions, and those of other proxies,
//! by parsing them.

/// What every gid starts with.
pub(crate) const PREFIX: &str = "sg_";

/// The longest proxy token: a gid stays under PostgreSQL's 200 bytes with a 40-character shard
/// name (the config's limit) and a 20-digit txid.
const MAX_TOKEN: usize = 64;

/// A parsed gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gid {
    /// The proxy's token (see [`token`]).
    pub proxy: String,
    pub txid: u64,
    pub shard: String,
}

/// The token a proxy id becomes in gids: characters other than ASCII letters, digits and `-`
/// become `-`, cut to 64 characters (`-` for an empty id).
pub(crate) fn token(proxy_id: &str) -> String {
    let token: String = proxy_id
        .chars()
        .take(MAX_TOKEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if token.is_empty() {
        "-".to_owned()
    } else {
        token
    }
}

/// The gid of transaction `txid` of the proxy with token `token` on `shard`.
pub(crate) fn format(token: &str, txid: u64, shard: &str) -> String {
    format!("{PREFIX}{token}_{txid}_{shard}")
}

/// Reads a gid written by [`format`]; `None` for any other text.
pub(crate) fn parse(gid: &str) -> Option<Gid> {
    let rest = gid.strip_prefix(PREFIX)?;
    let (proxy, rest) = rest.split_once('_')?;
    let (txid, shard) = rest.split_once('_')?;
    let token_ok =
        !proxy.is_empty() && proxy.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !token_ok || txid.is_empty() || !txid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if shard.is_empty() {
        return None;
    }
    Some(Gid {
        proxy: proxy.to_owned(),
        txid: txid.parse().ok()?,
        shard: shard.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip() {
        for (proxy_id, shard) in [
            ("shardgate-0:6432", "s0"),
            ("host.example.com:6432", "orders_eu_1"),
            ("pod_7", "_"),
            ("", "s-1"),
            ("ünïcode proxy", "a__b"),
        ] {
            let t = token(proxy_id);
            for txid in [0, 1, 1_733_000_000_123_456, u64::MAX] {
                let gid = format(&t, txid, shard);
                assert!(gid.starts_with("sg_"), "{gid}");
                assert_eq!(
                    parse(&gid),
                    Some(Gid {
                        proxy: t.clone(),
                        txid,
                        shard: shard.to_owned()
                    }),
                    "{gid}"
                );
            }
        }
    }

    #[test]
    fn tokens_are_sanitized_and_bounded() {
        assert_eq!(token("shardgate-0:6432"), "shardgate-0-6432");
        assert_eq!(token("a_b.c d"), "a-b-c-d");
        assert_eq!(token("ünï"), "-n-");
        assert_eq!(token(""), "-");
        assert_eq!(token(&"x".repeat(100)).len(), 64);
        let longest = format(&token(&"x".repeat(100)), u64::MAX, &"s".repeat(40));
        assert!(longest.len() < 200, "{} bytes", longest.len());
    }

    #[test]
    fn other_texts_are_not_gids() {
        for text in [
            "",
            "sg_",
            "sg_p",
            "sg_p_12",
            "sg_p_12_",
            "sg__12_s0",
            "sg_p_x1_s0",
            "sg_p_+1_s0",
            "sg_p__s0",
            "sg_p.q_1_s0",
            "xx_p_1_s0",
            "sg_p_99999999999999999999999_s0",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
    }
}
