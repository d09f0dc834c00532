//! Bodies: the one body type the middleware answers with, and capped buffering.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// The error type of [`GatewayBody`]: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response of the middleware, and of the requests it passes on: the
/// upstream's own body, or a buffer (a refusal, a replay, a request body read for its
/// fingerprint). axum's `Router::layer` and hyper's servers both take it as it is.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body from bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> GatewayBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Any body, boxed.
pub(crate) fn boxed<B>(body: B) -> GatewayBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// What [`collect_capped`] read.
pub(crate) enum Collected {
    /// The whole body, within the cap. Trailers, if any, are dropped.
    Whole(Bytes),
    /// The body is larger than the cap: what was read, followed by the rest, unread.
    TooLarge(GatewayBody),
    /// The body failed while being read.
    Failed,
}

/// Read `body` into memory if it holds at most `cap` bytes.
pub(crate) async fn collect_capped<B>(body: B, cap: usize) -> Collected
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = boxed(body);
    if body.size_hint().lower() > cap as u64 {
        return Collected::TooLarge(body);
    }
    let mut buf = BytesMut::new();
    loop {
        match body.frame().await {
            None => return Collected::Whole(buf.freeze()),
            Some(Err(_)) => return Collected::Failed,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > cap {
                        let prefixed = Prefixed {
                            prefix: Some(buf.freeze()),
                            rest: body,
                        };
                        return Collected::TooLarge(prefixed.boxed_unsync());
                    }
                }
            }
        }
    }
}

/// Bytes already read, then the rest of the body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: GatewayBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(p) = this.prefix.take() {
            if !p.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(p))));
            }
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(Bytes::is_empty) && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let p = self.prefix.as_ref().map_or(0, |b| b.len() as u64);
        let r = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(r.lower().saturating_add(p));
        if let Some(u) = r.upper() {
            h.set_upper(u.saturating_add(p));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // The bodies here are ready at once: poll with a no-op waker.
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn within_the_cap_is_whole() {
        match block_on(collect_capped(Full::new(Bytes::from_static(b"hello")), 5)) {
            Collected::Whole(b) => assert_eq!(&b[..], b"hello"),
            _ => panic!("not whole"),
        }
    }

    #[test]
    fn over_the_cap_keeps_every_byte() {
        // A body of several frames, of unknown length.
        let body = Frames((0..4u8).map(|i| Bytes::from(vec![b'a' + i; 3])).collect());
        match block_on(collect_capped(body, 7)) {
            Collected::TooLarge(rest) => {
                let all = block_on(rest.collect()).unwrap().to_bytes();
                assert_eq!(&all[..], b"aaabbbcccddd");
            }
            _ => panic!("not too large"),
        }
        // A known length over the cap is refused before reading.
        match block_on(collect_capped(Full::new(Bytes::from_static(b"123456")), 5)) {
            Collected::TooLarge(rest) => {
                assert_eq!(rest.size_hint().exact(), Some(6));
            }
            _ => panic!("not too large"),
        }
    }

    /// A body of ready frames that does not tell its length.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }
}
