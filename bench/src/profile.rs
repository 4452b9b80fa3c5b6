//! `profile`: the release shardgate binary under `valgrind --tool=callgrind`, with a fixed
//! pgbench load per protocol; reports instructions per transaction and the functions that
//! cost the most (self and inclusive), and records them in the `profile` section of
//! `bench/RESULTS.md`.
//!
//! Instrumentation is off while the proxy starts and while a warm-up run opens its pool
//! (`--instr-atstart=no`); it is switched on (and the counters zeroed) with `callgrind_control`
//! just before the measured run and dumped right after it, so the figures cover the measured
//! transactions plus the logins of that run's clients.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use shardgate_tests::{Auth, ClusterOptions, PgCluster};

use crate::service::{PidSource, Service};
use crate::{pgbench_base_args, run_pgbench, shardgate, DB, PASSWORD, USER};

#[derive(Args, Clone)]
pub struct ProfileArgs {
    /// Transactions per client in the measured run (pgbench -t).
    #[arg(long, default_value_t = 2000)]
    transactions: u32,
    /// pgbench clients.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Workloads to profile: a protocol for `pgbench -S` (`simple`, `extended`, `prepared`),
    /// or `tpcb` (pgbench's TPC-B-like script, `-M simple`: seven statements per transaction).
    #[arg(long, value_delimiter = ',', default_value = "simple,extended")]
    modes: Vec<String>,
    /// Idle clients logged in (before instrumentation starts) and held during the runs, to
    /// see what many idle sessions cost the active ones.
    #[arg(long, default_value_t = 0)]
    idle: u32,
    /// Functions listed per view.
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Use this shardgate binary instead of building the release one.
    #[arg(long)]
    shardgate_bin: Option<PathBuf>,
    /// Where to record the results (the `profile` section is replaced).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/RESULTS.md"))]
    results: PathBuf,
    /// Print only; leave the results file alone.
    #[arg(long)]
    no_write: bool,
    /// Copy the callgrind dumps here (for `callgrind_annotate --tree=caller` or kcachegrind).
    #[arg(long)]
    keep_dumps: Option<PathBuf>,
    /// shardgate's `RUST_LOG`: its own default (`info`, which enables each session's span:
    /// entered and left at every poll), or e.g. `warn` to leave that cost out.
    #[arg(long, default_value = shardgate::DEFAULT_LOG)]
    log: String,
    /// Route `pgbench_accounts` by `aid` (compare's `sg-sharded`: every statement planned and
    /// routed by its key) instead of pooling plainly, for the routing's instructions.
    #[arg(long)]
    sharded: bool,
    /// Profile the floor pooler (`compare`'s `floor` target) instead of shardgate: what a
    /// minimal tokio pooler spends per transaction, for scale.
    #[arg(long, conflicts_with_all = ["sharded", "shardgate_bin", "idle"])]
    floor: bool,
    /// Run valgrind's cache model too (`--cache-sim=yes`, slower): level-1 instruction and
    /// data cache misses per transaction, which instructions alone do not show.
    #[arg(long)]
    cache_sim: bool,
}

/// One line of `callgrind_annotate` output: instructions, share, and the function.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub ir: u64,
    pub percent: f64,
    pub function: String,
}

/// Parses `callgrind_annotate` output: the `PROGRAM TOTALS` line and the function lines
/// after it (`12,345 (10.00%)  file:function [object]`), in the order printed.
pub fn parse_annotate(text: &str) -> Option<(u64, Vec<Cost>)> {
    let mut total = None;
    let mut costs = Vec::new();
    for line in text.lines() {
        let Some(cost) = parse_cost_line(line) else {
            // The function list ends at the first blank line after it began (source
            // annotation, if any, follows and repeats costs per line and per call).
            if !costs.is_empty() && line.trim().is_empty() {
                break;
            }
            continue;
        };
        if cost.function == "PROGRAM TOTALS" {
            total = Some(cost.ir);
        } else if total.is_some() {
            costs.push(cost);
        }
    }
    Some((total?, costs))
}

fn parse_cost_line(line: &str) -> Option<Cost> {
    let line = line.trim_start();
    let (number, rest) = line.split_once(' ')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b',') {
        return None;
    }
    let ir: u64 = number.replace(',', "").parse().ok()?;
    let rest = rest.trim_start().strip_prefix('(')?;
    let (pct, function) = rest.split_once("%)")?;
    let percent: f64 = pct.trim().parse().ok()?;
    let function = function.trim();
    // Drop the object file callgrind_annotate appends in brackets.
    let function = match function.rfind(" [") {
        Some(i) if function.ends_with(']') => &function[..i],
        _ => function,
    };
    Some(Cost {
        ir,
        percent,
        function: function.to_string(),
    })
}

/// A function name short enough for a table: the `file:` prefix dropped, generic
/// arguments and closure paths kept.
fn short_name(function: &str) -> String {
    let name = match function.split_once(':') {
        Some((file, rest)) if !file.contains("::") && !rest.starts_with(':') => rest,
        _ => function,
    };
    let mut out: String = name.chars().take(140).collect();
    if name.chars().count() > 140 {
        out.push('…');
    }
    out.replace('|', "/")
}

/// Self costs with the entries of one function (callgrind splits them by source file when
/// code is inlined from several files) added up, largest first.
fn merge_by_name(costs: Vec<Cost>) -> Vec<Cost> {
    let mut merged: Vec<Cost> = Vec::new();
    for c in costs {
        let name = short_name(&c.function);
        match merged.iter_mut().find(|m| m.function == name) {
            Some(m) => {
                m.ir += c.ir;
                m.percent += c.percent;
            }
            None => merged.push(Cost {
                function: name,
                ..c
            }),
        }
    }
    merged.sort_by_key(|c| std::cmp::Reverse(c.ir));
    merged
}

/// Inclusive costs of shardgate's own functions (the runtime's frames include everything),
/// one entry per name (recursion and inlining repeat names), largest first, leaving out the
/// session task's outermost frames that hold the whole run.
fn ours_by_name(costs: Vec<Cost>) -> Vec<Cost> {
    let mut ours: Vec<Cost> = Vec::new();
    for c in costs {
        let name = short_name(&c.function);
        let name = name.trim_end_matches(|ch: char| ch == '\'' || ch.is_ascii_digit());
        if !name.starts_with("shardgate_")
            || name.starts_with("shardgate_proxy::session::handle_client")
        {
            continue;
        }
        if !ours.iter().any(|m| m.function == name) {
            ours.push(Cost {
                function: name.to_string(),
                ..c
            });
        }
    }
    ours.sort_by_key(|c| std::cmp::Reverse(c.ir));
    ours
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("`{name}` not found on PATH (apt-get install valgrind)"))
}

fn callgrind_control(args: &[&str], pid: u32) -> anyhow::Result<()> {
    let out = Command::new(tool("callgrind_control")?)
        .args(args)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn annotate(file: &Path, inclusive: bool) -> anyhow::Result<(u64, Vec<Cost>)> {
    let out = Command::new(tool("callgrind_annotate")?)
        .arg(format!(
            "--inclusive={}",
            if inclusive { "yes" } else { "no" }
        ))
        .arg("--threshold=100")
        .arg("--auto=no")
        // Instructions only, also when the dump has the cache model's events.
        .arg("--show=Ir")
        .arg(file)
        .output()
        .context("running callgrind_annotate")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_annotate(&text)
        .with_context(|| format!("no PROGRAM TOTALS in callgrind_annotate {}", file.display()))
}

/// The newest `callgrind.out.*` dump in `dir` that is not in `seen`.
fn new_dump(dir: &Path, seen: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let mut dumps: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("callgrind.out"))
                && !seen.contains(p)
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    dumps.sort();
    dumps
        .pop()
        .map(|(_, p)| p)
        .with_context(|| format!("callgrind wrote no dump in {}", dir.display()))
}

struct ModeProfile {
    mode: String,
    transactions: u64,
    total_ir: u64,
    /// Instructions of server logins during the run (SCRAM's PBKDF2 dominates them): the
    /// pool growing, the two-phase recovery's own connection; not per-transaction work.
    connect_ir: u64,
    self_costs: Vec<Cost>,
    inclusive: Vec<Cost>,
    /// With `--cache-sim`: the run's level-1 cache misses.
    misses: Option<Misses>,
}

/// Level-1 cache misses of a run (valgrind's cache model: user space only, so fewer than with
/// the kernel's work in between).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Misses {
    instruction: u64,
    data_read: u64,
    data_write: u64,
}

impl Misses {
    /// From a callgrind dump's `events:` names and `summary:` (or `totals:`) counts.
    fn from_dump(text: &str) -> Option<Misses> {
        let names = text.lines().find_map(|l| l.strip_prefix("events:"))?;
        let counts = text.lines().find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })?;
        let totals: Vec<(&str, u64)> = names
            .split_whitespace()
            .zip(counts.split_whitespace().map(|n| n.parse().unwrap_or(0)))
            .collect();
        let event = |name: &str| totals.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
        Some(Misses {
            instruction: event("I1mr")?,
            data_read: event("D1mr")?,
            data_write: event("D1mw")?,
        })
    }
}

/// The inclusive cost of opening server connections: the largest of the `ServerConn::connect`
/// functions (the outer one includes the inner), plus SCRAM's client proof, which the pool
/// computes on a blocking thread (`ScramSha256::update`, outside `connect`'s call tree).
fn connect_cost(inclusive: &[Cost]) -> u64 {
    let largest = |name: &str| {
        inclusive
            .iter()
            .filter(|c| c.function.contains(name))
            .map(|c| c.ir)
            .max()
            .unwrap_or(0)
    };
    largest("ServerConn::connect") + largest("ScramSha256::update")
}

pub async fn run(args: ProfileArgs) -> anyhow::Result<()> {
    // Children (valgrind and shardgate) inherit it.
    crate::service::raise_nofile_limit(u64::from(args.idle) + 2048);
    let valgrind = tool("valgrind")?;
    tool("callgrind_control")?;
    tool("callgrind_annotate")?;
    let binary = match &args.shardgate_bin {
        _ if args.floor => std::env::current_exe().context("locating the benchmark")?,
        Some(p) => p.clone(),
        None => tokio::task::spawn_blocking(shardgate::build_release_binary).await??,
    };
    let cluster = tokio::task::spawn_blocking(move || -> anyhow::Result<PgCluster> {
        let c = PgCluster::start(ClusterOptions::default().user(USER, PASSWORD, Auth::Scram))?;
        c.create_database(DB, USER)?;
        Ok(c)
    })
    .await??;
    let pg_port = cluster.port();
    crate::pgbench_init(pg_port, 1).await?;

    let settings = shardgate::Settings {
        port: 0,
        admin_port: 0,
        user: USER.into(),
        password: PASSWORD.into(),
        pool_size: 20,
        max_client_connections: args.idle + 1000,
        shards: vec![pg_port],
        sharded: args.sharded,
        log: args.log.clone(),
    };
    let (vg, bin, floor, cache_sim) =
        (valgrind.clone(), binary.clone(), args.floor, args.cache_sim);
    let mut svc = tokio::task::spawn_blocking(move || -> anyhow::Result<Service> {
        let mut svc = Service::new(if floor {
            "floor-callgrind"
        } else {
            "shardgate-callgrind"
        })?;
        let mut settings = settings;
        svc.start(PidSource::Child, |svc, port| {
            let mut cmd = Command::new(&vg);
            cmd.arg("--tool=callgrind")
                .arg("--instr-atstart=no")
                .arg(format!(
                    "--cache-sim={}",
                    if cache_sim { "yes" } else { "no" }
                ))
                .arg(format!(
                    "--callgrind-out-file={}/callgrind.out",
                    svc.dir().display()
                ))
                .arg(&bin)
                .current_dir(svc.dir());
            if floor {
                cmd.args(crate::floor::command_args(
                    port,
                    pg_port,
                    settings.pool_size,
                ));
                return Ok(cmd);
            }
            settings.port = port;
            settings.admin_port = shardgate_tests::try_free_port()?;
            let config = svc.dir().join("shardgate.toml");
            std::fs::write(&config, shardgate::render_config(&settings))?;
            cmd.arg("serve")
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", &settings.log);
            Ok(cmd)
        })?;
        Ok(svc)
    })
    .await??;
    let pid = svc.pid();
    let port = svc.port();
    let threads = args.clients.clamp(1, 2).to_string();
    let held = if args.idle > 0 {
        eprintln!(
            "profile: logging in {} idle clients (uninstrumented)",
            args.idle
        );
        Some(crate::idle::open(port, USER, PASSWORD, DB, args.idle, 16).await?)
    } else {
        None
    };
    let mut profiles = Vec::new();
    let mut seen = Vec::new();
    for mode in &args.modes {
        let load = |t: u32| {
            let mut a = workload_args(mode);
            a.extend([
                "-c".into(),
                args.clients.to_string(),
                "-j".into(),
                threads.clone(),
            ]);
            a.extend(pgbench_base_args(port));
            a.extend(["-t".into(), t.to_string(), DB.into()]);
            a
        };
        eprintln!("profile {mode}: warm-up (uninstrumented)");
        // Long enough for the pool to open the connections the run needs.
        run_pgbench(load(250)).await.context("warm-up")?;
        callgrind_control(&["--instr=on"], pid)?;
        callgrind_control(&["--zero"], pid)?;
        eprintln!(
            "profile {mode}: {} clients × {} transactions under callgrind",
            args.clients, args.transactions
        );
        let result = run_pgbench(load(args.transactions)).await?;
        callgrind_control(&["--dump"], pid)?;
        callgrind_control(&["--instr=off"], pid)?;
        if result.exit_code != 0 || result.failed > 0 {
            bail!(
                "pgbench under callgrind failed:\n{}\n{}",
                result.stdout,
                result.stderr
            );
        }
        let dump = new_dump(svc.dir(), &seen)?;
        seen.push(dump.clone());
        if let Some(dir) = &args.keep_dumps {
            std::fs::create_dir_all(dir)?;
            let kept = dir.join(format!("callgrind.out.{mode}"));
            std::fs::copy(&dump, &kept)
                .with_context(|| format!("copying {} to {}", dump.display(), kept.display()))?;
            eprintln!("profile {mode}: dump kept as {}", kept.display());
        }
        let misses = if args.cache_sim {
            let text = std::fs::read_to_string(&dump)
                .with_context(|| format!("reading {}", dump.display()))?;
            Some(Misses::from_dump(&text).context("no cache-miss totals in the callgrind dump")?)
        } else {
            None
        };
        let (total_ir, self_costs) = annotate(&dump, false)?;
        let (_, inclusive) = annotate(&dump, true)?;
        let self_costs = merge_by_name(self_costs);
        // Before keeping only shardgate's own functions: the SCRAM proof is postgres-protocol's.
        let connect_ir = connect_cost(&inclusive);
        let inclusive = ours_by_name(inclusive);
        let per_tx = total_ir.saturating_sub(connect_ir) / result.transactions.max(1);
        eprintln!(
            "profile {mode}: {total_ir} instructions ({connect_ir} of them server logins) for {} \
             transactions = {per_tx} per transaction without the logins",
            result.transactions
        );
        profiles.push(ModeProfile {
            mode: mode.clone(),
            transactions: result.transactions,
            total_ir,
            connect_ir,
            self_costs,
            inclusive,
            misses,
        });
    }
    drop(held);
    svc.stop();
    drop(svc);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;

    let section = render(&args, &profiles);
    println!("{section}");
    if !args.no_write {
        let old = crate::load_results(&args.results);
        std::fs::write(
            &args.results,
            crate::report::replace_section(&old, "profile", &section),
        )
        .with_context(|| format!("writing {}", args.results.display()))?;
        eprintln!("profile written to {}", args.results.display());
    }
    Ok(())
}

/// pgbench's options for a workload of `--modes`.
fn workload_args(mode: &str) -> Vec<String> {
    match mode {
        "tpcb" => vec!["-M".into(), "simple".into()],
        protocol => vec!["-S".into(), "-M".into(), protocol.into()],
    }
}

/// A workload's name in the report's headings.
fn workload_title(mode: &str) -> String {
    match mode {
        "tpcb" => "TPC-B, -M simple".into(),
        protocol => format!("-M {protocol}"),
    }
}

fn render(args: &ProfileArgs, profiles: &[ModeProfile]) -> String {
    let command: Vec<String> = std::env::args().skip(1).collect();
    let mut s = String::from("## Profile: instructions per transaction (callgrind)\n\n");
    s.push_str(&format!(
        "- Date: {}; {}; shardgate {} (release build: fat LTO, one codegen unit, `debug = 1`), {}\n",
        crate::machine::now_utc(),
        crate::machine::cpu_model(),
        crate::machine::git_rev(&shardgate::workspace_root()),
        crate::machine::program_version(Path::new("valgrind")),
    ));
    if args.floor {
        s.push_str(
            "- Target: the floor pooler (`bench floor-pooler`, compare's `floor`: the least a \
             tokio transaction pooler does), in place of `shardgate serve` below.\n",
        );
    }
    s.push_str(&format!(
        "- Command: `cargo run -p bench --release -- {}`: shardgate runs as \
         `valgrind --tool=callgrind --instr-atstart=no shardgate serve`; after an uninstrumented \
         warm-up, `callgrind_control --instr=on --zero`, then `pgbench -S -M <mode> -c {} -t {}` \
         (`tpcb`: the TPC-B-like script, `-M simple`), then `callgrind_control --dump`, read \
         with `callgrind_annotate [--inclusive=yes]`.\n",
        command.join(" "),
        args.clients,
        args.transactions
    ));
    if args.sharded {
        s.push_str(
            "- shardgate routes `pgbench_accounts` by `aid` on its one shard (`--sharded`): \
             every statement is planned and routed by its key.\n",
        );
    }
    if args.idle > 0 {
        s.push_str(&format!(
            "- {} idle clients were logged in (before instrumentation) and held during the runs.\n",
            args.idle
        ));
    }
    s.push_str(&format!(
        "- shardgate logs with `RUST_LOG={}` (`info`, its default, enables each session's \
         span, entered and left at every poll of the session).\n",
        args.log
    ));
    s.push_str(
        "- Counts user-space instructions of the proxy only (not the kernel's work in its \
         syscalls); they include the run's client logins (SCRAM verification), spread over \
         the transactions. Server logins during the run (the pool opening a connection, the \
         two-phase recovery's round) are counted apart: instructions per transaction leave \
         them out.\n\n",
    );
    if args.cache_sim {
        s.push_str(
            "- With `--cache-sim=yes`: valgrind's model of this machine's caches counts level-1 \
             misses (user space only, so fewer than with the kernel's work in between; server \
             logins included).\n\n",
        );
    }
    s.push_str(
        "| mode | transactions | instructions | of them server logins | instructions / transaction |",
    );
    s.push_str(if args.cache_sim {
        " L1i misses / tx | L1d read misses / tx | L1d write misses / tx |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    } else {
        "\n| --- | ---: | ---: | ---: | ---: |\n"
    });
    for p in profiles {
        let tx = p.transactions.max(1);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |",
            p.mode,
            p.transactions,
            p.total_ir,
            p.connect_ir,
            p.total_ir.saturating_sub(p.connect_ir) / tx
        ));
        if let Some(m) = p.misses {
            s.push_str(&format!(
                " {:.1} | {:.1} | {:.1} |",
                m.instruction as f64 / tx as f64,
                m.data_read as f64 / tx as f64,
                m.data_write as f64 / tx as f64
            ));
        }
        s.push('\n');
    }
    for p in profiles {
        for (title, costs) in [
            ("self", &p.self_costs),
            ("inclusive (shardgate's own functions)", &p.inclusive),
        ] {
            s.push_str(&format!(
                "\n### `{}`: top {} functions by {title} cost\n\n",
                workload_title(&p.mode),
                args.top
            ));
            s.push_str("| % of Ir | Ir / tx | function |\n| ---: | ---: | --- |\n");
            for c in costs.iter().take(args.top) {
                s.push_str(&format!(
                    "| {:.2} | {} | `{}` |\n",
                    c.percent,
                    c.ir / p.transactions.max(1),
                    short_name(&c.function)
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANNOTATE: &str = "\
--------------------------------------------------------------------------------
Profile data file 'callgrind.out.1' (creator: callgrind-3.19.0)
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
1,234,567,890 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                    file:function
--------------------------------------------------------------------------------
123,456,789 (10.00%)  ./string/../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S:__memcpy_avx_unaligned_erms [/usr/lib/x86_64-linux-gnu/libc.so.6]
 98,765,432 ( 8.00%)  proxy/src/relay.rs:shardgate_proxy::relay::forward [/var/tmp/t/release/shardgate]
      1,000 ( 0.00%)  ???:0x0000000000012345 [/usr/lib/ld.so]

-- Auto-annotated source: /work/main/proxy/src/session.rs
  5,000 ( 1.00%)  => tokio::runtime::task::raw::poll (30,659x)
";

    #[test]
    fn reads_cache_misses_from_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\n\
                    events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\
                    fn=(1) main\n16 5 1 1 0 0 0 0 0 0\n\
                    summary: 1000 400 300 94 138 40 1 2 3\n";
        assert_eq!(
            Misses::from_dump(dump),
            Some(Misses {
                instruction: 94,
                data_read: 138,
                data_write: 40
            })
        );
        // Without the cache model there are no miss events.
        assert_eq!(Misses::from_dump("events: Ir\nsummary: 1000\n"), None);
    }

    #[test]
    fn parses_totals_and_functions() {
        let (total, costs) = parse_annotate(ANNOTATE).unwrap();
        assert_eq!(total, 1_234_567_890);
        assert_eq!(costs.len(), 3);
        assert_eq!(costs[0].ir, 123_456_789);
        assert_eq!(costs[0].percent, 10.0);
        assert!(costs[0].function.ends_with("__memcpy_avx_unaligned_erms"));
        assert_eq!(costs[1].percent, 8.0);
        assert_eq!(
            short_name(&costs[1].function),
            "shardgate_proxy::relay::forward"
        );
        assert_eq!(parse_annotate("nothing here"), None);
    }

    #[test]
    fn server_logins_count_connect_and_the_scram_proof_once_each() {
        let c = |ir, f: &str| Cost {
            ir,
            percent: 0.0,
            function: f.to_owned(),
        };
        let inclusive = [
            c(
                900,
                "pool/src/conn.rs:shardgate_pool::conn::ServerConn::connect::{{closure}}",
            ),
            c(
                400,
                "pool/src/conn.rs:shardgate_pool::conn::ServerConn::connect_once::{{closure}}",
            ),
            c(
                5_000,
                "sasl.rs:postgres_protocol::authentication::sasl::ScramSha256::update",
            ),
            c(
                70_000,
                "proxy/src/session.rs:shardgate_proxy::session::Session::serve::{{closure}}",
            ),
        ];
        assert_eq!(connect_cost(&inclusive), 5_900);
        assert_eq!(connect_cost(&inclusive[3..]), 0);
    }

    #[test]
    fn merges_and_filters() {
        let c = |ir, f: &str| Cost {
            ir,
            percent: ir as f64,
            function: f.to_string(),
        };
        let merged = merge_by_name(vec![c(5, "a.rs:x::f"), c(7, "y::g"), c(4, "b.rs:x::f")]);
        assert_eq!(merged, vec![c(9, "x::f"), c(7, "y::g")]);
        let ours = ours_by_name(vec![
            c(100, "???:tokio::runtime::run"),
            c(
                90,
                "s.rs:shardgate_proxy::session::handle_client::{{closure}}",
            ),
            c(50, "s.rs:shardgate_proxy::relay::forward'2"),
            c(40, "s.rs:shardgate_proxy::relay::forward"),
            c(30, "w.rs:shardgate_wire::frontend::parse"),
        ]);
        assert_eq!(
            ours,
            vec![
                c(50, "shardgate_proxy::relay::forward"),
                c(30, "shardgate_wire::frontend::parse")
            ]
        );
    }

    #[test]
    fn tpcb_runs_the_whole_script_in_the_simple_protocol() {
        assert_eq!(workload_args("tpcb"), ["-M", "simple"]);
        assert_eq!(workload_args("prepared"), ["-S", "-M", "prepared"]);
        assert_eq!(workload_title("tpcb"), "TPC-B, -M simple");
        assert_eq!(workload_title("extended"), "-M extended");
    }

    #[test]
    fn short_names_keep_rust_paths() {
        assert_eq!(
            short_name("???:tokio::runtime::park"),
            "tokio::runtime::park"
        );
        assert_eq!(
            short_name("core::ptr::drop_in_place<x>"),
            "core::ptr::drop_in_place<x>"
        );
        assert_eq!(short_name("a|b"), "a/b");
    }
}
