//! The one error type of localpg (also the test harness's): every failure names the command
//! or file involved and carries what the tool printed, so a failure says why without a rerun.

use std::io;
use std::path::PathBuf;

/// Result alias used throughout localpg.
pub type Result<T, E = LocalPgError> = std::result::Result<T, E>;

/// Everything that can go wrong while finding, starting, driving or cleaning up PostgreSQL and
/// the driver environments.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// A PostgreSQL program (initdb, pg_ctl, psql, …) was not found anywhere we looked.
    #[error("could not find the PostgreSQL program `{name}`; searched: {searched}")]
    BinaryNotFound {
        /// The program that was asked for.
        name: String,
        /// Every place that was looked at, in order.
        searched: String,
    },

    /// A program could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why the OS refused.
        #[source]
        source: io::Error,
    },

    /// A program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status})\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Exit status as printed by the OS.
        status: String,
        /// Everything the program printed on stdout.
        stdout: String,
        /// Everything the program printed on stderr.
        stderr: String,
    },

    /// A file system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A PostgreSQL server did not come up.
    #[error(
        "PostgreSQL in {data_dir} did not start: {reason}\n--- server log (tail) ---\n{log_tail}"
    )]
    StartFailed {
        /// The data directory of the server.
        data_dir: PathBuf,
        /// What went wrong.
        reason: String,
        /// The last lines of the server log.
        log_tail: String,
    },

    /// Something did not happen in time.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long was waited.
        seconds: u64,
    },

    /// A tool's output did not have the expected shape.
    #[error("could not find {what} in the output:\n{output}")]
    Parse {
        /// What was looked for.
        what: String,
        /// The output that was searched.
        output: String,
    },
}

impl LocalPgError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        LocalPgError::Io {
            context: context.into(),
            source,
        }
    }

    /// The stderr of a failed command, if this error is one.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            LocalPgError::CommandFailed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}
