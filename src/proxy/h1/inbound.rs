//! A request body read by switchyard's own HTTP/1 path, and the one place its connection and
//! the request meet ([`Exchange`]).
//!
//! The connection loop owns the socket and its read buffer. It decodes the body's framing
//! ([`Pump`]: a declared length, or chunked) and hands the pieces to the request's body
//! ([`Inbound`]) through a small bounded queue, only once the request has asked for its body
//! (so a request answered without reading its body, such as a 404, never makes the client send
//! it, and `100 Continue` goes out only then), and only while there is room (back-pressure).
//! The upstream's informational answers come back the other way through the same exchange.
//!
//! Both ends live in the connection's task: the loop polls the request's future, then pumps,
//! then polls again while either moved. So the body needs no waker of its own: when it finds
//! the queue empty, the loop's next read of the socket (which registers the task) is what it
//! waits for.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use crossbeam_queue::ArrayQueue;
use http::HeaderMap;
use http_body::Frame;

use crate::http1::{chunked, Framing};
use crate::upstream::client::{BodyFault, BodyStream, Interim};

/// Body pieces waiting for the request; informational heads waiting for the client.
const QUEUED: usize = 4;

const WANTED: u8 = 1;
const DROPPED: u8 = 2;

/// One piece of a request body.
enum Item {
    Data(Bytes),
    /// The last piece of a chunked body that had trailer fields.
    Trailers(HeaderMap),
    End,
    Fault(BodyFault),
}

/// What a connection and its current request share. One per connection, reused by each of
/// its requests.
pub struct Exchange {
    items: ArrayQueue<Item>,
    interim: ArrayQueue<http::response::Parts>,
    flags: AtomicU8,
}

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Arc::new(Exchange {
            items: ArrayQueue::new(QUEUED),
            interim: ArrayQueue::new(QUEUED),
            flags: AtomicU8::new(0),
        })
    }

    /// Whether the request has asked for its body.
    pub fn wanted(&self) -> bool {
        self.flags.load(Relaxed) & WANTED != 0
    }

    /// Whether the request let go of its body before its end.
    pub fn dropped(&self) -> bool {
        self.flags.load(Relaxed) & DROPPED != 0
    }

    /// The next informational head to send to the client.
    pub fn next_interim(&self) -> Option<http::response::Parts> {
        self.interim.pop()
    }
}

impl Interim for Exchange {
    fn interim(&self, head: http::response::Parts) {
        // More than a few unsent at once: the rest are dropped (they are hints).
        let _ = self.interim.push(head);
    }
}

/// The request's end of a body its connection reads.
pub struct Inbound {
    exchange: Arc<Exchange>,
    length: Option<u64>,
    done: bool,
}

impl BodyStream for Inbound {
    fn is_end_stream(&self) -> bool {
        Inbound::is_end_stream(self)
    }

    fn length(&self) -> Option<u64> {
        Inbound::length(self)
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        Inbound::poll_frame(self, cx)
    }
}

impl Inbound {
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    pub fn is_end_stream(&self) -> bool {
        self.done
    }

    /// The next piece; `Pending` when the connection has not read it yet (see the module doc
    /// for why no waker is kept).
    pub fn poll_frame(&mut self, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        if self.done {
            return Poll::Ready(None);
        }
        self.exchange.flags.fetch_or(WANTED, Relaxed);
        let Some(item) = self.exchange.items.pop() else {
            return Poll::Pending;
        };
        Poll::Ready(match item {
            Item::Data(data) => Some(Ok(Frame::data(data))),
            Item::Trailers(t) => {
                self.done = true;
                Some(Ok(Frame::trailers(t)))
            }
            Item::End => {
                self.done = true;
                None
            }
            Item::Fault(f) => {
                self.done = true;
                Some(Err(f))
            }
        })
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if !self.done {
            self.exchange.flags.fetch_or(DROPPED, Relaxed);
        }
    }
}

/// The connection's end: decodes the body's framing from the read buffer into the exchange.
pub enum Pump {
    Length(u64),
    Chunked(chunked::Decoder),
    /// All data is queued; the end is still to be.
    Ending,
    Done,
    /// The body was malformed or broken off; the fault, until the request is told.
    Failed(Option<BodyFault>),
}

/// What the pump needs next.
pub enum Need {
    /// Nothing now (the body is done, not wanted, or the queue is full).
    Nothing,
    /// More bytes from the socket.
    Bytes,
}

impl Pump {
    /// The pump and the request's body for a request of `framing` (`None`: it has no body).
    pub fn new(framing: Framing, exchange: &Arc<Exchange>) -> (Pump, Option<Inbound>) {
        // Whatever the previous request left is gone with it.
        while exchange.items.pop().is_some() {}
        while exchange.interim.pop().is_some() {}
        exchange.flags.store(0, Relaxed);
        let (pump, length) = match framing {
            Framing::Length(n) if n > 0 => (Pump::Length(n), Some(n)),
            Framing::Chunked => (Pump::Chunked(chunked::Decoder::default()), None),
            _ => return (Pump::Done, None),
        };
        let body = Inbound {
            exchange: exchange.clone(),
            length,
            done: false,
        };
        (pump, Some(body))
    }

    /// Whether the whole body was read off the connection (so the next request starts
    /// right after it).
    pub fn is_done(&self) -> bool {
        matches!(self, Pump::Done)
    }

    /// Moves what `buf` holds of the body into the exchange, as far as the request wants it
    /// and there is room. Returns whether anything moved, and what it needs next.
    pub fn pump(&mut self, buf: &mut BytesMut, exchange: &Exchange) -> (bool, Need) {
        let mut moved = false;
        loop {
            if matches!(self, Pump::Done | Pump::Failed(None))
                || !exchange.wanted()
                || exchange.dropped()
                || exchange.items.is_full()
            {
                return (moved, Need::Nothing);
            }
            let item = match self {
                Pump::Length(left) => {
                    if buf.is_empty() {
                        return (moved, Need::Bytes);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Pump::Ending;
                    }
                    Item::Data(buf.split_to(n).freeze())
                }
                Pump::Ending => {
                    *self = Pump::Done;
                    Item::End
                }
                Pump::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Some(chunked::Decoded::Data(data))) => Item::Data(data),
                    Ok(Some(chunked::Decoded::End(trailers))) => {
                        *self = Pump::Done;
                        trailers.map_or(Item::End, Item::Trailers)
                    }
                    Ok(None) => return (moved, Need::Bytes),
                    Err(e) => {
                        *self = Pump::Failed(None);
                        Item::Fault(BodyFault::Malformed(e))
                    }
                },
                Pump::Failed(fault) => Item::Fault(fault.take().expect("checked above")),
                Pump::Done => unreachable!("checked above"),
            };
            let _ = exchange.items.push(item);
            moved = true;
        }
    }

    /// The connection ended (or failed) before the body did: the request is told after the
    /// pieces already queued.
    pub fn broken(&mut self, buf: &mut BytesMut, exchange: &Exchange) {
        if !matches!(self, Pump::Done | Pump::Failed(_)) {
            *self = Pump::Failed(Some(BodyFault::Closed));
        }
        self.pump(buf, exchange);
    }

    /// Whether the pump has nothing more to do: the body is all read, or broken.
    pub fn is_over(&self) -> bool {
        matches!(self, Pump::Done | Pump::Failed(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(body: &mut Inbound) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        body.poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    fn data(p: Poll<Option<Result<Frame<Bytes>, BodyFault>>>) -> Vec<u8> {
        match p {
            Poll::Ready(Some(Ok(f))) => f.into_data().unwrap().to_vec(),
            other => panic!("not data: {:?}", other.map(|o| o.map(|r| r.is_ok()))),
        }
    }

    #[test]
    fn nothing_is_read_until_the_body_is_wanted_and_then_only_as_room_allows() {
        let ex = Exchange::new();
        let (mut pump, body) = Pump::new(Framing::Length(10), &ex);
        let mut body = body.unwrap();
        let mut buf = BytesMut::from(&b"0123456789NEXT"[..]);
        assert!(
            matches!(pump.pump(&mut buf, &ex), (false, Need::Nothing)),
            "not wanted yet"
        );
        assert_eq!(buf.len(), 14);
        assert!(poll(&mut body).is_pending());
        assert!(matches!(pump.pump(&mut buf, &ex), (true, Need::Nothing)));
        assert_eq!(data(poll(&mut body)), b"0123456789");
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(pump.is_done());
        assert_eq!(&buf[..], b"NEXT", "the next request is left in the buffer");
    }

    #[test]
    fn a_chunked_body_with_trailers_and_a_broken_one() {
        let ex = Exchange::new();
        let (mut pump, body) = Pump::new(Framing::Chunked, &ex);
        let mut body = body.unwrap();
        let _ = poll(&mut body);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n"[..]);
        pump.pump(&mut buf, &ex);
        assert_eq!(data(poll(&mut body)), b"abc");
        match poll(&mut body) {
            Poll::Ready(Some(Ok(f))) => assert_eq!(f.into_trailers().unwrap()["x-t"], "1"),
            _ => panic!("trailers"),
        }
        assert!(matches!(poll(&mut body), Poll::Ready(None)));

        let (mut pump, body) = Pump::new(Framing::Chunked, &ex);
        let mut body = body.unwrap();
        let _ = poll(&mut body);
        let mut buf = BytesMut::from(&b"3\r\nabcXX"[..]);
        pump.pump(&mut buf, &ex);
        assert_eq!(data(poll(&mut body)), b"abc");
        assert!(matches!(
            poll(&mut body),
            Poll::Ready(Some(Err(BodyFault::Malformed(_))))
        ));

        let (mut pump, body) = Pump::new(Framing::Length(5), &ex);
        let mut body = body.unwrap();
        let _ = poll(&mut body);
        let mut buf = BytesMut::from(&b"ab"[..]);
        assert!(matches!(pump.pump(&mut buf, &ex), (true, Need::Bytes)));
        pump.broken(&mut buf, &ex);
        assert_eq!(data(poll(&mut body)), b"ab");
        assert!(matches!(
            poll(&mut body),
            Poll::Ready(Some(Err(BodyFault::Closed)))
        ));
    }

    #[test]
    fn a_full_queue_holds_the_pump_back() {
        let ex = Exchange::new();
        let (mut pump, body) = Pump::new(Framing::Chunked, &ex);
        let mut body = body.unwrap();
        let _ = poll(&mut body);
        let mut wire = Vec::new();
        for _ in 0..10 {
            wire.extend_from_slice(b"1\r\nx\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let mut buf = BytesMut::from(&wire[..]);
        pump.pump(&mut buf, &ex);
        assert_eq!(ex.items.len(), QUEUED);
        let mut got = Vec::new();
        loop {
            match poll(&mut body) {
                Poll::Ready(Some(Ok(f))) => got.extend_from_slice(&f.into_data().unwrap()),
                Poll::Ready(None) => break,
                Poll::Pending => {
                    pump.pump(&mut buf, &ex);
                }
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"xxxxxxxxxx");
        drop(body);
        assert!(!ex.dropped(), "a body read to its end is not dropped early");
    }
}
