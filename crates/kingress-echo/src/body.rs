//! Response bodies.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The body type of every echo response.
pub(crate) type EchoBody = BoxBody<Bytes, hyper::Error>;

/// The repeating pattern of [`PatternBody`].
const PATTERN: &[u8] = b"0123456789abcdef";
/// Largest chunk [`PatternBody`] emits (a multiple of the pattern length, so
/// every chunk starts at `0`).
pub(crate) const CHUNK_SIZE: usize = 64 * 1024;

fn pattern_chunk() -> &'static Bytes {
    static CHUNK: OnceLock<Bytes> = OnceLock::new();
    CHUNK.get_or_init(|| {
        PATTERN
            .iter()
            .copied()
            .cycle()
            .take(CHUNK_SIZE)
            .collect::<Vec<u8>>()
            .into()
    })
}

/// A body of exactly `remaining` bytes of `0123456789abcdef…`, produced in
/// chunks of at most [`CHUNK_SIZE`] bytes that share one static buffer.
#[derive(Debug)]
pub(crate) struct PatternBody {
    remaining: u64,
}

impl PatternBody {
    pub(crate) fn new(len: u64) -> Self {
        Self { remaining: len }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(this.remaining).map_or(CHUNK_SIZE, |r| r.min(CHUNK_SIZE));
        this.remaining = this.remaining.saturating_sub(n as u64);
        Poll::Ready(Some(Ok(Frame::data(pattern_chunk().slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Boxes a body that cannot fail.
pub(crate) fn infallible<B>(body: B) -> EchoBody
where
    B: Body<Data = Bytes, Error = Infallible> + Send + Sync + 'static,
{
    body.map_err(|never| match never {}).boxed()
}

/// Reads `body` to its end, counting its data bytes without keeping them.
pub(crate) async fn count(body: &mut Incoming) -> Result<u64, hyper::Error> {
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            n = n.saturating_add(data.len() as u64);
        }
    }
    Ok(n)
}
