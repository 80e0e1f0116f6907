//! A stream's per-topic reader: long-polls the topic's owner (sharing one poll among the
//! readers at the same position on this core) and hands batches to the stream.

use super::*;

/// Follows one topic of a stream: long-polls its owner and hands batches to the stream.
pub(super) struct Reader {
    pub(super) node: Rc<Node>,
    pub(super) idx: usize,
    pub(super) topic: String,
    pub(super) cursor: u64,
    pub(super) limit: usize,
    pub(super) nodes: Vec<String>,
    pub(super) strong: bool,
}

impl Reader {
    pub(super) async fn run(
        mut self,
        tx: Rc<local_channel::LocalSender<(usize, Event)>>,
        stop: Rc<Cell<bool>>,
    ) {
        let mut first = true;
        while !stop.get() {
            let key = PollKey {
                topic: self.topic.clone(),
                from_seq: self.cursor,
                limit: self.limit,
                nodes: self.nodes.clone(),
                strong: self.strong,
            };
            let result = if first {
                // The first read answers at once; boxed so that the parked reader's task
                // does not keep room for a call future.
                Rc::new(PollResult::from(
                    Box::pin(self.node.call_topic(&self.topic, key.diff_cmd(0))).await,
                ))
            } else {
                shared_poll(&self.node, key).await
            };
            let (ev, done) = match &*result {
                PollResult::Diff(d) => {
                    if !first
                        && d.records.is_empty()
                        && d.tombstone.is_none()
                        && d.next_from_seq == self.cursor
                    {
                        // A long-poll that timed out: nothing to say.
                        continue;
                    }
                    self.cursor = d.next_from_seq;
                    let diff = d.clone();
                    (Event::Read { diff, first }, false)
                }
                PollResult::Deleted => (Event::Deleted, true),
                PollResult::Failed(e) => (Event::Failed(e.clone()), true),
            };
            first = false;
            if stop.get() || tx.send((self.idx, ev)).await.is_err() || done {
                return;
            }
        }
    }
}

/// What one topic read is about: readers with equal keys get the same answer.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PollKey {
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

/// The answer to a read, shared by every reader that waited for it.
enum PollResult {
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

/// One long-poll in flight on this executor and the readers waiting for its answer.
#[derive(Default)]
struct SharedPoll {
    result: std::cell::RefCell<Option<Rc<PollResult>>>,
    waiters: std::cell::RefCell<Vec<std::task::Waker>>,
}

thread_local! {
    /// Long-polls in flight on this executor: the readers of all streams that follow a
    /// topic from the same position (and with the same options) share one read of the
    /// owning shard, so an append wakes one long-poll per position, not one per stream,
    /// and the shard holds one listener for all of them.
    static POLLS: std::cell::RefCell<std::collections::HashMap<PollKey, Rc<SharedPoll>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Long-polls the topic's owner from `key.from_seq`, joining a poll in flight for the same
/// key if there is one. The poll runs in its own task, so a reader that goes away (its
/// stream closed) never strands the others.
async fn shared_poll(node: &Rc<Node>, key: PollKey) -> Rc<PollResult> {
    let (poll, new) = POLLS.with(|p| {
        let mut p = p.borrow_mut();
        if let Some(poll) = p.get(&key) {
            return (poll.clone(), false);
        }
        let poll = Rc::new(SharedPoll::default());
        p.insert(key.clone(), poll.clone());
        (poll, true)
    });
    if new {
        // Spawned outside the map's borrow: the task may remove its key at any point.
        let (node, poll) = (node.clone(), poll.clone());
        glommio::spawn_local(async move {
            let reply = node.call_topic(&key.topic, key.diff_cmd(POLL_MS)).await;
            POLLS.with(|p| p.borrow_mut().remove(&key));
            *poll.result.borrow_mut() = Some(Rc::new(PollResult::from(reply)));
            for w in poll.waiters.take() {
                w.wake();
            }
        })
        .detach();
    }
    std::future::poll_fn(|cx| {
        if let Some(r) = &*poll.result.borrow() {
            return std::task::Poll::Ready(r.clone());
        }
        let mut waiters = poll.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    })
    .await
}
