//! Prepared transactions the tests leave behind are rolled back, also when a test fails
//! halfway: a prepared transaction would hold its locks until its server stops.

use shardgate_tests::PgCluster;

/// Rolls back every prepared transaction left on the shards when dropped, also when the test
/// fails halfway: a prepared transaction would otherwise hold its locks until the server stops.
/// Declare it after whatever owns the clusters, so it runs before they stop.
pub struct RollBackLeftovers {
    /// (port, superuser password) of each shard.
    pub shards: Vec<(u16, String)>,
}

impl RollBackLeftovers {
    pub fn of(shards: &[PgCluster]) -> RollBackLeftovers {
        RollBackLeftovers {
            shards: shards
                .iter()
                .map(|c| (c.port(), c.superuser_password().to_owned()))
                .collect(),
        }
    }

    /// Rolls back what is left; returns how many there were.
    pub fn run(&self) -> usize {
        let mut left = 0;
        for (port, password) in &self.shards {
            let url = |db: &str| format!("postgres://postgres:{password}@127.0.0.1:{port}/{db}");
            let Ok(out) = shardgate_tests::psql_url(
                &url("postgres"),
                "select gid, database from pg_prepared_xacts",
            ) else {
                continue;
            };
            for line in out.lines().filter(|l| !l.is_empty()) {
                let Some((gid, db)) = line.split_once('|') else {
                    continue;
                };
                left += 1;
                let _ = shardgate_tests::psql_url(
                    &url(db),
                    &format!("rollback prepared '{}'", gid.replace('\'', "''")),
                );
            }
        }
        left
    }
}

impl Drop for RollBackLeftovers {
    fn drop(&mut self) {
        self.run();
    }
}
