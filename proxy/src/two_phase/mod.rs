//! TEMPORARY stand-in (the recovery branch brings the real module).
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct Coordinator {
    token: String,
    last: AtomicU64,
}

impl Coordinator {
    pub(crate) fn new(proxy_id: &str) -> Coordinator {
        let token: String = proxy_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        Coordinator {
            token,
            last: AtomicU64::new(0),
        }
    }
    pub(crate) fn start(&self) -> InFlight {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut cur = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(cur + 1);
            match self
                .last
                .compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    return InFlight {
                        token: self.token.clone(),
                        txid: next,
                    }
                }
                Err(c) => cur = c,
            }
        }
    }
    pub(crate) fn proxy_token(&self) -> &str {
        &self.token
    }
}

pub(crate) struct InFlight {
    token: String,
    txid: u64,
}

impl InFlight {
    pub(crate) fn txid(&self) -> u64 {
        self.txid
    }
    pub(crate) fn gid(&self, shard_name: &str) -> String {
        format!("sg_{}_{}_{}", self.token, self.txid, shard_name)
    }
}
