//! shardgate's configuration: the TOML schema with its defaults, loading, and validation.
//!
//! Every key has a default where one makes sense, unknown keys are refused, and every error
//! names the file, the key and what was expected, so an operator can fix it without reading
//! code. The types here are plain data; the other crates read them and never parse TOML.

mod duration;
mod schema;
mod sharding;
mod stats;
mod timeouts;
mod validate;

use std::path::{Path, PathBuf};

pub use duration::{format_duration, parse_duration, DurationError};
pub use schema::*;
pub use sharding::*;
pub use stats::Stats;
pub use timeouts::Timeouts;
pub use validate::{check_shard_name, ShardNameError};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        validate::validate(&config).map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        })?;
        Ok(config)
    }

    /// Finds a configured user by name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The shard that holds unsharded tables (and everything, while there is one shard).
    pub fn default_shard(&self) -> &Shard {
        let name = self.sharding.default_shard.as_deref();
        name.and_then(|n| self.shards.iter().find(|s| s.name == n))
            .or_else(|| self.shards.first())
            .expect("validation guarantees at least one shard")
    }
}

#[cfg(test)]
mod tests;
