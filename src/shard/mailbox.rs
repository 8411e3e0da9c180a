//! Where a shard takes connections from shards of other worker processes
//! (docs/architecture.md, "Moving connections"): each shard has a unix
//! datagram socket pair, made by the supervisor before it forks the shard's
//! first worker and held by it for the life of the service. Every worker
//! inherits every pair; a shard reads its own. A message is one handoff: the
//! connection's socket by SCM_RIGHTS, and the rest as `Handoff::encode`
//! wrote it. A message sent to a shard whose worker died stays queued for
//! the next worker of that shard, which the supervisor starts.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::http::handoff::Handoff;

/// The most bytes one handoff may take: a connection with more unread
/// input than this stays on its shard.
const MAX_MESSAGE: usize = 64 * 1024;

/// Room for one descriptor's control message.
const CONTROL: usize = 64;

/// Every shard's pair, by shard number.
pub struct Mailboxes {
    /// (read end, write end).
    pairs: Vec<(OwnedFd, OwnedFd)>,
}

impl Mailboxes {
    pub fn new() -> Mailboxes {
        Mailboxes { pairs: Vec::new() }
    }

    /// Makes the pairs of shards `0..shards` that do not have one yet.
    pub fn ensure(&mut self, shards: usize) -> std::io::Result<()> {
        while self.pairs.len() < shards {
            let mut fds = [0; 2];
            // SAFETY: socketpair writes two descriptors into `fds`.
            let made = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            };
            if made != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: both were just made and are owned here.
            let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            self.pairs.push(pair);
        }
        Ok(())
    }

    /// Shards with a mailbox.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Passes what waits in shard `from`'s mailbox to shard `to`'s: `from`
    /// has no worker any more (the supervisor removed the shard). What `to`
    /// cannot take is closed, so its client sees the connection end.
    pub fn forward(&self, from: usize, to: usize) {
        let Some((read, _)) = self.pairs.get(from) else {
            return;
        };
        let mut buf = Vec::new();
        loop {
            match receive(read, &mut buf) {
                Received::Handoff(handoff) => {
                    let _ = self.send(to, handoff);
                }
                Received::Malformed(_) => {}
                Received::Empty | Received::Failed(_) => return,
            }
        }
    }

    /// The end shard `shard` reads, for its own use.
    pub fn inbox(&self, shard: usize) -> Option<OwnedFd> {
        self.pairs.get(shard)?.0.try_clone().ok()
    }

    /// Sends a connection to shard `to`, without waiting: a full mailbox, or
    /// too much unread input, gives it back.
    pub fn send(&self, to: usize, handoff: Box<Handoff>) -> Result<(), Box<Handoff>> {
        let Some((_, write)) = self.pairs.get(to) else {
            return Err(handoff);
        };
        let Some(bytes) = handoff.encode().filter(|b| b.len() <= MAX_MESSAGE) else {
            return Err(handoff);
        };
        match send_with_fd(write.as_raw_fd(), &bytes, handoff.socket().as_raw_fd()) {
            // Our copy of the socket closes as the handoff drops.
            Ok(()) => Ok(()),
            Err(e) => {
                log::debug!("Cannot hand a connection to shard {to}: {e}");
                Err(handoff)
            }
        }
    }
}

fn send_with_fd(socket: RawFd, bytes: &[u8], fd: RawFd) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u64; CONTROL / 8];
    // SAFETY: a zeroed msghdr pointing at buffers that outlive the call; the
    // control message is written through the CMSG macros within `control`.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(socket, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What one read of a mailbox gave.
pub enum Received {
    Handoff(Box<Handoff>),
    /// A message that was not a whole handoff, and why; its descriptor, if
    /// it came, is closed.
    Malformed(&'static str),
    /// Nothing is queued.
    Empty,
    /// The mailbox itself failed.
    Failed(std::io::Error),
}

/// Takes one message from a mailbox's read end, without waiting.
pub fn receive(inbox: &impl AsFd, buf: &mut Vec<u8>) -> Received {
    buf.clear();
    buf.reserve(MAX_MESSAGE + 1);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.capacity(),
    };
    let mut control = [0u64; CONTROL / 8];
    // SAFETY: a zeroed msghdr pointing at buffers that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL as _;
    // SAFETY: recvmsg writes within the buffers the header describes.
    let got = unsafe {
        libc::recvmsg(
            inbox.as_fd().as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if got < 0 {
        let e = std::io::Error::last_os_error();
        return match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Received::Empty,
            _ => Received::Failed(e),
        };
    }
    // SAFETY: recvmsg wrote `got` bytes into the buffer.
    unsafe { buf.set_len(got as usize) };
    let mut fd = None;
    // SAFETY: walking the control messages recvmsg wrote, within `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let received = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    // Only the first is the connection; others close.
                    fd.get_or_insert(received);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // The kernel drops a descriptor this process has no room for.
        return Received::Malformed("its socket did not arrive (out of descriptors?)");
    }
    let Some(fd) = fd else {
        return Received::Malformed("no socket came with it");
    };
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Received::Malformed("it was cut short");
    }
    match Handoff::decode(fd, buf) {
        Some(handoff) => Received::Handoff(Box::new(handoff)),
        None => Received::Malformed("its bytes are not a handoff"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_mailbox_gives_the_connection_back() {
        let mut boxes = Mailboxes::new();
        boxes.ensure(1).unwrap();
        // What the receiving end holds is bounded: some send fails at last.
        let mut refused = false;
        for _ in 0..100_000 {
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            let handoff = crate::http::handoff::tests::sample(a.into());
            if boxes.send(0, Box::new(handoff)).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
        let inbox = boxes.inbox(0).unwrap();
        let mut buf = Vec::new();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let sent = crate::http::handoff::tests::sample(a.into()).encode();
        assert!(sent.is_some());
        match receive(&inbox, &mut buf) {
            Received::Handoff(handoff) => assert_eq!(handoff.encode(), sent),
            _ => panic!("the first connection sent is not there"),
        }
    }
}
