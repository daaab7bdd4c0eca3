//! `GET /v1/events/stream`: the log as a live Server-Sent Events stream, `id: <seq>` on every event, that a
//! client resumes with `Last-Event-ID` and never sees a gap or a duplicate.
//!
//! Per client, one producer task: it subscribes to the ledger's live tail **first**, then reads the store
//! from the resume point up to the head, then follows the tail. Every event is sent only if its seq is the
//! next one expected: an older one (already read from the store) is skipped; a newer one means events were
//! missed (or the subscriber `Lagged`), and the producer re-reads the missing range from the store. The
//! producer and the socket are joined by a bounded channel, so a slow client slows its producer (which then
//! catches up from the store) and never grows memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::Stream;
use hwledger_engine::Ledger;
use tokio::sync::{broadcast, mpsc, watch};
use warp::Reply;

use super::App;
use super::metrics::SseClientGuard;
use crate::api::EventBody;

/// Events read from the store per page while catching up.
const PAGE: u64 = 256;

/// Comment lines keep idle connections (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Item = Result<warp::sse::Event, Infallible>;

/// The socket side of the per-client channel.
struct ChannelStream(mpsc::Receiver<Item>);

impl Stream for ChannelStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Item>> {
        self.0.poll_recv(cx)
    }
}

/// The SSE response for a client that wants every event from seq `from` on.
pub(crate) fn response(app: &App, from: u64) -> warp::reply::Response {
    let (tx, rx) = mpsc::channel(app.sse_buffer.max(1));
    // Subscribe before reading anything from the store, so nothing committed in between is missed.
    let tail = app.ledger.subscribe();
    let producer = Producer {
        ledger: app.ledger.clone(),
        tx,
        shutdown: app.shutdown.clone(),
        next: from.max(1),
        _guard: app.metrics.sse_client(),
    };
    tokio::spawn(producer.run(tail));
    warp::sse::reply(warp::sse::keep_alive().interval(KEEP_ALIVE).stream(ChannelStream(rx))).into_response()
}

struct Producer {
    ledger: Arc<Ledger>,
    tx: mpsc::Sender<Item>,
    shutdown: watch::Receiver<bool>,
    /// The seq the client should receive next.
    next: u64,
    _guard: SseClientGuard,
}

/// Why the producer stops.
enum Stop {
    /// The client went away, or the server is shutting down.
    Done,
}

impl Producer {
    async fn run(mut self, mut tail: broadcast::Receiver<Arc<Vec<hwledger_engine::ledger::CommittedEvent>>>) {
        let _ = self.follow(&mut tail).await;
    }

    async fn follow(
        &mut self,
        tail: &mut broadcast::Receiver<Arc<Vec<hwledger_engine::ledger::CommittedEvent>>>,
    ) -> Result<(), Stop> {
        loop {
            let head = self.ledger.head().seq;
            self.catch_up(head).await?;
            loop {
                let received = tokio::select! {
                    _ = self.shutdown.wait_for(|s| *s) => return Err(Stop::Done),
                    () = self.tx.closed() => return Err(Stop::Done),
                    r = tail.recv() => r,
                };
                match received {
                    Ok(batch) => {
                        for event in batch.iter() {
                            if event.seq < self.next {
                                continue;
                            }
                            if event.seq > self.next {
                                self.catch_up(event.seq - 1).await?;
                            }
                            if event.seq == self.next {
                                self.send(EventBody::from(event)).await?;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            next = self.next,
                            "SSE client lagged the live tail; re-reading the store"
                        );
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Done),
                }
            }
        }
    }

    /// Sends every event from `next` through `until` from the store, page by page.
    async fn catch_up(&mut self, until: u64) -> Result<(), Stop> {
        while self.next <= until {
            let from = self.next;
            let to = until.min(from.saturating_add(PAGE - 1));
            let ledger = self.ledger.clone();
            let page = match tokio::task::spawn_blocking(move || ledger.read(from, to)).await {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    tracing::error!(from, to, error = %e, "SSE: reading events from the store failed; ending the stream");
                    return Err(Stop::Done);
                }
                Err(e) => {
                    tracing::error!(error = %e, "SSE: store reader task failed");
                    return Err(Stop::Done);
                }
            };
            if page.is_empty() {
                // The head moved backwards (a failed commit was rolled back); nothing more to read now.
                return Ok(());
            }
            for event in &page {
                if event.seq == self.next {
                    self.send(EventBody::from(event)).await?;
                }
            }
        }
        Ok(())
    }

    async fn send(&mut self, body: EventBody) -> Result<(), Stop> {
        let seq = body.seq;
        let event = warp::sse::Event::default().id(seq.to_string()).event(body.event_type.clone());
        let event = match event.json_data(&body) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(seq, error = %e, "SSE: encoding an event failed; ending the stream");
                return Err(Stop::Done);
            }
        };
        tokio::select! {
            _ = self.shutdown.wait_for(|s| *s) => Err(Stop::Done),
            sent = self.tx.send(Ok(event)) => match sent {
                Ok(()) => {
                    self.next = seq + 1;
                    Ok(())
                }
                Err(_) => Err(Stop::Done),
            },
        }
    }
}
