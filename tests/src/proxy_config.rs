//! The proxy configuration of the sharded end-to-end tests and benchmarks, as TOML text: this
//! crate does not depend on `shardgate-config` (whose crates' tests depend on this one), so the
//! caller parses it.

/// A transaction-mode proxy on a free loopback port (admin server too) over shard primaries on
/// 127.0.0.1 at `shard_ports` (named `s0`, `s1`, …), one login `user`/`password`, and
/// `sharded_tables`; `extra` (e.g. a `[sharding]` table) goes first.
pub fn sharded_toml(
    shard_ports: &[u16],
    user: &str,
    password: &str,
    sharded_tables: &[&str],
    extra: &str,
) -> String {
    let mut text = format!(
        r#"
{extra}

[listen]
addr = "127.0.0.1:0"
shutdown_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[pool]
mode = "transaction"
size = 4
checkout_timeout = "10s"

[[users]]
name = "{user}"
password = "{password}"
"#
    );
    for t in sharded_tables {
        text.push_str(&format!("\n[[sharding.tables]]\nname = \"{t}\"\n"));
    }
    for (i, port) in shard_ports.iter().enumerate() {
        text.push_str(&format!(
            "\n[[shards]]\nname = \"s{i}\"\nprimary = {{ host = \"127.0.0.1\", port = {port} }}\n"
        ));
    }
    text
}
