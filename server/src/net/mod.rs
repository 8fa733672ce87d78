//! Binding the node's listening sockets and locking its data directory, so a second
//! process on the same port or data directory is refused with a clear error instead of
//! silently sharing them.
//!
//! glommio's `TcpListener::bind` always sets `SO_REUSEPORT`, which lets a second process
//! bind the same port and steal half the connections. [`bind_exclusive`] builds the socket
//! with `socket2` without `SO_REUSEPORT` (only `SO_REUSEADDR`, which on Linux never lets
//! two sockets listen on one port) and hands it to glommio afterwards.
//!
//! One listening socket is accepted on by exactly one executor: glommio briefly toggles
//! `O_NONBLOCK` on the socket during accept, which is not safe to race from several
//! threads sharing a socket. A node that wants connections spread over shards accepts on
//! one shard and hands streams to others (`shared_accept` + `bind_to_executor`).
mod data_dir_lock;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd as _, IntoRawFd as _};

use socket2::{Domain, Protocol, Socket, Type};

pub use data_dir_lock::{DataDirLock, LockError, LOCK_FILE_NAME};

/// Pending-connection backlog of listening sockets.
pub const LISTEN_BACKLOG: i32 = 1024;

/// A bound, listening TCP socket owned by this process alone. `Send`: it can be created on
/// the main thread and moved to the shard that will accept on it.
#[derive(Debug)]
pub struct ExclusiveListener {
    listener: std::net::TcpListener,
}

/// Binds `addr` for listening without `SO_REUSEPORT`. A port already bound by any socket
/// (another Conclave included) fails with `AddrInUse` and a message naming the address.
pub fn bind_exclusive(addr: SocketAddr) -> io::Result<ExclusiveListener> {
    let described = |error: io::Error, action: &str| {
        let hint = if error.kind() == io::ErrorKind::AddrInUse {
            " (another process, perhaps another conclave, is listening there; stop it or \
             choose another address)"
        } else {
            ""
        };
        io::Error::new(error.kind(), format!("cannot {action} {addr}: {error}{hint}"))
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|error| described(error, "create a socket for"))?;
    socket.set_reuse_address(true).map_err(|error| described(error, "set SO_REUSEADDR on"))?;
    socket.bind(&addr.into()).map_err(|error| described(error, "bind"))?;
    socket.listen(LISTEN_BACKLOG).map_err(|error| described(error, "listen on"))?;
    Ok(ExclusiveListener { listener: socket.into() })
}

impl ExclusiveListener {
    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Turns the socket into a glommio listener of the current executor. Must be called
    /// on the glommio executor thread that will accept on it.
    pub fn into_glommio(self) -> glommio::net::TcpListener {
        let fd = self.listener.into_raw_fd();
        // SAFETY: `fd` is a bound, listening TCP socket whose ownership we just released;
        // glommio's listener takes it over and closes it on drop.
        unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
    }
}
