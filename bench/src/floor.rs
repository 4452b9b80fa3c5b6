//! `compare --targets floor`: the least a transaction pooler on tokio does, run as a target
//! of its own next to PgBouncer and shardgate.
//!
//! shardgate's CPU per transaction is measured against PgBouncer's, a C program on one event
//! loop. This pooler is what is left of a tokio proxy without routing, statistics, timeouts,
//! cancel routing or session tracking: one current-thread runtime (as shardgate runs on two
//! cores), trust login for its clients, a fixed pool of server connections logged in with
//! SCRAM, and per batch: read the client's whole messages, check a connection out (a waiting
//! client is handed the next released one directly), write them to it, forward the replies
//! as bytes until ReadyForQuery, release at status `I`. Its CPU against PgBouncer's is the
//! part of shardgate's ratio that the runtime and the socket calls set, whatever shardgate's
//! own code does. It is a measuring stick, not a proxy: no named prepared statements (the
//! `-M prepared` cells are skipped, as for PgBouncer without max_prepared_statements), no
//! cancels, no limits.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::process::Command;
use std::rc::Rc;

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::service::{PidSource, Service};
use crate::{DB, PASSWORD, USER};

/// `bench floor-pooler`: started by `compare`, not by hand.
#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// Loopback port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Loopback port of the PostgreSQL server.
    #[arg(long)]
    pub server_port: u16,
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub password: String,
    #[arg(long)]
    pub database: String,
    /// Server connections, all opened at start.
    #[arg(long)]
    pub pool: usize,
}

/// Starts the floor pooler (this benchmark's own executable, `floor-pooler`) in front of the
/// server on `server_port` with `pool` connections.
pub fn start(server_port: u16, pool: u32) -> anyhow::Result<Service> {
    let exe = std::env::current_exe().context("locating the benchmark's executable")?;
    let mut service = Service::new("floor")?;
    service.start(PidSource::Child, |_, port| {
        let mut cmd = Command::new(&exe);
        cmd.args(command_args(port, server_port, pool));
        Ok(cmd)
    })?;
    Ok(service)
}

/// The benchmark executable's arguments that run the floor pooler on `port` in front of the
/// server on `server_port` with `pool` connections (the benchmark's user and database).
pub fn command_args(port: u16, server_port: u16, pool: u32) -> Vec<String> {
    [
        "floor-pooler",
        "--port",
        &port.to_string(),
        "--server-port",
        &server_port.to_string(),
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--database",
        DB,
        "--pool",
        &pool.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// Serves until killed (on its own current-thread runtime).
pub fn serve(args: FloorArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut idle = Vec::with_capacity(args.pool);
        let mut parameters = Vec::new();
        for _ in 0..args.pool {
            let (server, params) = login(&args).await?;
            idle.push(server);
            parameters = params;
        }
        let pool = Rc::new(Pool {
            idle: RefCell::new(idle),
            waiters: RefCell::new(VecDeque::new()),
            greeting: greeting(&parameters),
        });
        let listener = TcpListener::bind(("127.0.0.1", args.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
        loop {
            let (socket, _) = listener.accept().await?;
            let pool = Rc::clone(&pool);
            tokio::task::spawn_local(async move {
                // A client that breaks the protocol or leaves is dropped; nothing to report.
                let _ = client(socket, &pool).await;
            });
        }
    })
}

/// A server connection and the replies read from it but not yet forwarded.
struct Server {
    socket: TcpStream,
    replies: BytesMut,
}

struct Pool {
    idle: RefCell<Vec<Server>>,
    /// Clients waiting for a connection, first come first served.
    waiters: RefCell<VecDeque<oneshot::Sender<Server>>>,
    /// AuthenticationOk, the server's ParameterStatus messages, BackendKeyData, ReadyForQuery.
    greeting: Vec<u8>,
}

impl Pool {
    async fn checkout(&self) -> anyhow::Result<Server> {
        if let Some(server) = self.idle.borrow_mut().pop() {
            return Ok(server);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push_back(tx);
        rx.await.context("the pool went away")
    }

    /// Hands `server` to the first client still waiting, else keeps it idle.
    fn release(&self, mut server: Server) {
        loop {
            let Some(waiter) = self.waiters.borrow_mut().pop_front() else {
                break;
            };
            match waiter.send(server) {
                Ok(()) => return,
                Err(back) => server = back,
            }
        }
        self.idle.borrow_mut().push(server);
    }
}

/// One client: trust login, then batch by batch in transaction mode.
async fn client(mut socket: TcpStream, pool: &Pool) -> anyhow::Result<()> {
    socket.set_nodelay(true)?;
    read_startup(&mut socket).await?;
    socket.write_all(&pool.greeting).await?;
    let mut requests = BytesMut::with_capacity(8192);
    let mut attached: Option<Server> = None;
    loop {
        if socket.read_buf(&mut requests).await? == 0 {
            break;
        }
        let Some(batch) = whole_messages(&requests) else {
            continue;
        };
        if batch.terminate {
            break;
        }
        let mut server = match attached.take() {
            Some(server) => server,
            None => pool.checkout().await?,
        };
        server.socket.write_all(&requests[..batch.len]).await?;
        requests.advance(batch.len);
        let mut awaited = batch.syncs;
        // Messages without a Sync (a Flush, say) leave the connection attached.
        let mut status = if awaited == 0 { b'T' } else { b'I' };
        while awaited > 0 {
            if server.socket.read_buf(&mut server.replies).await? == 0 {
                bail!("the server closed the connection");
            }
            let Some(replies) = whole_messages(&server.replies) else {
                continue;
            };
            awaited = awaited.saturating_sub(replies.syncs);
            status = replies.status.unwrap_or(status);
            socket.write_all(&server.replies[..replies.len]).await?;
            server.replies.advance(replies.len);
        }
        if status == b'I' {
            pool.release(server);
        } else {
            attached = Some(server);
        }
    }
    if let Some(mut server) = attached {
        // Left inside a transaction: roll it back before the next client gets the connection.
        server.socket.write_all(b"Q\0\0\0\x0dROLLBACK\0").await?;
        loop {
            if server.socket.read_buf(&mut server.replies).await? == 0 {
                bail!("the server closed the connection during the rollback");
            }
            if let Some(r) = whole_messages(&server.replies) {
                server.replies.advance(r.len);
                if r.syncs > 0 {
                    break;
                }
            }
        }
        pool.release(server);
    }
    Ok(())
}

/// The whole messages at the front of a buffer.
struct Messages {
    /// Their bytes.
    len: usize,
    /// Queries and Syncs among them (from a client); ReadyForQuery messages (from a server).
    syncs: usize,
    /// The last ReadyForQuery's transaction status.
    status: Option<u8>,
    /// A Terminate among them.
    terminate: bool,
}

fn whole_messages(buf: &[u8]) -> Option<Messages> {
    let mut m = Messages {
        len: 0,
        syncs: 0,
        status: None,
        terminate: false,
    };
    while let Some(header) = buf.get(m.len..m.len + 5) {
        let body = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let end = m.len + 1 + body;
        if end > buf.len() {
            break;
        }
        match header[0] {
            b'Q' | b'S' => m.syncs += 1,
            b'Z' => {
                m.syncs += 1;
                m.status = buf.get(m.len + 5).copied();
            }
            b'X' => m.terminate = true,
            _ => {}
        }
        m.len = end;
    }
    (m.len > 0).then_some(m)
}

/// Reads the client's StartupMessage, refusing TLS and GSS encryption requests first.
async fn read_startup(socket: &mut TcpStream) -> anyhow::Result<()> {
    loop {
        let len = socket.read_u32().await? as usize;
        if !(8..=10_000).contains(&len) {
            bail!("bad startup packet length {len}");
        }
        let mut body = vec![0; len - 4];
        socket.read_exact(&mut body).await?;
        match u32::from_be_bytes([body[0], body[1], body[2], body[3]]) {
            // SSLRequest, GSSENCRequest: not offered.
            80_877_103 | 80_877_104 => socket.write_all(b"N").await?,
            _ => return Ok(()),
        }
    }
}

/// What every client is sent after its startup packet.
fn greeting(parameters: &[(String, String)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
    for (name, value) in parameters {
        out.put_u8(b'S');
        out.put_u32((4 + name.len() + 1 + value.len() + 1) as u32);
        out.put_slice(name.as_bytes());
        out.put_u8(0);
        out.put_slice(value.as_bytes());
        out.put_u8(0);
    }
    out.put_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 1]);
    out.put_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    out.to_vec()
}

/// A server connection logged in (SCRAM-SHA-256, or none asked), with the server's
/// ParameterStatus values.
async fn login(args: &FloorArgs) -> anyhow::Result<(Server, Vec<(String, String)>)> {
    let mut socket = TcpStream::connect(("127.0.0.1", args.server_port))
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{}", args.server_port))?;
    socket.set_nodelay(true)?;
    let mut out = BytesMut::new();
    frontend::startup_message(
        [
            ("user", args.user.as_str()),
            ("database", args.database.as_str()),
        ],
        &mut out,
    )?;
    socket.write_all(&out).await?;
    let mut input = BytesMut::with_capacity(8192);
    let mut scram = None;
    let mut parameters = Vec::new();
    loop {
        let message = loop {
            if let Some(m) = Message::parse(&mut input)? {
                break m;
            }
            if socket.read_buf(&mut input).await? == 0 {
                bail!("the server closed the connection during login");
            }
        };
        out.clear();
        match message {
            Message::AuthenticationSasl(_) => {
                let s = ScramSha256::new(args.password.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), &mut out)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().context("SASLContinue before SASL")?;
                s.update(body.data())?;
                frontend::sasl_response(s.message(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                scram
                    .take()
                    .context("SASLFinal before SASL")?
                    .finish(body.data())?;
            }
            Message::AuthenticationOk | Message::BackendKeyData(_) => {}
            Message::ParameterStatus(p) => {
                parameters.push((p.name()?.to_owned(), p.value()?.to_owned()));
            }
            Message::ReadyForQuery(_) => break,
            Message::ErrorResponse(_) => bail!("the server refused the login"),
            _ => bail!("unexpected message during login"),
        }
        socket.write_all(&out).await?;
    }
    let server = Server {
        socket,
        replies: input,
    };
    Ok((server, parameters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_messages_counts_syncs_and_stops_at_a_partial_message() {
        // Parse, Bind, Execute, Sync, then half of a Query.
        let mut buf = BytesMut::new();
        for tag in [b'P', b'B', b'E'] {
            buf.put_slice(&[tag, 0, 0, 0, 6, 1, 2]);
        }
        buf.put_slice(&[b'S', 0, 0, 0, 4]);
        let whole = buf.len();
        buf.put_slice(&[b'Q', 0, 0, 0, 9, b's']);
        let m = whole_messages(&buf).unwrap();
        assert_eq!((m.len, m.syncs, m.terminate), (whole, 1, false));
        assert!(whole_messages(&buf[whole..]).is_none());
    }

    #[test]
    fn whole_messages_reads_the_last_ready_for_query_status() {
        let mut buf = BytesMut::new();
        buf.put_slice(&[b'C', 0, 0, 0, 9, b'B', b'E', b'G', b'I', b'N']);
        buf.put_slice(&[b'Z', 0, 0, 0, 5, b'T']);
        buf.put_slice(&[b'Z', 0, 0, 0, 5, b'I']);
        let m = whole_messages(&buf).unwrap();
        assert_eq!((m.syncs, m.status), (2, Some(b'I')));
    }
}
