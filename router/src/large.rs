//! Planning of large texts (over `LARGE_TEXT`), which may take long and needs a deep stack:
//! at most `LARGE_PLANS_AT_ONCE` run at a time in the process (each on its own thread with a
//! `LARGE_STACK` stack), and a caller on a tokio worker first hands its other tasks to the
//! rest of the runtime (`block_in_place`), so a slow plan never stalls unrelated clients.

use std::sync::{Condvar, Mutex};

use tokio::runtime::{Handle, RuntimeFlavor};

/// Large plans running at once, process-wide: each can hold much memory and a big stack.
pub(crate) const LARGE_PLANS_AT_ONCE: usize = 2;

/// A counting semaphore for blocking callers (they are off the async workers by then).
pub(crate) struct LargePlanGate {
    in_use: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

pub(crate) static LARGE_PLANS: LargePlanGate = LargePlanGate::new(LARGE_PLANS_AT_ONCE);

struct Permit<'a>(&'a LargePlanGate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_use.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        self.0.freed.notify_one();
    }
}

impl LargePlanGate {
    pub(crate) const fn new(max: usize) -> LargePlanGate {
        LargePlanGate {
            in_use: Mutex::new(0),
            freed: Condvar::new(),
            max,
        }
    }

    fn acquire(&self) -> Permit<'_> {
        let mut n = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= self.max {
            n = self.freed.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Permit(self)
    }

    /// Runs `work` holding a permit, off the async worker when called on one.
    pub(crate) fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        let gated = || {
            let _permit = self.acquire();
            work()
        };
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(gated)
            }
            _ => gated(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::*;

    #[test]
    fn at_most_max_run_at_once() {
        let gate = Arc::new(LargePlanGate::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, running, peak) = (gate.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    gate.run(|| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "{peak}");
    }

    /// On a runtime with a single worker, a task still runs while a large plan blocks: the
    /// plan below waits for that task's message (it would never come if the worker were
    /// stuck in the plan).
    #[test]
    fn a_large_plan_does_not_hold_the_worker() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let got = rt.block_on(async move {
            let planning = tokio::spawn(async move {
                LARGE_PLANS.run(|| rx.recv_timeout(Duration::from_secs(20)))
            });
            tokio::task::yield_now().await;
            let other = tokio::spawn(async move { tx.send(42).ok() });
            other.await.unwrap();
            planning.await.unwrap()
        });
        assert_eq!(got, Ok(42));
    }
}
