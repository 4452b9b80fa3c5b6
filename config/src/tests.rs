use std::path::Path;
use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
[[users]]
name = "app"
password = "secret"

[[shards]]
name = "s0"
primary = { host = "127.0.0.1", port = 5432 }
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.listen.addr, "127.0.0.1:6432");
    assert_eq!(c.pool.mode, PoolMode::Transaction);
    assert_eq!(c.pool.size, 20);
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.default_shard().name, "s0");
    assert_eq!(c.sharding.key_column, "user_id");
    assert_eq!(
        c.sharding.two_phase_recovery_interval,
        Duration::from_secs(5)
    );
}

#[test]
fn two_phase_recovery_interval_must_be_positive() {
    let text = format!("{MINIMAL}\n[sharding]\ntwo_phase_recovery_interval = \"0s\"\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("sharding.two_phase_recovery_interval"), "{e}");
    let text = format!("{MINIMAL}\n[sharding]\ntwo_phase_recovery_interval = \"250ms\"\n");
    assert_eq!(
        load(&text).unwrap().sharding.two_phase_recovery_interval,
        Duration::from_millis(250)
    );
}

#[test]
fn unknown_key_is_named_with_the_file() {
    let text = format!("{MINIMAL}\n[pool]\nsizee = 3\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("test.toml"), "{e}");
    assert!(e.contains("sizee"), "{e}");
    assert!(e.contains("size"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let text = format!("{MINIMAL}\n[pool]\nsize = \"big\"\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("size"), "{e}");
    assert!(e.contains("integer") || e.contains("u32"), "{e}");
}

#[test]
fn missing_password_is_refused() {
    let text = MINIMAL.replace("password = \"secret\"\n", "");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("users[0].password"), "{e}");
    let trust = text.replace("name = \"app\"", "name = \"app\"\nauth = \"trust\"");
    assert!(load(&trust).is_ok());
}

#[test]
fn missing_shards_and_bad_references_are_refused() {
    let e = load("[[users]]\nname='a'\npassword='b'\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`shards`"), "{e}");
    let text = format!("{MINIMAL}\n[sharding]\ndefault_shard = \"nope\"\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("sharding.default_shard"), "{e}");
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(
        parse_duration("5 parsecs"),
        Err(DurationError::UnknownUnit {
            unit: "parsecs".into(),
            text: "5 parsecs".into()
        })
    );
    assert_eq!(
        parse_duration("soon").unwrap_err().to_string(),
        "`soon` is not a duration (expected e.g. \"500ms\", \"5s\", \"10m\", \"1h\")"
    );
    assert_eq!(
        parse_duration("9999999999h"),
        Err(DurationError::OutOfRange("9999999999h".into()))
    );
    let text = format!("{MINIMAL}\n[pool]\ncheckout_timeout = \"2x\"\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("checkout_timeout") && e.contains("unit"), "{e}");
    assert_eq!(format_duration(Duration::from_secs(600)), "10m");
}

#[test]
fn example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shardgate.example.toml");
    Config::load(&path).unwrap();
}

#[test]
fn user_debug_hides_passwords() {
    let c = load(MINIMAL).unwrap();
    assert!(!format!("{:?}", c.users[0]).contains("secret"));
}

#[test]
fn sharded_tables_parse_with_overrides() {
    let text = format!(
        "{MINIMAL}\n[sharding]\nkey_type = \"int\"\n[[sharding.tables]]\nname = \"users\"\n[[sharding.tables]]\nname = \"public.events\"\nkey_column = \"account\"\nkey_type = \"uuid\"\n"
    );
    let c = load(&text).unwrap();
    assert_eq!(c.sharding.key_type, KeyType::Bigint);
    assert_eq!(c.sharding.tables.len(), 2);
    assert_eq!(c.sharding.tables[1].key_type, Some(KeyType::Uuid));
    let dup = format!("{text}[[sharding.tables]]\nname = \"USERS\"\n");
    assert!(load(&dup)
        .unwrap_err()
        .to_string()
        .contains("sharding.tables[2].name"));
    let bad = format!("{MINIMAL}\n[sharding]\nkey_type = \"float\"\n");
    let e = load(&bad).unwrap_err().to_string();
    assert!(e.contains("key_type") && e.contains("bigint"), "{e}");
}

#[test]
fn max_buffered_result_defaults_to_64_mib_and_has_a_floor() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.limits.max_buffered_result, 64 * 1024 * 1024);
    let c = load(&format!(
        "{MINIMAL}\n[limits]\nmax_buffered_result = 1048576\n"
    ))
    .unwrap();
    assert_eq!(c.limits.max_buffered_result, 1 << 20);
    let e = load(&format!("{MINIMAL}\n[limits]\nmax_buffered_result = 10\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits.max_buffered_result"), "{e}");
}

#[test]
fn an_admin_api_on_the_network_needs_a_token() {
    let open = format!("{MINIMAL}\n[admin]\nlisten = \"0.0.0.0:9930\"\n");
    let e = load(&open).unwrap_err().to_string();
    assert!(e.contains("admin.listen") && e.contains("token"), "{e}");
    assert!(load(&format!("{open}token_env = \"SG_TOKEN\"\n")).is_ok());
    assert!(load(&format!("{open}token = \"t\"\n")).is_ok());
    assert!(load(&format!("{MINIMAL}\n[admin]\nlisten = \"[::1]:9930\"\n")).is_ok());
    let unset = Admin {
        token_env: Some("SHARDGATE_CONFIG_TEST_NEVER_SET".into()),
        ..Admin::default()
    };
    assert_eq!(
        unset.resolved_token(),
        Err(AdminTokenError::EnvUnset(
            "SHARDGATE_CONFIG_TEST_NEVER_SET".into()
        ))
    );
    assert_eq!(Admin::default().resolved_token(), Ok(None));
}

#[test]
fn gather_limits_default_to_a_million_rows_and_256_mib() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.limits.max_gather_rows, 1_000_000);
    assert_eq!(c.limits.max_gather_bytes, 256 * 1024 * 1024);
    let c = load(&format!(
        "{MINIMAL}\n[limits]\nmax_gather_rows = 10\nmax_gather_bytes = 4096\n"
    ))
    .unwrap();
    assert_eq!(
        (c.limits.max_gather_rows, c.limits.max_gather_bytes),
        (10, 4096)
    );
}

#[test]
fn reference_tables_parse_and_cannot_also_be_sharded() {
    let text = format!(
        "{MINIMAL}\n[[sharding.tables]]\nname = \"orders\"\n[[sharding.reference_tables]]\nname = \"plans\"\n[[sharding.reference_tables]]\nname = \"public.countries\"\n"
    );
    let c = load(&text).unwrap();
    assert_eq!(c.sharding.reference_tables.len(), 2);
    assert_eq!(c.sharding.reference_tables[1].name, "public.countries");
    let both = format!("{text}[[sharding.reference_tables]]\nname = \"public.orders\"\n");
    let e = load(&both).unwrap_err().to_string();
    assert!(
        e.contains("sharding.reference_tables[2].name")
            && e.contains("both a reference table and a sharded table"),
        "{e}"
    );
    let dup = format!("{text}[[sharding.reference_tables]]\nname = \"PLANS\"\n");
    let e = load(&dup).unwrap_err().to_string();
    assert!(e.contains("listed twice"), "{e}");
    let bad = format!("{MINIMAL}\n[[sharding.reference_tables]]\nname = \"a.b.c\"\n");
    assert!(load(&bad)
        .unwrap_err()
        .to_string()
        .contains("not a table name"));
}

#[test]
fn worker_threads_default_to_half_the_cores_and_are_bounded() {
    let listen = load(MINIMAL).unwrap().listen;
    assert_eq!(listen.worker_threads, 0);
    assert_eq!(listen.threads(1), 1);
    assert_eq!(listen.threads(2), 1);
    assert_eq!(listen.threads(3), 1);
    assert_eq!(listen.threads(16), 8);
    let text = format!("{MINIMAL}\n[listen]\nworker_threads = 2\n");
    let listen = load(&text).unwrap().listen;
    assert_eq!(listen.worker_threads, 2);
    assert_eq!(listen.threads(2), 2);
    assert_eq!(listen.threads(64), 2);
    let text = format!("{MINIMAL}\n[listen]\nworker_threads = 5000\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(e.contains("listen.worker_threads"), "{e}");
}

#[test]
fn shard_names() {
    assert_eq!(check_shard_name("s_1-a"), Ok(()));
    assert_eq!(
        check_shard_name("a b").unwrap_err().to_string(),
        "`a b` must be 1 to 40 letters, digits, `_` or `-`"
    );
    assert_eq!(check_shard_name(""), Err(ShardNameError(String::new())));
    assert!(check_shard_name(&"x".repeat(41)).is_err());
}
