//! Running programs: PostgreSQL refuses to run as root, so when the tests run as root the
//! server-side programs are run as the `postgres` user; this module also captures output into
//! [`LocalPgError`]s and spawns the detached watchdogs that clean up after a killed test process.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::error::{LocalPgError, Result};

/// The account server programs run as when the process itself runs as root.
pub const SERVER_USER: &str = "postgres";

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How commands are switched to [`SERVER_USER`] when running as root.
#[derive(Debug, Clone)]
enum Switch {
    Runuser(PathBuf),
    Su(PathBuf),
}

fn find_in_path(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn switch() -> Result<&'static Switch> {
    static SWITCH: OnceLock<Option<Switch>> = OnceLock::new();
    SWITCH
        .get_or_init(|| {
            let sbin = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
            find_in_path("runuser", &sbin)
                .map(Switch::Runuser)
                .or_else(|| find_in_path("su", &sbin).map(Switch::Su))
        })
        .as_ref()
        .ok_or_else(|| LocalPgError::BinaryNotFound {
            name: "runuser or su".into(),
            searched: "PATH, /usr/sbin, /sbin, /usr/bin, /bin".into(),
        })
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A command that runs `program` as [`SERVER_USER`] when we are root, and directly otherwise.
/// The environment is passed through (runuser and su without `-l` keep it, apart from HOME,
/// SHELL, USER and LOGNAME). The working directory is `/`, which every user can enter.
pub fn server_command<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<Command> {
    let mut cmd = if !is_root() {
        let mut c = Command::new(program);
        c.args(args);
        c
    } else {
        match switch()? {
            Switch::Runuser(runuser) => {
                let mut c = Command::new(runuser);
                c.args(["-u", SERVER_USER, "--"]).arg(program).args(args);
                c
            }
            Switch::Su(su) => {
                let mut line = shell_quote(&program.to_string_lossy());
                for a in args {
                    line.push(' ');
                    line.push_str(&shell_quote(&a.as_ref().to_string_lossy()));
                }
                let mut c = Command::new(su);
                c.args([SERVER_USER, "-s", "/bin/sh", "-c"]).arg(line);
                c
            }
        }
    };
    cmd.current_dir("/");
    Ok(cmd)
}

/// The shell text that runs `line` (already quoted) as [`SERVER_USER`] when we are root.
pub fn server_shell_line(line: &str) -> Result<String> {
    if !is_root() {
        return Ok(line.to_string());
    }
    Ok(match switch()? {
        Switch::Runuser(runuser) => format!(
            "{} -u {SERVER_USER} -- {line}",
            shell_quote(&runuser.to_string_lossy())
        ),
        Switch::Su(su) => format!(
            "{} {SERVER_USER} -s /bin/sh -c {}",
            shell_quote(&su.to_string_lossy()),
            shell_quote(line)
        ),
    })
}

/// A printable form of a command line (program and arguments; never the environment, which is
/// where passwords go).
pub fn describe(cmd: &Command) -> String {
    let mut s = shell_quote(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&shell_quote(&a.to_string_lossy()));
    }
    s
}

/// Runs `cmd` to completion with `stdin` as its input, capturing stdout and stderr; a non-zero
/// exit becomes [`LocalPgError::CommandFailed`].
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output> {
    let output = run_unchecked(cmd, stdin)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(failed(cmd, &output))
    }
}

/// Like [`run`] but returns the output whatever the exit status.
pub fn run_unchecked(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err = |source| LocalPgError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that exits early closes its stdin; its exit status tells the story then.
        let _ = pipe.write_all(input);
    }
    child.wait_with_output().map_err(spawn_err)
}

/// The error for a command that exited unsuccessfully.
pub fn failed(cmd: &Command, output: &Output) -> LocalPgError {
    LocalPgError::CommandFailed {
        command: describe(cmd),
        status: output.status.to_string(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The uid and gid of [`SERVER_USER`].
fn server_ids() -> Result<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    let ids = IDS.get_or_init(|| {
        let name = std::ffi::CString::new(SERVER_USER).ok()?;
        // SAFETY: getpwnam_r writes only into the buffers we pass, sized as given; `result`
        // points at `pwd` or is null.
        unsafe {
            let mut pwd: libc::passwd = std::mem::zeroed();
            let mut buf = vec![0 as libc::c_char; 16 * 1024];
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            );
            (rc == 0 && !result.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
        }
    });
    ids.ok_or_else(|| {
        LocalPgError::io(
            format!("running as root, but there is no `{SERVER_USER}` user to run PostgreSQL as"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })
}

/// Makes `path` (not recursively) owned by [`SERVER_USER`] when we are root; no-op otherwise.
pub fn give_to_server_user(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = server_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| LocalPgError::io(format!("chown {} to {SERVER_USER}", path.display()), e))
}

/// Writes `contents` to `path` and makes the file the server user's.
pub fn write_server_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(|e| LocalPgError::io(format!("write {}", path.display()), e))?;
    give_to_server_user(path)
}

/// A detached watchdog process started by [`spawn_watchdog`].
#[derive(Debug)]
pub struct Watchdog {
    pid: i32,
    guard: PathBuf,
}

impl Watchdog {
    /// Ends the watchdog now instead of letting it notice within a second that its guard is
    /// gone. Checks the process is still our watchdog (by its command line) before signalling.
    pub fn dismiss(&self) {
        let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", self.pid)) else {
            return;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(WATCHDOG_NAME) && cmdline.contains(&*self.guard.to_string_lossy()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(self.pid, libc::SIGTERM);
            }
        }
    }
}

const WATCHDOG_NAME: &str = "shardgate-watchdog";

/// Spawns a detached shell (own session, re-parented to init) that waits while this process
/// lives and `guard` exists, then, if this process died first, runs `cleanup` (shell text).
/// It exits by itself within a second once `guard` disappears; [`Watchdog::dismiss`] ends it
/// at once.
pub fn spawn_watchdog(guard: &Path, cleanup: &str) -> Result<Watchdog> {
    const SCRIPT: &str = r#"parent=$1; guard=$2; cleanup=$3
while kill -0 "$parent" 2>/dev/null; do
  [ -e "$guard" ] || exit 0
  sleep 1
done
[ -e "$guard" ] && sh -c "$cleanup"
exit 0"#;
    // The outer sh backgrounds the watchdog, prints its pid and exits at once, so the watchdog
    // is not our child (no zombie) and outlives us; setsid takes it out of our process group
    // and terminal so a Ctrl-C aimed at the tests does not kill it.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"setsid sh -c "$1" "$2" "$3" "$4" "$5" </dev/null >/dev/null 2>&1 & echo $!"#)
        .arg("sh")
        .arg(SCRIPT)
        .arg(WATCHDOG_NAME)
        .arg(std::process::id().to_string())
        .arg(guard)
        .arg(cleanup)
        .current_dir("/");
    let out = run(&mut cmd, None)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pid = text.trim().parse().map_err(|_| LocalPgError::Parse {
        what: "the watchdog's pid".into(),
        output: text.to_string(),
    })?;
    Ok(Watchdog {
        pid,
        guard: guard.to_path_buf(),
    })
}
