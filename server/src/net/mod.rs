//! Binding the node's listening sockets and locking its data directory, so a second
//! process on the same port or data directory is refused with a clear error instead of
//! silently sharing them.
//!
//! glommio's `TcpListener::bind` always sets `SO_REUSEPORT`, which lets a second process
//! bind the same port and steal half the connections. [`bind_exclusive`] builds the socket
//! with `socket2` without `SO_REUSEPORT` (only `SO_REUSEADDR`, which on Linux never lets
//! two sockets listen on one port) and hands it to glommio afterwards.
//!
//! A node restarted right after its predecessor on the same data directory exited (even
//! gracefully) can find its ports still listening for a moment: the kernel tears down the
//! old process's io_uring rings after the process is gone, and a pending accept holds the
//! listening socket until then. [`bind_exclusive_after`] waits that out (bounded, and only
//! when the data directory's lock shows that predecessor is gone); [`release_listener`]
//! stops a listening socket at once on a graceful stop, whatever still holds it.
//!
//! One listening socket is accepted on by exactly one executor: glommio briefly toggles
//! `O_NONBLOCK` on the socket during accept, which is not safe to race from several
//! threads sharing a socket. A node that wants connections spread over shards accepts on
//! one shard and hands streams to others (`shared_accept` + `bind_to_executor`).
mod data_dir_lock;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd};
use std::time::{Duration, Instant};

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

/// How long a restart waits for a port its predecessor's socket still holds.
pub const RESTART_BIND_WAIT: Duration = Duration::from_secs(10);

/// Pause between two attempts to bind a port still held.
const BIND_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// [`bind_exclusive`], except that a port in use is tried again for up to `wait` when
/// `predecessor` names the process (no longer alive: the caller holds the data directory's
/// lock) that used this data directory before: its sockets may outlive it for a moment.
/// Logs once (a warning) that it waits. Without a predecessor an address in use fails at once.
pub fn bind_exclusive_after(addr: SocketAddr, predecessor: Option<u32>, wait: Duration) -> io::Result<ExclusiveListener> {
    retry_in_use(addr, predecessor, wait, || bind_exclusive(addr))
}

/// Waits (as [`bind_exclusive_after`] does) until `addr` can be bound, without keeping it:
/// for a port bound later by a shard's own listener.
pub fn wait_until_bindable(addr: SocketAddr, predecessor: Option<u32>, wait: Duration) -> io::Result<()> {
    retry_in_use(addr, predecessor, wait, || {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    })
}

fn retry_in_use<T>(
    addr: SocketAddr,
    predecessor: Option<u32>,
    wait: Duration,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let deadline = Instant::now() + wait;
    let mut announced = false;
    loop {
        match attempt() {
            Err(error) if error.kind() == io::ErrorKind::AddrInUse && predecessor.is_some() && Instant::now() < deadline => {
                if !announced {
                    announced = true;
                    let pid = predecessor.unwrap_or_default();
                    tracing::warn!(
                        "{addr} is still in use, probably by sockets of the previous process on this data directory (pid \
                         {pid}, exited); waiting up to {wait:?} for it to be released"
                    );
                }
                std::thread::sleep(BIND_RETRY_PAUSE);
            }
            Err(error) if announced => {
                return Err(io::Error::new(error.kind(), format!("{error} (waited {wait:?} for it to be released)")));
            }
            result => return result,
        }
    }
}

/// A handle that stops a listening socket from accepting and frees its port at once
/// ([`release_listener`]), whoever still holds the socket (a pending io_uring accept does
/// until the ring is torn down, after the process exited).
#[derive(Debug)]
pub struct ListenerRelease {
    socket: OwnedFd,
}

/// Shuts a listening socket down: it stops listening at once and its port can be bound
/// again, even while a pending operation still holds the socket.
pub fn release_listener(release: ListenerRelease) {
    // SAFETY: shutdown(2) on a descriptor we own (a duplicate of the listening socket);
    // it touches no memory. Errors (e.g. already shut down) leave nothing to undo.
    unsafe { libc::shutdown(release.socket.as_raw_fd(), libc::SHUT_RDWR) };
}

impl ExclusiveListener {
    /// A handle that can shut this listening socket down later, once this listener was
    /// handed to glommio (see [`release_listener`]).
    pub fn release_handle(&self) -> io::Result<ListenerRelease> {
        Ok(ListenerRelease { socket: self.listener.as_fd().try_clone_to_owned()? })
    }

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
