//! The connection handshake: one message each way over the server's
//! `SOCK_SEQPACKET` socket (see [`super::endpoint`]), the region's memfd
//! passed with the answer (`SCM_RIGHTS`).
//!
//! ```text
//! client                                   server
//! connect(DIR/NAME.sock)  ───────────────▶ accept; SO_PEERCRED → admitted?
//! check SO_PEERCRED of the server
//! Hello {magic, version, kind}  ─────────▶ Client: assign a registration
//!                                          Probe: none (status, peeking)
//!            ◀───────── Welcome {status, registration, sizes, counters} + memfd
//! check seals and size, map, validate the header
//! ... the connection stays open: its end tells either side the other died
//! ```
//!
//! Both messages are fixed-size `Pod` records; a message of any other
//! length, a wrong magic or version, or an answer without exactly one
//! descriptor is refused. A received descriptor is close-on-exec from the
//! start (`MSG_CMSG_CLOEXEC`), and any extra ones are closed.

use bytemuck::{Pod, Zeroable};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Version of the handshake (and of the region protocol behind it).
pub const PROTO_VERSION: u32 = 2;

const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"kvsHELO\x01");
const WELCOME_MAGIC: u64 = u64::from_le_bytes(*b"kvsWLCM\x01");

/// "No registration" in [`Welcome::registration`].
pub const NO_REGISTRATION: u32 = u32::MAX;

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// A registered client that submits requests.
    Client = 1,
    /// A look at the region and the server's counters, without a
    /// registration (status, tools choosing types); the server closes the
    /// connection after answering.
    Probe = 2,
}

impl TryFrom<u32> for Kind {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        match v {
            1 => Ok(Kind::Client),
            2 => Ok(Kind::Probe),
            other => Err(other),
        }
    }
}

/// The client's message.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Hello {
    magic: u64,
    version: u32,
    kind: u32,
}

impl Hello {
    /// A hello asking for `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            magic: HELLO_MAGIC,
            version: PROTO_VERSION,
            kind: kind as u32,
        }
    }

    /// The kind asked for, if the message is well-formed.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong.
    pub fn kind(&self) -> Result<Kind, String> {
        if self.magic != HELLO_MAGIC {
            return Err("not a kvs hello".into());
        }
        if self.version != PROTO_VERSION {
            return Err(format!(
                "protocol version {}, this server speaks {PROTO_VERSION}",
                self.version
            ));
        }
        Kind::try_from(self.kind).map_err(|k| format!("unknown kind {k}"))
    }
}

/// How the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Admitted; the memfd comes with the answer.
    Ok = 0,
    /// Every registration is in use.
    TooManyClients = 1,
    /// The peer's credentials are not admitted by the region's mode.
    Denied = 2,
    /// The server is shutting down.
    Closing = 3,
    /// The hello was malformed or of another version.
    BadHello = 4,
}

impl TryFrom<u32> for Status {
    type Error = u32;

    fn try_from(v: u32) -> Result<Self, u32> {
        [
            Status::Ok,
            Status::TooManyClients,
            Status::Denied,
            Status::Closing,
            Status::BadHello,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
        .ok_or(v)
    }
}

/// The server's answer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct Welcome {
    magic: u64,
    version: u32,
    status: u32,
    /// The client's registration index ([`NO_REGISTRATION`] for a probe).
    pub registration: u32,
    /// The registration's generation (changes each time the index is
    /// handed out).
    pub registration_generation: u32,
    /// The server's pid.
    pub server_pid: u32,
    /// The server's uid.
    pub server_uid: u32,
    /// Bytes of the region (the memfd's size).
    pub region_size: u64,
    /// The store's global version when answering.
    pub store_version: u64,
    /// Entries in the store when answering.
    pub entries: u64,
    /// Client registrations the server offers.
    pub max_clients: u32,
    _reserved: u32,
    /// Bytes of the store segment (the second descriptor's size).
    pub store_size: u64,
}

const _: () = assert!(std::mem::size_of::<Welcome>() == 72);

impl Welcome {
    /// An answer with `status` and everything else zero.
    pub fn new(status: Status) -> Self {
        Self {
            magic: WELCOME_MAGIC,
            version: PROTO_VERSION,
            status: status as u32,
            registration: NO_REGISTRATION,
            ..Zeroable::zeroed()
        }
    }

    /// The decoded status, if the message is well-formed.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong.
    pub fn status(&self) -> Result<Status, String> {
        if self.magic != WELCOME_MAGIC {
            return Err("the server's answer is not a kvs welcome".into());
        }
        if self.version != PROTO_VERSION {
            return Err(format!(
                "the server speaks protocol version {}, this program {PROTO_VERSION}; use matching builds",
                self.version
            ));
        }
        Status::try_from(self.status).map_err(|s| format!("unknown status {s} from the server"))
    }

    /// The registration, if one was given.
    pub fn registration(&self) -> Option<(u32, u32)> {
        (self.registration != NO_REGISTRATION)
            .then_some((self.registration, self.registration_generation))
    }
}

/// Sends the client's hello.
///
/// # Errors
///
/// The OS error.
pub fn send_hello(conn: BorrowedFd<'_>, kind: Kind) -> io::Result<()> {
    let hello = Hello::new(kind);
    let n = socket::send(
        conn.as_raw_fd(),
        bytemuck::bytes_of(&hello),
        MsgFlags::MSG_NOSIGNAL,
    )?;
    if n != std::mem::size_of::<Hello>() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short hello"));
    }
    Ok(())
}

/// Reads a hello from a non-blocking connection: `Ok(None)` if none has
/// arrived yet.
///
/// # Errors
///
/// `UnexpectedEof` if the peer closed; `InvalidData` for a message of the
/// wrong length; other OS errors.
pub fn recv_hello(conn: BorrowedFd<'_>) -> io::Result<Option<Hello>> {
    let mut hello = Hello::zeroed();
    // One byte more than a hello, so a longer message shows as truncated.
    let mut buf = [0u8; std::mem::size_of::<Hello>() + 1];
    match socket::recv(conn.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(n) if n == std::mem::size_of::<Hello>() => {
            bytemuck::bytes_of_mut(&mut hello).copy_from_slice(&buf[..n]);
            Ok(Some(hello))
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a hello of the wrong length",
        )),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sends the server's answer, with the region's descriptors if admitted
/// (the control segment, then the store segment, read-only).
///
/// # Errors
///
/// The OS error.
pub fn send_welcome(
    conn: BorrowedFd<'_>,
    welcome: &Welcome,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let iov = [IoSlice::new(bytemuck::bytes_of(welcome))];
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let n = socket::sendmsg::<()>(
        conn.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    if n != std::mem::size_of::<Welcome>() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short welcome"));
    }
    Ok(())
}

/// Why no answer came.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing within the wait (the server is busy or still starting).
    TimedOut,
    /// The server closed the connection without answering.
    Closed,
    /// A malformed answer.
    Malformed(String),
    /// Any other OS error.
    Io(io::Error),
}

/// Most descriptors an answer carries.
pub const MAX_WELCOME_FDS: usize = 2;

/// Waits up to `wait` for the server's answer and the descriptors with it
/// (none, or the control and the store segment).
///
/// # Errors
///
/// [`RecvError`].
pub fn recv_welcome(
    conn: BorrowedFd<'_>,
    wait: Duration,
) -> Result<(Welcome, Vec<OwnedFd>), RecvError> {
    let wait = wait.max(Duration::from_millis(1));
    let tv = nix::sys::time::TimeVal::new(
        wait.as_secs().min(i64::MAX as u64) as _,
        wait.subsec_micros() as _,
    );
    socket::setsockopt(&conn, socket::sockopt::ReceiveTimeout, &tv)
        .map_err(|e| RecvError::Io(e.into()))?;
    let mut welcome = Welcome::zeroed();
    let mut buf = [0u8; std::mem::size_of::<Welcome>() + 1];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (n, fds, truncated) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {
                return Err(RecvError::TimedOut)
            }
            Err(e) => return Err(RecvError::Io(e.into())),
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for fd in raw {
                        // SAFETY: the kernel installed these descriptors in
                        // this process for us; nothing else owns them.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, fds, truncated)
    };
    if n == 0 && fds.is_empty() {
        return Err(RecvError::Closed);
    }
    if truncated || n != std::mem::size_of::<Welcome>() || fds.len() > MAX_WELCOME_FDS {
        return Err(RecvError::Malformed(format!(
            "an answer of {n} bytes with {} descriptors",
            fds.len()
        )));
    }
    bytemuck::bytes_of_mut(&mut welcome).copy_from_slice(&buf[..n]);
    Ok((welcome, fds))
}
