//! What happens to a request body the handler left unread (a 413 decided
//! from `Content-Length`, an auth refusal, a streamed upload cut short).
//!
//! Two things, as nginx and Apache do it ("lingering close"):
//! - the response says `Connection: close`, so a keep-alive client
//!   (reqwest, Python `requests`) does not put the connection back in its
//!   pool and send its next request into a socket that is about to close;
//! - the rest of the body is read and thrown away, for a bounded time and
//!   amount, before the connection closes. Closing a socket with unread
//!   data sends a TCP reset, and a client still writing its body then gets
//!   "broken pipe" instead of our answer.
//!
//! A client that sent `Expect: 100-continue` and was answered before the
//! body was asked for has not sent it: nothing to drain, and draining would
//! only make hyper invite the body it was refused.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{HeaderValue, CONNECTION, EXPECT};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body::{Frame, SizeHint};

/// How long an unread body is drained before the connection is closed
/// anyway; nginx's `lingering_time` is 30 s, Apache's 2 s per read.
const LINGER: Duration = Duration::from_secs(5);
/// How much of an unread body is drained at most: enough for any body a
/// client sends to a control or job endpoint, not a refused 1 GiB upload.
const LINGER_BYTES: u64 = 256 << 20;

/// A request body that records whether it was read to its end, and drains
/// itself when dropped unread.
struct Watched {
    inner: Body,
    /// Set once the handler has seen the end of the body.
    read_to_end: Arc<AtomicBool>,
    /// Whether the handler asked for any of it.
    polled: bool,
    /// The client waits for `100 Continue` before it sends the body.
    expects_continue: bool,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.read_to_end.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.read_to_end.load(Ordering::Relaxed) || (self.expects_continue && !self.polled) {
            return;
        }
        // Keeping the body alive keeps hyper reading the socket for it.
        let body = std::mem::replace(&mut self.inner, Body::empty());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and discards what is left of a body, within [`LINGER`] and
/// [`LINGER_BYTES`].
async fn drain(body: Body) {
    let mut data = body.into_data_stream();
    let mut drained = 0u64;
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(chunk)) = data.next().await {
            drained += chunk.len() as u64;
            if drained > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Middleware: watches the request body; adds `Connection: close` to the
/// response when the handler did not read it to its end.
pub async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if http_body::Body::is_end_stream(&body) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read_to_end = Arc::new(AtomicBool::new(false));
    let expects_continue = parts
        .headers
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let body = Body::new(Watched {
        inner: body,
        read_to_end: read_to_end.clone(),
        polled: false,
        expects_continue,
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !read_to_end.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
