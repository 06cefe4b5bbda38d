//! The live feed: one task reads new events from the store and fans them out
//! to every event-stream client over a broadcast channel.
//!
//! The task reads `Store::events_since(last id seen)` every `every` (100 ms
//! by default), at once when [`EventFeed::wake`] is called (the server wakes
//! it when a run it works on reports progress), and at once on the store's
//! notices (new runs, released steps, failures, run state changes; on
//! PostgreSQL from every process). Completions in other processes that
//! release nothing push no notice, so they reach the feed at its next tick.
//! The store's reads never pass over an event that commits late, so paging
//! with the last id seen loses nothing. Clients that fall behind the
//! channel read what they missed from the store (see [`ClientStream`]), so a
//! slow client never loses an event and never slows the others.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use flowstone_core::store::EventRecord;
use flowstone_core::{EventId, RunId, Store};
use tokio::sync::{Notify, broadcast, watch};

/// How many events one store read takes.
const PAGE: u32 = 1000;

/// A handle on the feed; cheap to clone.
#[derive(Clone)]
pub struct EventFeed {
    tx: broadcast::Sender<Arc<EventRecord>>,
    wake: Arc<Notify>,
    last: watch::Receiver<Option<EventId>>,
}

impl EventFeed {
    /// Reads where the store stands, then starts the feed task, which stops
    /// when `stop` turns true (or its sender is dropped). The feed begins
    /// after the newest event in the store: history is read by clients that
    /// ask for it. Reading the store's position before returning means a
    /// client that asks for "from now on" once the server is up cannot miss
    /// an event appended before the task first looked.
    pub async fn start(
        store: Arc<dyn Store>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> (EventFeed, tokio::task::JoinHandle<()>) {
        let (tx, _) = broadcast::channel(4096);
        let wake = Arc::new(Notify::new());
        // The store's notices (LISTEN/NOTIFY on PostgreSQL, this process's
        // commits on SQLite) wake the feed at once; the tick covers what
        // they miss. Subscribed before the position is read.
        let mut notices = store.notices();
        let mut after = match store.events_position().await {
            Ok(id) => id,
            Err(err) => {
                tracing::error!(target: "flowstone::server", error = %err,
                                "event feed cannot read the store");
                None
            }
        };
        let (last_tx, last) = watch::channel(after);
        let feed = EventFeed {
            tx: tx.clone(),
            wake: wake.clone(),
            last,
        };
        let task = tokio::spawn(async move {
            loop {
                // Read: everything new, a page at a time.
                loop {
                    match store.events_since(after, PAGE).await {
                        Ok(page) => {
                            let full = page.len() == PAGE as usize;
                            for event in page {
                                after = Some(event.id);
                                // No receiver is not an error: nobody listens yet.
                                let _ = tx.send(Arc::new(event));
                            }
                            last_tx.send_replace(after);
                            if !full {
                                break;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(target: "flowstone::server", error = %err,
                                           "event feed read failed; trying again");
                            break;
                        }
                    }
                }

                // Wait: the next tick, a wake-up, or the end.
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = wake.notified() => {}
                    _ = notice(&mut notices) => {}
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            return;
                        }
                    }
                }
            }
        });
        (feed, task)
    }

    /// Reads the store now instead of at the next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.tx.subscribe()
    }

    /// The id of the newest event the feed has sent.
    pub fn last_sent(&self) -> Option<EventId> {
        *self.last.borrow()
    }
}

/// The next notice from the store; never, once there are none.
async fn notice(notices: &mut Option<broadcast::Receiver<flowstone_core::store::Notice>>) {
    let Some(receiver) = notices else {
        return std::future::pending().await;
    };
    if let Err(broadcast::error::RecvError::Closed) = receiver.recv().await {
        *notices = None;
    }
}

/// Which events a client wants.
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    pub run: Option<RunId>,
}

impl Filter {
    fn accepts(&self, event: &EventRecord) -> bool {
        self.run.is_none_or(|run| event.run_id == run)
    }
}

/// One client's events: history from the store first (after the id it
/// gave), then the live feed, in id order and without repeats. When the
/// client falls behind the channel, what it missed is read from the store.
pub struct ClientStream {
    store: Arc<dyn Store>,
    rx: broadcast::Receiver<Arc<EventRecord>>,
    backlog: VecDeque<Arc<EventRecord>>,
    /// The id of the last event sent to this client.
    last: Option<EventId>,
    /// The last store read filled a page: read again before the channel.
    behind: bool,
    filter: Filter,
}

impl ClientStream {
    /// Subscribes first, then reads history, so nothing falls in between.
    pub async fn open(
        feed: &EventFeed,
        store: Arc<dyn Store>,
        after: Option<EventId>,
        filter: Filter,
    ) -> Result<ClientStream, flowstone_core::StoreError> {
        let rx = feed.subscribe();
        let mut stream = ClientStream {
            store,
            rx,
            backlog: VecDeque::new(),
            last: after,
            behind: false,
            filter,
        };
        match after {
            Some(_) => stream.catch_up().await?,
            // Only what happens from now on: skip what the feed already sent.
            None => stream.last = feed.last_sent(),
        }
        Ok(stream)
    }

    /// Reads what this client missed from the store.
    async fn catch_up(&mut self) -> Result<(), flowstone_core::StoreError> {
        let page = match self.filter.run {
            Some(run) => self.store.events(run, self.last, PAGE).await?,
            None => self.store.events_since(self.last, PAGE).await?,
        };
        self.behind = page.len() == PAGE as usize;
        self.backlog.extend(page.into_iter().map(Arc::new));
        Ok(())
    }

    /// The next event; `None` when the feed has stopped.
    pub async fn next(&mut self) -> Option<Arc<EventRecord>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                if self.last.is_some_and(|last| event.id <= last) || !self.filter.accepts(&event) {
                    continue;
                }
                self.last = Some(event.id);
                return Some(event);
            }
            if self.behind {
                if let Err(err) = self.catch_up().await {
                    tracing::warn!(target: "flowstone::server", error = %err,
                                   "event stream catch-up failed");
                    return None;
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(event) => self.backlog.push_back(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(target: "flowstone::server", missed,
                                    "event stream client fell behind; reading the store");
                    if let Err(err) = self.catch_up().await {
                        tracing::warn!(target: "flowstone::server", error = %err,
                                       "event stream catch-up failed");
                        return None;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
