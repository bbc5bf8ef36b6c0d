//! Loopback TCP backends with set delays, for the load-balancing tests and the
//! `balance` benchmark's loopback rows.
//!
//! The protocol is one byte each way: a caller writes any byte, the backend waits its
//! delay (a tokio sleep, so tokio's paused clock makes it exact) and answers `+`, or
//! answers `-` at once when it fails. A caller may instead name the delay: `!` and
//! eight bytes of microseconds (little-endian), for latencies drawn per request
//! ([`Pool::request_taking`]). Connections are pooled per address ([`Pool`]), so
//! thousands of requests use a few hundred sockets.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How a backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers `+` after this long.
    Delay(Duration),
    /// Answers `-` at once: a failure that looks fast.
    Fail,
}

/// One backend on `127.0.0.1`, counting the requests it received; stopped on drop.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on a free loopback port.
    pub async fn start(behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while conn.read_exact(&mut byte).await.is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                        let mut told = [0u8; 8];
                        if byte[0] == b'!' && conn.read_exact(&mut told).await.is_err() {
                            break;
                        }
                        let answer = match behaviour {
                            Behaviour::Delay(_) if byte[0] == b'!' => {
                                let us = u64::from_le_bytes(told);
                                tokio::time::sleep(Duration::from_micros(us)).await;
                                b'+'
                            }
                            Behaviour::Delay(d) => {
                                tokio::time::sleep(d).await;
                                b'+'
                            }
                            Behaviour::Fail => b'-',
                        };
                        if conn.write_all(&[answer]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Backend { addr, served, task }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Open connections per backend, shared by every caller.
#[derive(Debug, Clone, Default)]
pub struct Pool(Arc<Mutex<HashMap<SocketAddr, Vec<TcpStream>>>>);

impl Pool {
    /// One request to `addr` on a pooled connection (or a new one): `Ok` when the
    /// backend answered `+`, an error when it answered `-` or the connection failed.
    pub async fn request(&self, addr: SocketAddr) -> io::Result<()> {
        self.send(addr, b"?").await
    }

    /// One request to a [`Behaviour::Delay`] backend at `addr` that answers after
    /// `delay` instead of its own.
    pub async fn request_taking(&self, addr: SocketAddr, delay: Duration) -> io::Result<()> {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let mut msg = [b'!'; 9];
        msg[1..].copy_from_slice(&us.to_le_bytes());
        self.send(addr, &msg).await
    }

    async fn send(&self, addr: SocketAddr, msg: &[u8]) -> io::Result<()> {
        let pooled = self.lock().get_mut(&addr).and_then(Vec::pop);
        let mut conn = match pooled {
            Some(c) => c,
            None => TcpStream::connect(addr).await?,
        };
        conn.write_all(msg).await?;
        let mut answer = [0u8; 1];
        conn.read_exact(&mut answer).await?;
        self.lock().entry(addr).or_default().push(conn);
        match answer[0] {
            b'+' => Ok(()),
            _ => Err(io::Error::other("the backend failed the request")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<TcpStream>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
