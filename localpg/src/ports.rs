//! Free loopback ports for servers the tests start. The OS picks a free port; a process-wide
//! set makes sure two clusters started by parallel tests in one process never get the same one.
//! (Another process can still take a port between our pick and the server's bind, so callers
//! that bind later retry on "address in use".)

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use crate::error::{LocalPgError, Result};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before.
pub fn try_free_port() -> Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut last_err = None;
    for _ in 0..64 {
        match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()) {
            Ok(addr) => {
                if handed_out.insert(addr.port()) {
                    return Ok(addr.port());
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(LocalPgError::io(
        "could not find a free port on 127.0.0.1",
        last_err.unwrap_or_else(|| std::io::Error::other("every port offered was already used")),
    ))
}

/// Like [`try_free_port`], for callers that cannot go on without one.
///
/// # Panics
/// When no port on 127.0.0.1 can be bound at all (no loopback interface).
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        TcpListener::bind((Ipv4Addr::LOCALHOST, a)).unwrap();
    }
}
