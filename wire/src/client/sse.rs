//! The client side of `GET /v1/events/stream`: a total, bounded Server-Sent Events parser (WHATWG
//! `text/event-stream`: `\n`, `\r\n` or `\r` line ends, `field: value`, comments, multi-line `data`) that
//! yields typed [`EventBody`]s and remembers the last event id, so a caller resumes after a broken
//! connection with `events_stream(stream.last_event_id())` and sees no gap and no duplicate.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::ClientError;
use crate::api::EventBody;

/// Longest SSE line or event accepted. An event is one ledger event in JSON: a few KiB at most.
const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// A live stream of the log's events, in seq order.
pub struct EventStream {
    url: String,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: Parser,
    ready: VecDeque<Result<EventBody, ClientError>>,
    last_event_id: Option<u64>,
    done: bool,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream").field("url", &self.url).field("last_event_id", &self.last_event_id).finish()
    }
}

impl EventStream {
    pub(super) fn new(url: String, resp: reqwest::Response, last_event_id: Option<u64>) -> EventStream {
        EventStream {
            url,
            body: Box::pin(resp.bytes_stream()),
            parser: Parser::default(),
            ready: VecDeque::new(),
            last_event_id,
            done: false,
        }
    }

    /// The seq of the last event yielded (or the resume point the stream was opened with).
    pub fn last_event_id(&self) -> Option<u64> {
        self.last_event_id
    }

    fn decode(&mut self, raw: RawEvent) -> Option<Result<EventBody, ClientError>> {
        let bad = |reason: String| ClientError::Decode { url: self.url.clone(), reason };
        // An event without data is a no-op by the SSE rules (and our server never sends one).
        if raw.data.is_empty() {
            return None;
        }
        let id = match raw.id.as_deref().map(str::parse::<u64>) {
            Some(Ok(id)) => id,
            Some(Err(_)) => return Some(Err(bad(format!("event id {:?} is not a seq", raw.id)))),
            None => return Some(Err(bad("event without an id".into()))),
        };
        let body: EventBody = match serde_json::from_str(&raw.data) {
            Ok(b) => b,
            Err(e) => return Some(Err(bad(format!("event {id}: {e}")))),
        };
        if body.seq != id {
            return Some(Err(bad(format!("event id {id} carries seq {}", body.seq))));
        }
        if let Some(last) = self.last_event_id {
            if id != last + 1 {
                return Some(Err(bad(format!("event {id} after {last}: the stream skipped or repeated events"))));
            }
        }
        self.last_event_id = Some(id);
        Some(Ok(body))
    }
}

impl Stream for EventStream {
    type Item = Result<EventBody, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                if item.is_err() {
                    // After a protocol error the position is unknown; the caller resumes from last_event_id.
                    self.done = true;
                    self.ready.clear();
                }
                return Poll::Ready(Some(item));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(source))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(ClientError::Transport { url: self.url.clone(), source })));
                }
                Poll::Ready(Some(Ok(chunk))) => match self.parser.feed(&chunk) {
                    Ok(events) => {
                        for raw in events {
                            if let Some(item) = self.decode(raw) {
                                let failed = item.is_err();
                                self.ready.push_back(item);
                                if failed {
                                    break;
                                }
                            }
                        }
                    }
                    Err(reason) => {
                        let err = ClientError::Decode { url: self.url.clone(), reason };
                        self.ready.push_back(Err(err));
                    }
                },
            }
        }
    }
}

/// One dispatched SSE event.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub(crate) id: Option<String>,
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

/// Incremental `text/event-stream` parser.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` starting this one belongs to that line end.
    after_cr: bool,
    current: RawEvent,
    /// Bytes in `current` so far (bounded by [`MAX_EVENT_BYTES`]).
    current_len: usize,
    /// Whether any field was seen since the last dispatch.
    has_fields: bool,
    /// Whether a `data` line was seen since the last dispatch (later ones are joined with `\n`).
    has_data: bool,
}

impl Parser {
    /// Feeds bytes; returns the events completed by them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<Vec<RawEvent>, String> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line(&line, &mut out)?;
                }
                _ => {
                    if self.line.len() >= MAX_EVENT_BYTES {
                        return Err(format!("an SSE line exceeds {MAX_EVENT_BYTES} bytes"));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<RawEvent>) -> Result<(), String> {
        if line.is_empty() {
            if self.has_fields {
                out.push(std::mem::take(&mut self.current));
                self.current_len = 0;
                self.has_fields = false;
                self.has_data = false;
            }
            return Ok(());
        }
        if line.first() == Some(&b':') {
            return Ok(()); // comment (keep-alive)
        }
        let line = std::str::from_utf8(line).map_err(|_| "an SSE line is not UTF-8".to_owned())?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        self.current_len = self.current_len.saturating_add(value.len());
        if self.current_len > MAX_EVENT_BYTES {
            return Err(format!("an SSE event exceeds {MAX_EVENT_BYTES} bytes"));
        }
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "id" => self.current.id = Some(value.to_owned()),
            "event" => self.current.event = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields are ignored, as the SSE rules say
        }
        self.has_fields = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Result<Vec<RawEvent>, String> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.feed(c)?);
        }
        Ok(out)
    }

    #[test]
    fn events_split_anywhere_parse_the_same() -> Result<(), String> {
        let text =
            b": keep-alive\n\nid: 7\nevent: telemetry_recorded\ndata: {\"a\":1}\n\nid:8\r\ndata: x\r\ndata: y\r\n\r\n";
        let whole = parse_all(&[text])?;
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[0].id.as_deref(), Some("7"));
        assert_eq!(whole[0].event.as_deref(), Some("telemetry_recorded"));
        assert_eq!(whole[0].data, "{\"a\":1}");
        assert_eq!(whole[1].data, "x\ny");
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(parse_all(&[a, b])?, whole, "split at {split}");
        }
        Ok(())
    }

    #[test]
    fn bare_cr_line_ends_and_bounds() {
        assert_eq!(parse_all(&[b"id: 1\rdata: z\r\r"]).map(|e| e.len()), Ok(1));
        let long = vec![b'a'; MAX_EVENT_BYTES + 1];
        assert!(parse_all(&[&long]).is_err());
        assert!(parse_all(&[b"data: \xff\n\n"]).is_err());
    }
}
