//! Bidirectional byte relay between two streams, driven by one task.
//!
//! Promises:
//! - Bounded memory: one buffer of [`BUF_SIZE`] per direction at most, and
//!   only while bytes are in flight: an idle direction returns its buffer to
//!   a small per-thread pool, so idle connections hold no relay buffers.
//! - Backpressure: nothing more is read from a side until what was read has
//!   been written to the other.
//! - Half-close: EOF from one side is passed on as a write shutdown of the
//!   other (TCP FIN, or TLS close_notify + FIN); the other direction keeps
//!   flowing until it ends too.
//! - An error on either side ends the relay (the caller drops both streams);
//!   no bytes flow either way for `idle` ends it too.
//! - Fairness: a direction yields after [`POLL_BUDGET`] bytes per poll.
//! - No lock: both directions are polled from one future, so a TLS stream
//!   (one state machine) needs no split.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use smol::Timer;

use crate::core::rt::net::is_disconnect;

/// Size of one relay buffer: four maximal TLS records of plaintext, so a
/// bulk transfer makes one syscall per 64 KiB on the plain side and one
/// vectored write of four records on the TLS side.
pub const BUF_SIZE: usize = 64 * 1024;
/// A read this large (a full TLS record of plaintext) suggests more is
/// queued: the relay reads again, without waiting, before it writes.
const RECORD: usize = 16 * 1024;
/// Bytes one direction may move in one poll before yielding.
pub const POLL_BUDGET: usize = 256 * 1024;
/// Buffers kept per thread for reuse (2 MiB).
const POOL_MAX: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buf(b: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(b);
        }
    });
}

/// Which side of the relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first stream passed to [`relay`] (the client in tlb).
    A,
    /// The second stream (the upstream in tlb).
    B,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF and were shut down.
    Done,
    /// No bytes moved for the idle timeout.
    Idle,
    /// The caller's hard deadline passed (certificate expiry, max lifetime).
    Deadline,
    /// An I/O error on one side.
    Error(Side, io::Error),
}

/// Byte counts, readable while the relay runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes read from A and written to B.
    pub a_to_b: u64,
    /// Bytes read from B and written to A.
    pub b_to_a: u64,
}

/// One direction: read from `r`, write to `w`.
#[derive(Default)]
struct Pipe {
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
    read_eof: bool,
    need_flush: bool,
    done: bool,
    moved: u64,
}

/// Result of polling one direction: which side failed, if any.
type PipeResult = Result<(), (bool, io::Error)>; // bool: true = reader side failed

impl Pipe {
    /// Polls until this direction is finished (Ready(Ok)), fails, or would block.
    /// Sets `*progress` when bytes moved.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W, progress: &mut bool) -> Poll<PipeResult>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut budget = POLL_BUDGET;
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // 1. Drain what we hold.
            ready!(self.poll_drain(cx, w, progress))?;
            // 2. Reader finished: flush and shut the writer down.
            if self.read_eof {
                return self.poll_shutdown(cx, w);
            }
            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // 3. Read more.
            match self.poll_fill(cx, r, &mut budget, progress) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err((true, e))),
                Poll::Pending => return self.poll_idle(cx, w),
            }
        }
    }

    /// Writes what the buffer holds; Ready(Ok) once it is all written.
    #[inline]
    fn poll_drain<W>(&mut self, cx: &mut Context<'_>, w: &mut W, progress: &mut bool) -> Poll<PipeResult>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        while self.pos < self.len {
            let Some(buf) = self.buf.as_ref() else { break };
            match Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.len]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err((false, io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.pos += n;
                    self.moved += n as u64;
                    self.need_flush = true;
                    *progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((false, e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// After the reader's EOF: gives the buffer back and shuts the writer
    /// down; Ready(Ok) once this direction is done.
    #[inline]
    fn poll_shutdown<W>(&mut self, cx: &mut Context<'_>, w: &mut W) -> Poll<PipeResult>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if let Some(b) = self.buf.take() {
            give_buf(b);
        }
        match Pin::new(&mut *w).poll_close(cx) {
            Poll::Ready(Ok(())) => {
                self.done = true;
                Poll::Ready(Ok(()))
            }
            // The peer may already be gone; its own direction reports that.
            Poll::Ready(Err(e)) if is_disconnect(&e) => {
                self.done = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err((false, e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads into the (empty) buffer, then, behind a full record, what is
    /// already queued, so the other side gets one larger write instead of
    /// several. Ready(Ok) when something was read or EOF was seen.
    #[inline]
    fn poll_fill<R>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        budget: &mut usize,
        progress: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let buf = self.buf.get_or_insert_with(take_buf);
        let n = match Pin::new(&mut *r).poll_read(cx, buf) {
            Poll::Ready(Ok(0)) => {
                self.read_eof = true;
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.pos = 0;
        self.len = n;
        *budget = budget.saturating_sub(n);
        *progress = true;
        let mut last = n;
        while last >= RECORD && buf.len() - self.len >= RECORD {
            match Pin::new(&mut *r).poll_read(cx, &mut buf[self.len..]) {
                Poll::Ready(Ok(0)) => {
                    self.read_eof = true;
                    break;
                }
                Poll::Ready(Ok(m)) => {
                    self.len += m;
                    *budget = budget.saturating_sub(m);
                    last = m;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Nothing to read now and nothing in flight: gives the buffer back
    /// while idle and flushes what was written. Pending unless the flush
    /// fails.
    #[inline]
    fn poll_idle<W>(&mut self, cx: &mut Context<'_>, w: &mut W) -> Poll<PipeResult>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        if let Some(b) = self.buf.take() {
            give_buf(b);
        }
        if self.need_flush {
            match Pin::new(&mut *w).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err((false, e))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            give_buf(b);
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.release();
    }
}

/// Relays between `a` and `b` until both directions end, one side fails,
/// nothing moves for `idle`, or `deadline` passes. `progress` is updated as
/// bytes move (so the caller can account partial transfers after an error).
pub async fn relay<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    deadline: Option<Instant>,
    progress: &mut Transferred,
) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut r = Relay {
        a,
        b,
        ab: Pipe::default(),
        ba: Pipe::default(),
        idle,
        deadline,
        last_activity: Instant::now(),
        timer: Timer::after(deadline.map_or(idle, |d| idle.min(d.saturating_duration_since(Instant::now())))),
        progress,
    };
    std::future::poll_fn(move |cx| r.poll_relay(cx)).await
}

struct Relay<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    ab: Pipe,
    ba: Pipe,
    idle: Duration,
    deadline: Option<Instant>,
    last_activity: Instant,
    timer: Timer,
    progress: &'a mut Transferred,
}

impl<A, B> Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let mut moved = false;
        let ab = self.ab.poll(cx, &mut *self.a, &mut *self.b, &mut moved);
        let ba = self.ba.poll(cx, &mut *self.b, &mut *self.a, &mut moved);
        self.progress.a_to_b = self.ab.moved;
        self.progress.b_to_a = self.ba.moved;
        if let Poll::Ready(Err((reader_failed, e))) = ab {
            return Poll::Ready(RelayEnd::Error(if reader_failed { Side::A } else { Side::B }, e));
        }
        if let Poll::Ready(Err((reader_failed, e))) = ba {
            return Poll::Ready(RelayEnd::Error(if reader_failed { Side::B } else { Side::A }, e));
        }
        if ab.is_ready() && ba.is_ready() {
            return Poll::Ready(RelayEnd::Done);
        }
        if moved {
            self.last_activity = Instant::now();
        }
        // Idle timer: re-armed lazily, only when it fires early.
        loop {
            match Pin::new(&mut self.timer).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => {
                    let now = Instant::now();
                    if self.deadline.is_some_and(|d| now >= d) {
                        return Poll::Ready(RelayEnd::Deadline);
                    }
                    let idle_at = self.last_activity + self.idle;
                    if now >= idle_at {
                        return Poll::Ready(RelayEnd::Idle);
                    }
                    self.timer.set_at(self.deadline.map_or(idle_at, |d| d.min(idle_at)));
                }
            }
        }
    }
}
