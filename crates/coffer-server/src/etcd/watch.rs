//! Watch streams: many watches per stream, served by one task per stream that owns every send,
//! so that responses are in revision order and a progress reply comes after every event at or
//! below its revision (the fix of etcd#15220).
//!
//! The task reads its inbox in the feed, which holds the batches that concern its watches: each
//! batch's events go to the watches whose range they match, one response per watch and
//! revision; `sent` is the revision the whole stream is synced to. A watch created with a start
//! revision at or below the feed's first replays its range from the store's history; a
//! compacted start is canceled with `compact_revision`, as in etcd. A stream whose inbox
//! overflowed catches every watch up from history.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Door;
use super::feed::{Batch, DoorEvent, Inbox, read_changes};
use crate::proto::etcd::etcdserverpb as pb;
use crate::proto::etcd::mvccpb;
use crate::server::status::EtcdError;
use coffer_core::storage::mvcc::Revision;
use coffer_core::store::StoreError;
use coffer_core::store::raw::{KeyRange, RawKv};

/// The most watches one stream may hold.
const MAX_WATCHES: usize = 100_000;
/// Responses queued for a stream's client before the stream task waits.
const OUT_QUEUE: usize = 64;
/// etcd's filter values.
const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;
/// etcd's message for a client-chosen watch id in use.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    /// Events at or after this revision are delivered.
    start: Revision,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    /// Whether an event was sent since the last progress notification.
    active: bool,
}

impl Watcher {
    fn wants(&self, e: &DoorEvent) -> bool {
        e.kv.mod_revision >= self.start
            && self.range.contains(&e.kv.key)
            && !(e.delete && self.no_delete)
            && (e.delete || !self.no_put)
    }
}

struct WatchStream {
    door: Door,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    inbox: Inbox,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Every event at or below this revision has been sent to every watch.
    sent: Revision,
}

/// The client went away.
struct Gone;

fn kv_pb(kv: &RawKv) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision as i64,
        mod_revision: kv.mod_revision as i64,
        version: kv.version as i64,
        value: kv.value.to_vec(),
        lease: kv.lease,
    }
}

impl WatchStream {
    async fn send(&self, r: pb::WatchResponse) -> Result<(), Gone> {
        self.out.send(Ok(r)).await.map_err(|_| Gone)
    }

    fn response(&self, revision: Revision, watch_id: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.door.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    /// Sends `events` (in revision order) to the watches that want them: one response per
    /// watch and revision. `only` limits it to one watch (a catch-up).
    async fn deliver(&mut self, events: &[DoorEvent], only: Option<i64>) -> Result<(), Gone> {
        let mut i = 0;
        while i < events.len() {
            let rev = events[i].kv.mod_revision;
            let mut j = i;
            while j < events.len() && events[j].kv.mod_revision == rev {
                j += 1;
            }
            let group = &events[i..j];
            i = j;
            let mut responses = Vec::new();
            for (id, w) in self.watchers.iter_mut() {
                if only.is_some_and(|o| o != *id) {
                    continue;
                }
                let evs: Vec<mvccpb::Event> = group
                    .iter()
                    .filter(|e| w.wants(e))
                    .map(|e| mvccpb::Event {
                        r#type: i32::from(e.delete),
                        kv: Some(kv_pb(&e.kv)),
                        prev_kv: if w.prev_kv {
                            e.prev.as_ref().map(kv_pb)
                        } else {
                            None
                        },
                    })
                    .collect();
                if !evs.is_empty() {
                    w.active = true;
                    responses.push((*id, evs));
                }
            }
            for (id, evs) in responses {
                let mut r = self.response(rev, id);
                r.events = evs;
                self.send(r).await?;
            }
        }
        Ok(())
    }

    /// Removes a watch, and its route in the feed.
    fn remove(&mut self, id: i64) -> bool {
        match self.watchers.remove(&id) {
            Some(w) => {
                self.inbox.unwatch(id, &w.range);
                true
            }
            None => false,
        }
    }

    /// Cancels every watch because the changes it needs were compacted.
    async fn cancel_all_compacted(&mut self, compacted: Revision) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for &id in &ids {
            self.remove(id);
        }
        for id in ids {
            // etcd's compaction cancel carries no revision in its header.
            let mut r = self.response(0, id);
            r.canceled = true;
            r.compact_revision = compacted as i64;
            self.send(r).await?;
        }
        Ok(())
    }

    /// Replays the changes after `after` up to `until` from history, to one watch or all.
    async fn replay(
        &mut self,
        mut after: Revision,
        until: Revision,
        only: Option<i64>,
    ) -> Result<(), Gone> {
        let store = self.door.store.clone();
        while after < until {
            let ranges: Vec<KeyRange> = self
                .watchers
                .iter()
                .filter(|(id, _)| only.is_none_or(|o| o == **id))
                .map(|(_, w)| w.range.clone())
                .collect();
            if ranges.is_empty() {
                return Ok(());
            }
            match read_changes(&store, after, until, |k| {
                ranges.iter().any(|r| r.contains(k))
            })
            .await
            {
                Ok((events, reached)) => {
                    self.deliver(&events, only).await?;
                    after = reached;
                }
                Err(StoreError::TooOld { compacted, .. }) => {
                    match only {
                        Some(id) => {
                            self.remove(id);
                            let mut r = self.response(0, id);
                            r.canceled = true;
                            r.compact_revision = compacted as i64;
                            self.send(r).await?;
                        }
                        None => self.cancel_all_compacted(compacted).await?,
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd door: watch replay failed");
                    let _ = self
                        .out
                        .send(Err(crate::server::status::etcd_store_error(&e)))
                        .await;
                    return Err(Gone);
                }
            }
        }
        Ok(())
    }

    async fn on_batch(&mut self, batch: &Batch) -> Result<(), Gone> {
        if batch.through <= self.sent {
            return Ok(());
        }
        if let Some(c) = batch.compacted {
            self.cancel_all_compacted(c).await?;
        } else {
            let fresh: Vec<&DoorEvent> = batch
                .events
                .iter()
                .filter(|e| e.kv.mod_revision > self.sent)
                .collect();
            if !fresh.is_empty() {
                // Deliver borrows the events as a slice: the usual case is the whole batch.
                let start = batch.events.len() - fresh.len();
                self.deliver(&batch.events[start..], None).await?;
            }
        }
        self.sent = batch.through;
        Ok(())
    }

    /// Handles a batch, then a lag of the inbox if there was one.
    async fn on_routed(&mut self, batch: &Batch) -> Result<(), Gone> {
        self.on_batch(batch).await?;
        self.catch_up().await
    }

    /// Handles a lag of the inbox, if there was one: everything after `sent` is read from
    /// history.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        if !self.inbox.lagged() {
            return Ok(());
        }
        let until = self.inbox.resync();
        if until > self.sent {
            self.replay(self.sent, until, None).await?;
            self.sent = until;
        }
        Ok(())
    }

    /// Brings the stream up to the feed: every batch routed so far is delivered, and `sent`
    /// is at least the feed's revision then.
    async fn sync(&mut self) -> Result<(), Gone> {
        let through = self.inbox.through();
        while let Some(b) = self.inbox.try_recv() {
            self.on_batch(&b).await?;
        }
        self.catch_up().await?;
        self.sent = self.sent.max(through);
        Ok(())
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        let now = self.sent.max(*self.door.store.published().borrow());
        if c.start_revision < 0 {
            let mut r = self.response(now, -1);
            r.created = true;
            r.canceled = true;
            r.cancel_reason = EtcdError::Compacted.status().message().to_owned();
            return self.send(r).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                let mut r = self.response(now, -1);
                r.created = true;
                r.canceled = true;
                r.cancel_reason = DUPLICATE_ID.to_owned();
                return self.send(r).await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        if self.watchers.len() >= MAX_WATCHES {
            let mut r = self.response(now, -1);
            r.created = true;
            r.canceled = true;
            r.cancel_reason =
                format!("etcdserver: a watch stream holds at most {MAX_WATCHES} watches");
            return self.send(r).await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        // Routed here from the feed's revision on, which may be behind the store's: a watch
        // from "now" starts after the store's, and what is older comes from history.
        let range = KeyRange::from_etcd(&c.key, &c.range_end);
        let routed_after = self.inbox.watch(id, &range);
        let now = self
            .sent
            .max(routed_after)
            .max(*self.door.store.published().borrow());
        let start = match c.start_revision {
            0 => now + 1,
            s => s as u64,
        };
        self.watchers.insert(
            id,
            Watcher {
                range,
                start,
                prev_kv: c.prev_kv,
                no_put: c.filters.contains(&FILTER_NOPUT),
                no_delete: c.filters.contains(&FILTER_NODELETE),
                progress_notify: c.progress_notify,
                active: false,
            },
        );
        let mut created = self.response(now, id);
        created.created = true;
        self.send(created).await?;
        let compacted = self.door.store.compact_revision();
        if start < compacted {
            self.remove(id);
            let mut r = self.response(0, id);
            r.canceled = true;
            r.compact_revision = compacted as i64;
            return self.send(r).await;
        }
        if start <= now {
            self.replay(start - 1, now, Some(id)).await?;
            // The inbox may hold the same revisions for another watch of this stream.
            if let Some(w) = self.watchers.get_mut(&id) {
                w.start = now + 1;
            }
        }
        Ok(())
    }

    async fn cancel(&mut self, id: i64) -> Result<(), Gone> {
        if self.remove(id) {
            let mut r = self.response(self.sent, id);
            r.canceled = true;
            self.send(r).await?;
        }
        Ok(())
    }

    /// Answers a progress request: first everything the feed has routed here is delivered,
    /// then the revision every watch is synced to.
    async fn progress(&mut self) -> Result<(), Gone> {
        self.sync().await?;
        let r = self.response(self.sent, -1);
        self.send(r).await
    }

    /// Tells each idle watch that asked for progress notifications the current revision.
    async fn notify_idle(&mut self) -> Result<(), Gone> {
        self.sync().await?;
        let mut idle = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && !w.active {
                idle.push(*id);
            }
            w.active = false;
        }
        for id in idle {
            let r = self.response(self.sent, id);
            self.send(r).await?;
        }
        Ok(())
    }

    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let shutdown = self.door.shutdown.clone();
        let period = self.door.options.progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let _ = self.out.send(Err(crate::server::status::shutting_down())).await;
                    return;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => self.request(req).await,
                    _ => return,
                },
                batch = self.inbox.recv() => match batch {
                    Some(b) => self.on_routed(&b).await,
                    None => return,
                },
                _ = ticker.tick() => self.notify_idle().await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn request(&mut self, req: pb::WatchRequest) -> Result<(), Gone> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => self.progress().await,
            None => Ok(()),
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.inbox
            .close(self.watchers.iter().map(|(id, w)| (*id, &w.range)));
    }
}

#[tonic::async_trait]
impl pb::watch_server::Watch for Door {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (call, inbound) = self.admit(request, "etcd.Watch")?;
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        let inbox = self.feed.open();
        let stream = WatchStream {
            door: self.clone(),
            out,
            sent: inbox.start,
            inbox,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(inbound));
        self.finish(&call, Ok(ReceiverStream::new(rx)), |_| 0)
    }
}
