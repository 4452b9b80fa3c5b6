//! The benchmark cases of `compare` and how `--cases` selects among them.

use std::fmt;

/// pgbench's `-M` query protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Simple,
    Extended,
    Prepared,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Simple, Protocol::Extended, Protocol::Prepared];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `pgbench -S` (one primary-key SELECT per transaction).
    Select(Protocol),
    /// pgbench's default TPC-B-like script (five statements in a transaction), simple protocol.
    TpcB,
    /// `idle` clients log in and sit idle while `clients` pgbench clients run `-S -M simple`.
    Idle { idle: u32 },
}

/// One row group of the results table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub name: String,
    pub workload: Workload,
    /// Active pgbench clients (`-c`).
    pub clients: u32,
}

impl Case {
    pub fn select(protocol: Protocol, clients: u32) -> Case {
        Case {
            name: format!("select-{protocol}-c{clients}"),
            workload: Workload::Select(protocol),
            clients,
        }
    }

    pub fn tpcb(clients: u32) -> Case {
        Case {
            name: format!("tpcb-c{clients}"),
            workload: Workload::TpcB,
            clients,
        }
    }

    pub fn idle(idle: u32, active: u32) -> Case {
        Case {
            name: format!("idle-{idle}"),
            workload: Workload::Idle { idle },
            clients: active,
        }
    }

    /// pgbench's protocol for this case.
    pub fn protocol(&self) -> Protocol {
        match self.workload {
            Workload::Select(p) => p,
            Workload::TpcB | Workload::Idle { .. } => Protocol::Simple,
        }
    }

    /// A short description for the table: `-S -M simple -c 16`.
    pub fn describe(&self) -> String {
        match self.workload {
            Workload::Select(p) => format!("-S -M {p} -c {}", self.clients),
            Workload::TpcB => format!("TPC-B -c {}", self.clients),
            Workload::Idle { idle } => {
                format!("{idle} idle + -S -M simple -c {}", self.clients)
            }
        }
    }

    /// pgbench arguments for the workload (without connection, duration and logging options).
    pub fn pgbench_args(&self) -> Vec<String> {
        let threads = self.clients.clamp(1, 2);
        let mut args = Vec::new();
        if !matches!(self.workload, Workload::TpcB) {
            args.push("-S".to_string());
        }
        args.extend([
            "-M".to_string(),
            self.protocol().as_str().to_string(),
            "-c".to_string(),
            self.clients.to_string(),
            "-j".to_string(),
            threads.to_string(),
        ]);
        args
    }
}

/// Every case, in the order they run: `-S` in each protocol at each client count, TPC-B,
/// then the connection-scale cases.
pub fn all_cases(select_clients: &[u32], idle: &[u32], idle_active: u32) -> Vec<Case> {
    let mut cases = Vec::new();
    for p in Protocol::ALL {
        for &c in select_clients {
            cases.push(Case::select(p, c));
        }
    }
    cases.push(Case::tpcb(16));
    for &n in idle {
        cases.push(Case::idle(n, idle_active));
    }
    cases
}

/// Whether `name` is chosen by `filters`: a filter matches when each of its `-`-separated
/// words is one of the name's words (`select-c64` picks every `-S` case at 64 clients,
/// `prepared` every prepared case, `idle` both connection-scale cases). No filters pick all.
pub fn selected(name: &str, filters: &[String]) -> bool {
    if filters.is_empty() {
        return true;
    }
    let words: Vec<&str> = name.split('-').collect();
    filters.iter().any(|f| {
        let f = f.trim();
        !f.is_empty() && f.split('-').all(|w| words.contains(&w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(filters: &[&str]) -> Vec<String> {
        let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        all_cases(&[1, 16, 64], &[1000, 5000], 8)
            .into_iter()
            .filter(|c| selected(&c.name, &filters))
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn default_cases() {
        let all = names(&[]);
        assert_eq!(all.len(), 12);
        assert_eq!(all[0], "select-simple-c1");
        assert_eq!(all[8], "select-prepared-c64");
        assert_eq!(all[9], "tpcb-c16");
        assert_eq!(all[11], "idle-5000");
    }

    #[test]
    fn filters_match_whole_words() {
        assert_eq!(
            names(&["select-c1"]),
            [
                "select-simple-c1",
                "select-extended-c1",
                "select-prepared-c1"
            ]
        );
        assert_eq!(
            names(&["prepared-c64", "tpcb"]),
            ["select-prepared-c64", "tpcb-c16"]
        );
        assert_eq!(names(&["idle"]), ["idle-1000", "idle-5000"]);
        assert_eq!(names(&["idle-5000"]), ["idle-5000"]);
        assert!(names(&["nothing"]).is_empty());
        assert!(names(&[""]).is_empty());
    }

    #[test]
    fn pgbench_arguments() {
        assert_eq!(
            Case::select(Protocol::Extended, 1).pgbench_args().join(" "),
            "-S -M extended -c 1 -j 1"
        );
        assert_eq!(
            Case::tpcb(16).pgbench_args().join(" "),
            "-M simple -c 16 -j 2"
        );
        let idle = Case::idle(1000, 8);
        assert_eq!(idle.pgbench_args().join(" "), "-S -M simple -c 8 -j 2");
        assert_eq!(idle.describe(), "1000 idle + -S -M simple -c 8");
    }
}
