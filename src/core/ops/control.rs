//! The control socket (`[control] socket`): the running instance hands its
//! listening sockets (apps and admin) to a new `tlb serve --upgrade` over
//! SCM_RIGHTS, then drains and exits once the new one says it serves; and
//! the new side of that exchange.
//!
//! Protocol, one connection: the new instance writes `upgrade`; the running
//! one answers `tlb-listeners PID N` with N descriptors attached; the new
//! one, once ready, writes `drain`; the running one answers `draining` and
//! stops accepting (its connections finish under `[timeouts] drain`).
//!
//! Promises: the socket is created owner-only (0600) under a temporary
//! name, then renamed over the path (atomic: a second instance's socket
//! replaces the first's, never a half-made one); a request line is at most
//! 64 bytes, read within 5 s; the running instance keeps serving unless the
//! new one says `drain` within [`UPGRADE_WINDOW`] of taking the sockets (an
//! upgrade that fails to start changes nothing); the path is removed at
//! exit only while it is still this instance's socket; no `unsafe` (rustix
//! passes the descriptors, std makes them listeners).

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_lite::{AsyncBufReadExt, AsyncWriteExt};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use smol::{Async, channel};

use crate::core::rt::timeout;

/// Longest wait for a request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the running instance waits for `drain` after handing over.
pub const UPGRADE_WINDOW: Duration = Duration::from_secs(60);
/// Most sockets handed over in one exchange (apps' listeners and admin).
const MAX_SOCKETS: usize = 256;
const MAX_LINE: usize = 64;

/// A listening control socket of this instance.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this instance created.
    id: (u64, u64),
}

/// Creates the control socket at `path`, owner-only, replacing whatever is
/// there (a running instance's socket, during an upgrade, or a stale one).
pub fn bind(path: &Path) -> Result<ControlSocket> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let fix = "check [control] socket: its directory must exist and be writable by tlb";
    let tmp = path.with_file_name(format!(
        ".{}.{}.new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("tlb.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).context("creating the control socket")?;
    let addr = SockAddr::unix(&tmp).with_context(|| format!("control socket {}: {fix}", path.display()))?;
    socket
        .bind(&addr)
        .with_context(|| format!("binding the control socket {}: {fix}", tmp.display()))?;
    let made = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        socket.listen(16)?;
        std::fs::rename(&tmp, path)?;
        std::fs::metadata(path)
    })();
    let meta = match made {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            bail!("control socket {}: {e}; {fix}", path.display());
        }
    };
    let listener: UnixListener = socket.into();
    listener.set_nonblocking(true).context("control socket: non-blocking")?;
    Ok(ControlSocket {
        listener,
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    })
}

/// Removes the socket file when dropped, if it is still this instance's
/// (an upgrade renames its own over the path). Hold it until exit.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // An upgrade renamed its own socket over the path: leave that one.
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ControlSocket {
    /// The guard that removes the socket file at exit.
    pub fn file(&self) -> SocketFile {
        SocketFile {
            path: self.path.clone(),
            id: self.id,
        }
    }

    /// Answers control requests until the task is dropped: hands what
    /// `sockets` returns at that moment (duplicates of the listeners being
    /// served) to an upgrading instance and, on its `drain`, sends on
    /// `drain` (once).
    pub async fn serve<F>(self, sockets: F, drain: channel::Sender<()>)
    where
        F: Fn() -> std::io::Result<Vec<TcpListener>>,
    {
        let listener = match self.listener.try_clone().and_then(Async::new) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("control socket {}: {e}; --upgrade will not work", self.path.display());
                return;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                smol::Timer::after(Duration::from_millis(100)).await;
                continue;
            };
            match handle(stream, &sockets).await {
                Ok(true) => {
                    let _ = drain.try_send(());
                    return; // the new instance answers from now on
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("control socket: {e:#}"),
            }
        }
    }
}

/// One control connection; `Ok(true)` when the instance must drain.
/// `sockets` is asked for the listeners only once the request is `upgrade`.
async fn handle<F>(stream: Async<UnixStream>, sockets: &F) -> Result<bool>
where
    F: Fn() -> std::io::Result<Vec<TcpListener>>,
{
    let mut reader = futures_lite::io::BufReader::new(&stream);
    let request = read_line(&mut reader, REQUEST_TIMEOUT).await?;
    if request != "upgrade" {
        let _ = (&stream).write_all(b"unknown request\n").await;
        bail!("unknown request {request:?}");
    }
    let sockets = sockets().context("copying the listening sockets; upgrade refused")?;
    if sockets.len() > MAX_SOCKETS {
        bail!(
            "{} listening sockets, more than one hand-off carries ({MAX_SOCKETS}); restart instead",
            sockets.len()
        );
    }
    let header = format!("tlb-listeners {} {}\n", std::process::id(), sockets.len());
    let fds: Vec<_> = sockets.iter().map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    stream
        .write_with(|s| {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(std::io::Error::other("too many sockets for one message"));
            }
            let iov = [IoSlice::new(header.as_bytes())];
            Ok(rustix::net::sendmsg(s, &iov, &mut control, SendFlags::empty())?)
        })
        .await
        .context("handing the sockets over")?;
    tracing::info!(
        "upgrade: handed {} listening socket(s) to a new instance; waiting for it to serve",
        fds.len()
    );
    match read_line(&mut reader, UPGRADE_WINDOW).await {
        Ok(line) if line == "drain" => {
            let _ = (&stream).write_all(b"draining\n").await;
            tracing::info!("upgrade: the new instance serves; draining and exiting");
            Ok(true)
        }
        Ok(other) => bail!("upgrade: expected drain, got {other:?}; still serving"),
        Err(e) => bail!("upgrade abandoned by the new instance ({e:#}); still serving"),
    }
}

async fn read_line<R: futures_lite::AsyncBufRead + Unpin>(r: &mut R, limit: Duration) -> Result<String> {
    let mut line = String::new();
    let mut bounded = futures_lite::AsyncReadExt::take(r, MAX_LINE as u64);
    let n = timeout(limit, bounded.read_line(&mut line))
        .await
        .map_err(|_| anyhow::anyhow!("no request within {}", humantime::format_duration(limit)))??;
    if n == 0 {
        bail!("connection closed");
    }
    Ok(line.trim_end().to_string())
}

/// The new side: the running instance's sockets, and the connection on
/// which to tell it to drain.
#[derive(Debug)]
pub struct Upgrade {
    stream: UnixStream,
    /// The running instance's process id.
    pub pid: u32,
    pub sockets: Vec<(SocketAddr, TcpListener)>,
}

/// Takes the listening sockets over from the instance at `path`.
pub fn take_over(path: &Path) -> Result<Upgrade> {
    let shown = path.display();
    let stream = UnixStream::connect(path).with_context(|| {
        format!("tlb serve --upgrade: no running tlb answers on {shown}; start it without --upgrade")
    })?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    (&stream).write_all(b"upgrade\n").context("asking for the sockets")?;
    let mut buf = [0u8; 256];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let got = rustix::net::recvmsg(&stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(std::io::Error::from)
        .with_context(|| format!("receiving the sockets from {shown}"))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let text = String::from_utf8_lossy(buf.get(..got.bytes).unwrap_or_default()).into_owned();
    let mut words = text.split_whitespace();
    let (Some("tlb-listeners"), Some(pid), Some(n)) = (words.next(), words.next(), words.next()) else {
        bail!("{shown} answered {text:?}, not a tlb hand-off; is it another program's socket?");
    };
    let pid: u32 = pid.parse().with_context(|| format!("{shown}: bad pid in {text:?}"))?;
    if n.parse::<usize>().ok() != Some(fds.len()) {
        bail!("{shown}: announced {n} sockets, {} arrived", fds.len());
    }
    let mut sockets = Vec::with_capacity(fds.len());
    for fd in fds {
        let l = TcpListener::from(fd);
        let addr = l.local_addr().context("reading a handed socket's address")?;
        sockets.push((addr, l));
    }
    Ok(Upgrade { stream, pid, sockets })
}

impl Upgrade {
    /// Tells the running instance to stop accepting, drain and exit.
    pub fn drain(self) -> Result<()> {
        let pid = self.pid;
        (&self.stream)
            .write_all(b"drain\n")
            .with_context(|| format!("telling pid {pid} to drain"))?;
        let mut line = String::new();
        BufReader::new(std::io::Read::take(&self.stream, MAX_LINE as u64))
            .read_line(&mut line)
            .with_context(|| format!("pid {pid} did not confirm the drain"))?;
        if line.trim_end() != "draining" {
            bail!("pid {pid} answered {line:?} to drain");
        }
        Ok(())
    }
}
