//! How a stream follows its topics: one subscription per (stream, topic) on a shared long-poll
//! of the topic's owner, one poll per position on this core, and the fan-out of its answer.
//!
//! Every stream following a topic from the same position (with the same read options) waits
//! on one long-poll. When it answers, the poll's task hands the batch to each subscriber:
//! - a single-topic stream that is live (caught up, nothing of its own in flight) gets the
//!   serialised frame written straight to its socket, the bytes shared by every such stream
//!   (its `id:`, the cursor map of one topic, is the same for all of them), and is moved on
//!   to the next position's poll without its task being woken;
//! - anything else (a first read, tombstones, a batch that leaves the topic behind its head,
//!   a peer reading slowly, multi-topic streams) is handed to the stream's task, which turns
//!   it into frames as before and subscribes again once they are written. A stream so holds
//!   at most one batch per topic, however slowly its peer reads.

use super::*;
use crate::http::DirectWriter;
use std::cell::RefCell;
use std::rc::Weak;
use std::task::{Poll, Waker};

/// How many direct writes the fan-out makes between checks whether it should yield.
const YIELD_EVERY: usize = 64;

/// A stream's doorbell: subscriptions that have something for the stream's task.
#[derive(Default)]
pub(super) struct Wake {
    ready: RefCell<Vec<usize>>,
    waker: RefCell<Option<Waker>>,
}

impl Wake {
    /// Queues subscription `idx` for the stream's task and wakes it.
    fn ring(&self, idx: usize) {
        self.ready.borrow_mut().push(idx);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Completes with the subscriptions rung since the last call (at once if any).
    pub(super) async fn wait(&self) -> Vec<usize> {
        std::future::poll_fn(|cx| {
            let ready = std::mem::take(&mut *self.ready.borrow_mut());
            if !ready.is_empty() {
                return Poll::Ready(ready);
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The direct path of a single-topic stream: what the fan-out needs to write to it, and
/// what it leaves for the stream's task to pick up.
pub(super) struct Direct {
    pub(super) writer: DirectWriter,
    /// `include_tags | include_meta << 1 | include_data << 2`.
    pub(super) flags: u8,
    pub(super) max_batch_bytes: usize,
    /// The stream sent `caught-up` and is following the head.
    pub(super) live: Cell<bool>,
    /// The stream's cursor for the topic (the `id:` of its last frame).
    pub(super) cursor: Cell<u64>,
    /// When the fan-out last wrote to the stream (taken by the stream's task).
    pub(super) last_send: Cell<Option<Instant>>,
    /// The fan-out moved the cursor since the stream's task last looked.
    pub(super) moved: Cell<bool>,
    /// The unwritten rest of a frame the socket took only part of: the stream's task
    /// writes it before anything else.
    pub(super) pending: RefCell<Option<(Rc<Vec<u8>>, usize)>>,
}

/// One topic of one stream.
pub(super) struct Sub {
    pub(super) idx: usize,
    pub(super) topic: String,
    limit: usize,
    nodes: Vec<String>,
    strong: bool,
    /// Where the next read starts.
    pub(super) pos: Cell<u64>,
    /// An answer for the stream's task to turn into frames (and whether it is the first).
    pub(super) handoff: RefCell<Option<(Rc<PollResult>, bool)>>,
    /// The poll it waits on, if any.
    poll: RefCell<Weak<SharedPoll>>,
    /// The stream ended.
    gone: Cell<bool>,
    wake: Rc<Wake>,
    pub(super) direct: Option<Direct>,
}

impl Sub {
    pub(super) fn new(
        idx: usize,
        topic: String,
        from: u64,
        spec: &WatchSpec,
        wake: Rc<Wake>,
        direct: Option<Direct>,
    ) -> Sub {
        Sub {
            idx,
            topic,
            limit: spec.limit as usize,
            nodes: spec.nodes.clone(),
            strong: spec.strong,
            pos: Cell::new(from),
            handoff: RefCell::new(None),
            poll: RefCell::new(Weak::new()),
            gone: Cell::new(false),
            wake,
            direct,
        }
    }

    fn key(&self) -> PollKey {
        PollKey {
            topic: self.topic.clone(),
            from_seq: self.pos.get(),
            limit: self.limit,
            nodes: self.nodes.clone(),
            strong: self.strong,
        }
    }

    fn hand_off(&self, result: Rc<PollResult>, first: bool) {
        if self.gone.get() {
            return;
        }
        *self.handoff.borrow_mut() = Some((result, first));
        self.wake.ring(self.idx);
    }

    /// The first read of the topic: answers at once, handed to the stream's task.
    pub(super) fn first_read(self: &Rc<Self>, node: &Rc<Node>) {
        let (sub, node) = (self.clone(), node.clone());
        glommio::spawn_local(async move {
            // Boxed so that the task keeps no room for a call future after it.
            let reply = Box::pin(node.call_topic(&sub.topic, sub.key().diff_cmd(0))).await;
            sub.hand_off(Rc::new(PollResult::from(reply)), true);
        })
        .detach();
    }

    /// Waits on the shared long-poll from [`pos`](Self::pos).
    pub(super) fn subscribe(self: &Rc<Self>, node: &Rc<Node>) {
        if self.gone.get() {
            return;
        }
        let (poll, new) = poll_for(self.key());
        poll.join(self);
        if let Some(key) = new {
            start(node, poll, key);
        }
    }

    /// The stream ended: leaves its poll, takes nothing more.
    pub(super) fn leave(self: &Rc<Self>) {
        self.gone.set(true);
        self.handoff.take();
        if let Some(poll) = self.poll.borrow().upgrade() {
            poll.subs.borrow_mut().retain(|s| !Rc::ptr_eq(s, self));
        }
    }
}

/// What one topic read is about: readers with equal keys get the same answer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct PollKey {
    topic: String,
    from_seq: u64,
    limit: usize,
    nodes: Vec<String>,
    strong: bool,
}

impl PollKey {
    fn diff_cmd(&self, wait_ms: u64) -> Command {
        Command::Diff(DiffCmd {
            topic: self.topic.clone(),
            from_seq: self.from_seq,
            limit: self.limit,
            nodes: self.nodes.clone(),
            wait_ms,
            durable_only: self.strong,
        })
    }
}

/// The answer to a read, shared by every subscriber that waited for it.
pub(super) enum PollResult {
    Diff(Rc<DiffReply>),
    Deleted,
    Failed(ShardError),
}

impl From<Reply> for PollResult {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Diff(d) => PollResult::Diff(Rc::new(d)),
            Reply::Err(ShardError::TopicNotFound) => PollResult::Deleted,
            Reply::Err(e) => PollResult::Failed(e),
            _ => PollResult::Failed(ShardError::Storage("unexpected reply".into())),
        }
    }
}

impl PollResult {
    /// A long-poll that timed out: nothing new at `from`.
    fn is_timeout(&self, from: u64) -> bool {
        matches!(self, PollResult::Diff(d)
            if d.records.is_empty() && d.tombstone.is_none() && d.next_from_seq == from)
    }
}

/// One long-poll in flight on this executor and the subscriptions waiting for its answer.
pub(super) struct SharedPoll {
    subs: RefCell<Vec<Rc<Sub>>>,
}

impl SharedPoll {
    fn join(self: &Rc<Self>, sub: &Rc<Sub>) {
        self.subs.borrow_mut().push(sub.clone());
        *sub.poll.borrow_mut() = Rc::downgrade(self);
    }
}

thread_local! {
    /// Long-polls in flight on this executor: the streams that follow a topic from the
    /// same position (and with the same options) share one read of the owning shard, so
    /// an append wakes one long-poll per position, not one per stream, and the shard holds
    /// one listener for all of them.
    static POLLS: RefCell<std::collections::HashMap<PollKey, Rc<SharedPoll>>> =
        RefCell::new(std::collections::HashMap::new());
}

/// The poll in flight for `key`, made if there is none; a new one comes with its key and
/// must be [`start`]ed once the caller has joined it (glommio may run a spawned task at
/// once, and a poll that answered before anyone joined would strand its late joiners).
fn poll_for(key: PollKey) -> (Rc<SharedPoll>, Option<PollKey>) {
    POLLS.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(poll) = p.get(&key) {
            return (poll.clone(), None);
        }
        let poll = Rc::new(SharedPoll {
            subs: RefCell::new(Vec::new()),
        });
        p.insert(key.clone(), poll.clone());
        (poll, Some(key))
    })
}

/// Runs a new poll in its own task, so a stream that goes away never strands the others.
fn start(node: &Rc<Node>, poll: Rc<SharedPoll>, key: PollKey) {
    let node = node.clone();
    glommio::spawn_local(async move {
        let reply = node.call_topic(&key.topic, key.diff_cmd(POLL_MS)).await;
        POLLS.with(|p| p.borrow_mut().remove(&key));
        let subs = poll.subs.take();
        fan_out(&node, key, Rc::new(PollResult::from(reply)), subs).await;
    })
    .detach();
}

/// Hands one answer to every subscription that waited for it (see the module's doc).
async fn fan_out(node: &Rc<Node>, key: PollKey, result: Rc<PollResult>, subs: Vec<Rc<Sub>>) {
    if result.is_timeout(key.from_seq) {
        // Nothing to say: everyone waits again at the same position.
        let (poll, new) = poll_for(key);
        for sub in subs.iter().filter(|s| !s.gone.get()) {
            poll.join(sub);
        }
        if let Some(key) = new {
            start(node, poll, key);
        }
        return;
    }
    let PollResult::Diff(d) = &*result else {
        for sub in subs {
            sub.hand_off(result.clone(), false);
        }
        return;
    };
    let caught_up = d.next_from_seq >= d.head_seq;
    let direct_ok = !d.records.is_empty() && d.tombstone.is_none() && caught_up;
    let mut batch = Batch {
        d,
        key: &key,
        size: d.records.iter().map(record_size).sum(),
        frames: Default::default(),
    };
    let mut next: Option<(Rc<SharedPoll>, Option<PollKey>)> = None;
    let mut now = None;
    let mut written = 0;
    for sub in subs {
        if sub.gone.get() {
            continue;
        }
        let frame = match &sub.direct {
            Some(direct) if direct_ok => batch.frame_for(direct),
            _ => None,
        };
        let (Some(direct), Some(frame)) = (&sub.direct, frame) else {
            sub.hand_off(result.clone(), false);
            continue;
        };
        let n = match direct.writer.try_write(&frame) {
            Ok(n) => n,
            Err(_) => {
                // The stream's task sees the connection closed and ends.
                continue;
            }
        };
        if n == 0 {
            // The socket is full (or the stream is writing): its task takes the batch.
            sub.hand_off(result.clone(), false);
            continue;
        }
        let to = batch.to();
        direct.cursor.set(to);
        direct
            .last_send
            .set(Some(*now.get_or_insert_with(Instant::now)));
        sub.pos.set(d.next_from_seq);
        if !direct.moved.replace(true) {
            // The stream's task saves moved cursors to the session within a while.
            sub.wake.ring(usize::MAX);
        }
        if n < frame.len() {
            *direct.pending.borrow_mut() = Some((frame, n));
            sub.wake.ring(sub.idx);
            continue;
        }
        let (poll, _) = next.get_or_insert_with(|| {
            let mut key = key.clone();
            key.from_seq = d.next_from_seq;
            poll_for(key)
        });
        poll.join(&sub);
        written += 1;
        if written % YIELD_EVERY == 0 {
            glommio::yield_if_needed().await;
        }
    }
    // The next read starts once this batch is out: what was appended meanwhile comes in one.
    if let Some((poll, Some(key))) = next {
        start(node, poll, key);
    }
}

/// How much a record counts towards `max_batch_bytes` (as [`Stream::on_read`] counts it).
pub(super) fn record_size(r: &shards::Record) -> usize {
    r.data.len() + r.meta.as_ref().map_or(0, |m| m.len()) + 64
}

/// One answer's frames for the direct path, serialised once per set of read options.
struct Batch<'a> {
    d: &'a DiffReply,
    key: &'a PollKey,
    size: usize,
    frames: [Option<Rc<Vec<u8>>>; 8],
}

impl Batch<'_> {
    /// The cursor after the batch.
    fn to(&self) -> u64 {
        let last = self.d.records.last().map_or(0, |r| r.seq);
        self.d.next_from_seq.max(last)
    }

    /// The one `record` frame of this batch for a live single-topic stream at the poll's
    /// position, or `None` when the stream must build its frames itself (its cursor is
    /// elsewhere, or the batch splits into several frames under its `max_batch_bytes`).
    fn frame_for(&mut self, direct: &Direct) -> Option<Rc<Vec<u8>>> {
        if !direct.live.get()
            || direct.cursor.get() != self.key.from_seq
            || direct.pending.borrow().is_some()
            || (self.d.records.len() > 1 && self.size > direct.max_batch_bytes)
        {
            return None;
        }
        let to = self.to();
        let slot = &mut self.frames[usize::from(direct.flags & 7)];
        if let Some(f) = slot {
            return Some(f.clone());
        }
        let mut cursors = BTreeMap::new();
        cursors.insert(self.key.topic.as_str(), to);
        let id = b64url(&serde_json::to_vec(&cursors).unwrap_or_default());
        let frame = Rc::new(record_frame(
            &self.key.topic,
            &self.d.records,
            direct.flags,
            self.key.from_seq,
            to,
            self.d.head_seq,
            &id,
        ));
        *slot = Some(frame.clone());
        Some(frame)
    }
}
