//! The notify socket bluetoothd hands over on AcquireNotify: a unix
//! SOCK_SEQPACKET socket, one datagram per BLE notification. Read so that
//! a frame's burst of notifications wakes the bridge once, not once each.
//!
//! The runtime's epoll is edge-triggered and reports every arriving
//! datagram, even to a task that is not waiting: a 300-byte frame in
//! 20-byte notifications was fifteen wake-ups. So the socket is watched
//! only while waiting for the first notification of a burst; then it rests
//! (out of epoll) while the rest arrives, and is read empty in one go.

use std::io;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use bluer::gatt::CharacteristicReader;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::sleep;

/// The most bytes one [`NotifySocket::recv_burst`] returns; the assembler
/// holds 4 KiB.
const BURST_BYTES: usize = 2048;
/// The scratch buffer's size at least: the ATT maximum, so no notification
/// is ever cut, whatever MTU BlueZ reports.
const MIN_SCRATCH: usize = 517;

pub(super) struct NotifySocket {
    /// `None` only when registering with the runtime failed.
    socket: Option<Socket>,
    /// One datagram is read into this, then copied out.
    scratch: Box<[u8]>,
    /// bluetoothd closed the socket after the bytes last returned.
    closed: bool,
}

enum Socket {
    /// In the runtime's epoll: waiting for the first notification.
    Watched(AsyncFd<UnixDatagram>),
    /// Out of it: a burst is coming in.
    Resting(UnixDatagram),
}

/// What waiting on the socket gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Got {
    Bytes(Vec<u8>),
    /// bluetoothd closed the socket (a read of 0 bytes) or it broke: the
    /// link is over.
    Closed,
    /// Nothing came within the time asked.
    Quiet,
}

impl NotifySocket {
    pub(super) fn new(reader: CharacteristicReader) -> io::Result<Self> {
        let mtu = reader.mtu();
        let fd = reader.into_raw_fd()?;
        // SAFETY: `into_raw_fd` gave up bluer's ownership of the
        // descriptor; nothing else holds or closes it, so this socket is
        // its only owner.
        let socket = unsafe { UnixDatagram::from_raw_fd(fd) };
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket: Some(Socket::Resting(socket)),
            scratch: vec![0; mtu.max(MIN_SCRATCH)].into_boxed_slice(),
            closed: false,
        })
    }

    /// One notification's bytes.
    pub(super) async fn recv_one(&mut self, quiet: Duration) -> Got {
        if self.closed {
            return Got::Closed;
        }
        let Some(fd) = watched(&mut self.socket) else {
            return Got::Closed;
        };
        let scratch = &mut self.scratch;
        let got = tokio::select! {
            r = recv_into(fd, scratch) => Some(r),
            () = sleep(quiet) => None,
        };
        match got {
            Some(Ok(n)) if n > 0 => Got::Bytes(scratch[..n].to_vec()),
            Some(_) => {
                self.closed = true;
                Got::Closed
            }
            None => Got::Quiet,
        }
    }

    /// The bytes of every notification of a burst, in order: waits for
    /// the first, lets the rest arrive for `burst`, then reads all that is
    /// queued (up to [`BURST_BYTES`]). Cancel-safe: nothing is taken from
    /// the socket before the last await.
    pub(super) async fn recv_burst(&mut self, quiet: Duration, burst: Duration) -> Got {
        loop {
            if self.closed {
                return Got::Closed;
            }
            let Some(fd) = watched(&mut self.socket) else {
                return Got::Closed;
            };
            let ready = tokio::select! {
                r = fd.readable() => Some(r.is_ok()),
                () = sleep(quiet) => None,
            };
            match ready {
                None => return Got::Quiet,
                Some(false) => {
                    self.closed = true;
                    return Got::Closed;
                }
                Some(true) => {}
            }
            rest(&mut self.socket);
            sleep(burst).await;
            let (bytes, closed) = self.drain();
            self.closed = closed;
            if !bytes.is_empty() {
                return Got::Bytes(bytes);
            }
            // Readiness without a datagram: wait again (or report the end).
        }
    }

    /// Everything queued, without waiting; and whether the socket ended.
    fn drain(&mut self) -> (Vec<u8>, bool) {
        let Self {
            socket, scratch, ..
        } = self;
        let sock = match socket {
            Some(Socket::Watched(fd)) => fd.get_ref(),
            Some(Socket::Resting(s)) => s,
            None => return (Vec::new(), true),
        };
        let mut bytes = Vec::with_capacity(BURST_BYTES + scratch.len());
        while bytes.len() < BURST_BYTES {
            match sock.recv(scratch) {
                Ok(0) => return (bytes, true),
                Ok(n) => bytes.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return (bytes, true),
            }
        }
        (bytes, false)
    }
}

/// The socket in the runtime's epoll (registered again after a rest; one
/// that is already readable is reported at once); `None` if it cannot be.
fn watched(slot: &mut Option<Socket>) -> Option<&AsyncFd<UnixDatagram>> {
    if matches!(slot, Some(Socket::Resting(_))) {
        if let Some(Socket::Resting(s)) = slot.take() {
            // SAFETY: the socket owns its descriptor and the AsyncFd owns
            // the socket until `into_inner` gives it back: it stays open
            // and the same for the registration's whole life.
            let registered = unsafe { AsyncFd::register_with_interest(s, Interest::READABLE) };
            *slot = Some(match registered {
                Ok(fd) => Socket::Watched(fd),
                Err(e) => Socket::Resting(e.into_parts().0),
            });
        }
    }
    match slot {
        Some(Socket::Watched(fd)) => Some(fd),
        _ => None,
    }
}

/// The socket out of the runtime's epoll.
fn rest(slot: &mut Option<Socket>) {
    if matches!(slot, Some(Socket::Watched(_))) {
        if let Some(Socket::Watched(fd)) = slot.take() {
            *slot = Some(Socket::Resting(fd.into_inner()));
        }
    }
}

/// One datagram into `buf`.
async fn recv_into(fd: &AsyncFd<UnixDatagram>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|s| s.get_ref().recv(buf)) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}
