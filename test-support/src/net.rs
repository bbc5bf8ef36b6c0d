//! Loopback sockets for tests.

use std::net::SocketAddr;

use tokio::net::TcpSocket;

/// A loopback port that refuses connections: bound but not listening, and kept bound
/// while the socket lives, so no other test's listener can take it over.
pub fn closed_port() -> (SocketAddr, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
}
