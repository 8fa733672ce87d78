//! The node's stop signal: SIGTERM or SIGINT, or a shard that failed, tells every shard to
//! stop. Each shard waits on its own socket pair, to which the signal handler (and
//! [`NodeStop::stop`]) writes one byte, so an idle shard sleeps until it is told to stop
//! instead of looking at a flag every few milliseconds.

use std::io::Write;
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use futures_lite::io::AsyncReadExt;

/// The write ends of every shard's stop socket.
pub struct NodeStop {
    wakers: Vec<UnixStream>,
}

/// One shard's end: readable once the node is told to stop.
pub struct ShardStop {
    socket: UnixStream,
}

impl NodeStop {
    /// Makes one stop socket per shard and has SIGTERM and SIGINT write to every one.
    pub fn install(shards: usize) -> Result<(Arc<NodeStop>, Vec<ShardStop>), String> {
        let mut wakers = Vec::with_capacity(shards);
        let mut ends = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (read, write) = UnixStream::pair().map_err(|e| format!("cannot make the stop socket of a shard: {e}"))?;
            write.set_nonblocking(true).map_err(|e| format!("cannot make the stop socket non-blocking: {e}"))?;
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                let end = write.try_clone().map_err(|e| format!("cannot clone the stop socket: {e}"))?;
                signal_hook::low_level::pipe::register(signal, end)
                    .map_err(|e| format!("cannot install the handler of signal {signal}: {e}"))?;
            }
            wakers.push(write);
            ends.push(ShardStop { socket: read });
        }
        Ok((Arc::new(NodeStop { wakers }), ends))
    }

    /// Tells every shard to stop (a shard failed: the others stop cleanly).
    pub fn stop(&self) {
        for mut waker in &self.wakers {
            // A full socket already holds a stop byte: nothing more to tell.
            let _ = waker.write(&[1]);
        }
    }
}

impl ShardStop {
    /// Resolves once the node is told to stop. Must run inside the shard's executor.
    pub async fn stopped(self) {
        // SAFETY: the descriptor is taken out of the std socket, which no longer owns it.
        let mut socket = unsafe { glommio::net::UnixStream::from_raw_fd(self.socket.into_raw_fd()) };
        let mut byte = [0u8; 1];
        // One byte, the end of the stream or an error: all mean stop (nothing else writes).
        let _ = socket.read(&mut byte).await;
    }
}
