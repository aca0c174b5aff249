//! Closing a client connection that will not be relayed (after a failed
//! handshake, or a refusal after one) without a reset: the kernel resets a
//! connection closed with unread data, and a reset can overtake the alert
//! or close_notify already written.
//!
//! Promises: the close (alert, or close_notify + FIN) is given at most 1 s,
//! then what the client still sends is read and discarded for at most 1 s
//! and 64 KiB; the state is on the heap, as this is a rare path that would
//! otherwise size every connection task.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::rt::timeout;

/// How long the close, then the discarding, may take each.
const LINGER: Duration = Duration::from_secs(1);
/// Bytes read and discarded at most.
const MAX_DISCARD: usize = 64 * 1024;

/// Closes `io`'s write side, then discards what the client still sends for
/// a moment, so it sees the alert or a clean "closed before any reply"
/// instead of a reset. Boxed: see the module's promises.
pub(super) fn close_and_drain<'s, S>(io: &'s mut S) -> Pin<Box<dyn Future<Output = ()> + Send + 's>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + ?Sized,
{
    Box::pin(close_and_drain_inline(io))
}

async fn close_and_drain_inline<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(io: &mut S) {
    let _ = timeout(LINGER, io.close()).await;
    let _ = timeout(LINGER, async {
        let mut scratch = [0u8; 2048];
        let mut total = 0;
        while total < MAX_DISCARD {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}
