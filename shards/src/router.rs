//! Routers (SPEC §8): a router copies every record appended to its source into its dest.
//!
//! A router lives on its source's shard: its config, durable cursor and counter are logged in
//! that shard's WAL, and its forwarder task is woken by the source's appends (no polling).
//! Router changes are serialised through shard 0, which sees every router before it validates
//! cycles and fan-in. Exactly-once routers stamp each copy batch with the source seqs, and the
//! dest commits "router R has landed up to source seq S" in the same WAL frame as the copies,
//! so a retry after a crash drops what the dest already holds, wherever the dest lives.

use crate::mesh::*;
use crate::ops::Op;
use crate::shard::Shard;
use crate::topic::{NewRecord, ReadState};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// Copies stop after this many router hops, so an allowed cycle cannot loop forever.
pub const MAX_HOPS: u8 = 32;
/// Records per forwarded batch.
const BATCH: usize = 1000;
/// Pause before retrying a batch the dest refused (full, missing, not ready).
const RETRY: Duration = Duration::from_millis(100);

pub struct RouterState {
    pub config: RouterConfig,
    pub cursor: u64,
    pub forwarded: u64,
    /// Changes when the router is replaced or deleted, so a stale forwarder stops.
    pub generation: u64,
}

impl RouterState {
    fn info(&self, name: &str) -> RouterInfo {
        RouterInfo {
            name: name.to_string(),
            config: self.config.clone(),
            forwarded_total: self.forwarded,
            cursor: self.cursor,
        }
    }
}

/// Applies a router operation (live and at replay).
pub fn apply_router(routers: &mut BTreeMap<String, RouterState>, op: Op, generation: u64) {
    match op {
        Op::RouterPut {
            topic,
            config,
            cursor,
            forwarded,
        } => {
            routers.insert(
                topic,
                RouterState {
                    config,
                    cursor,
                    forwarded,
                    generation,
                },
            );
        }
        Op::RouterCursor {
            topic,
            cursor,
            forwarded,
        } => {
            if let Some(r) = routers.get_mut(&topic) {
                r.cursor = r.cursor.max(cursor);
                r.forwarded = r.forwarded.max(forwarded);
            }
        }
        Op::RouterDel { topic } => {
            routers.remove(&topic);
        }
        _ => {}
    }
}

/// The cycle a new edge `source -> dest` would close, as `[source, dest, ..., source]`.
pub fn find_cycle(edges: &[(String, String)], source: &str, dest: &str) -> Option<Vec<String>> {
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    for (s, d) in edges {
        out.entry(s.as_str()).or_default().push(d.as_str());
    }
    // Depth-first search from dest back to source, remembering the path.
    let mut stack: Vec<(&str, usize)> = vec![(dest, 0)];
    let mut path: Vec<&str> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    while let Some((node, depth)) = stack.pop() {
        path.truncate(depth);
        path.push(node);
        if node == source {
            let mut cycle = vec![source.to_string()];
            cycle.extend(path.iter().map(|s| s.to_string()));
            return Some(cycle);
        }
        if !seen.insert(node) {
            continue;
        }
        for next in out.get(node).into_iter().flatten() {
            stack.push((next, depth + 1));
        }
    }
    None
}

fn matches(filter: &RouterFilter, name: &str, r: &RouterState) -> bool {
    filter.name.as_deref().is_none_or(|n| n == name)
        && name.starts_with(filter.prefix.as_str())
        && filter
            .source
            .as_deref()
            .is_none_or(|s| s == r.config.source)
        && filter.dest.as_deref().is_none_or(|d| d == r.config.dest)
        && filter.after.as_deref().is_none_or(|a| name > a)
}

enum Step {
    Gone,
    Wait(Rc<crate::event::Event>),
    Advance(u64),
    Copy {
        records: Vec<NewRecord>,
        src_seqs: Vec<u64>,
        next: u64,
    },
}

impl Shard {
    pub(crate) fn list_routers(&self, f: &RouterFilter) -> Reply {
        let routers = self.routers.borrow();
        let out = routers
            .iter()
            .filter(|(n, r)| matches(f, n, r))
            .take(f.limit)
            .map(|(n, r)| r.info(n))
            .collect();
        Reply::Routers(out)
    }

    /// On shard 0: validate a router change against every router, then install it.
    pub(crate) async fn put_router(
        &self,
        name: String,
        config: RouterConfig,
    ) -> Result<Reply, ShardError> {
        let _permit = self
            .router_lock
            .acquire_permit(1)
            .await
            .map_err(|e| ShardError::Storage(e.to_string()))?;
        let remote = self.remote()?;
        let mut all = Vec::new();
        for s in 0..remote.shards() {
            let f = RouterFilter {
                limit: usize::MAX,
                ..Default::default()
            };
            match remote.call(s, Command::ListRouters(f)).await {
                Reply::Routers(v) => all.extend(v),
                Reply::Err(e) => return Err(e),
                _ => return Err(ShardError::Storage("unexpected reply".into())),
            }
        }
        if let Some(old) = all.iter().find(|r| r.name == name) {
            if old.config.source != config.source || old.config.dest != config.dest {
                return Err(ShardError::RouterIncompatible {
                    message: format!(
                        "router {name:?} copies {:?} to {:?}; delete it to change source or dest",
                        old.config.source, old.config.dest
                    ),
                });
            }
        }
        let max = self.opts.max_routers;
        if max > 0 && all.len() >= max && !all.iter().any(|r| r.name == name) {
            return Err(ShardError::ResourceCap {
                limit: "routers",
                max,
            });
        }
        if let Some(other) = all.iter().find(|r| {
            r.name != name && r.config.dest == config.dest && r.config.source != config.source
        }) {
            return Err(ShardError::RouterIncompatible {
                message: format!(
                    "topic {:?} already receives from {:?} through router {:?}",
                    config.dest, other.config.source, other.name
                ),
            });
        }
        if !config.allow_cycle {
            let edges: Vec<(String, String)> = all
                .iter()
                .filter(|r| r.name != name)
                .map(|r| (r.config.source.clone(), r.config.dest.clone()))
                .collect();
            if let Some(cycle) = find_cycle(&edges, &config.source, &config.dest) {
                return Err(ShardError::RouterCycle { cycle });
            }
        }
        let dest_shard = shard_for(&config.dest, remote.shards());
        if config.create_dest {
            let cmd = Command::PutTopic {
                topic: config.dest.clone(),
                patch: Default::default(),
            };
            if let Reply::Err(e) = remote.call(dest_shard, cmd).await {
                return Err(e);
            }
        } else {
            let cmd = Command::GetTopic {
                topic: config.dest.clone(),
                touch: false,
            };
            if let Reply::Err(e) = remote.call(dest_shard, cmd).await {
                return Err(match e {
                    ShardError::TopicNotFound => ShardError::OtherTopicNotFound {
                        topic: config.dest.clone(),
                    },
                    e => e,
                });
            }
        }
        let source_shard = shard_for(&config.source, remote.shards());
        Ok(remote
            .call(source_shard, Command::InstallRouter { name, config })
            .await)
    }

    /// On the source's shard: create or reconfigure the router and start its forwarder.
    pub(crate) async fn install_router(
        self: &Rc<Self>,
        name: String,
        config: RouterConfig,
    ) -> Result<Reply, ShardError> {
        self.check_writable()?;
        let (created, info, lsn) = {
            if let Some(r) = self.routers.borrow().get(&name) {
                if r.config == config {
                    return Ok(Reply::Router {
                        created: false,
                        info: r.info(&name),
                    });
                }
            }
            let head = self.ensure_topic(&config.source);
            let mut routers = self.routers.borrow_mut();
            let (created, cursor, forwarded) = match routers.get(&name) {
                Some(r) => (false, r.cursor, r.forwarded),
                None => (true, head, 0),
            };
            let op = Op::RouterPut {
                topic: name.clone(),
                config,
                cursor,
                forwarded,
            };
            let lsn = self.log(&op, true);
            let generation = self.next_generation();
            apply_router(&mut routers, op, generation);
            let info = routers
                .get(&name)
                .map(|r| r.info(&name))
                .ok_or_else(|| ShardError::Storage("router vanished".into()))?;
            (created, info, lsn)
        };
        self.spawn_forwarder(name);
        self.durable(lsn).await?;
        Ok(Reply::Router { created, info })
    }

    pub(crate) fn delete_router(&self, name: &str) -> Result<Reply, ShardError> {
        if !self.routers.borrow().contains_key(name) {
            return Ok(Reply::RouterDeleted { deleted: false });
        }
        self.check_writable()?;
        let op = Op::RouterDel {
            topic: name.to_string(),
        };
        self.log(&op, true);
        apply_router(&mut self.routers.borrow_mut(), op, 0);
        Ok(Reply::RouterDeleted { deleted: true })
    }

    pub(crate) fn remove_routers_for(&self, topic: &str) -> Result<Reply, ShardError> {
        let names: Vec<String> = self
            .routers
            .borrow()
            .iter()
            .filter(|(_, r)| r.config.source == topic || r.config.dest == topic)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &names {
            self.delete_router(n)?;
        }
        Ok(Reply::RoutersRemoved(names))
    }

    /// Starts the forwarder of every router (after recovery).
    pub(crate) fn start_forwarders(self: &Rc<Self>) {
        let names: Vec<String> = self.routers.borrow().keys().cloned().collect();
        for n in names {
            self.spawn_forwarder(n);
        }
    }

    fn spawn_forwarder(self: &Rc<Self>, name: String) {
        let Some(generation) = self.routers.borrow().get(&name).map(|r| r.generation) else {
            return;
        };
        let shard = self.clone();
        glommio::spawn_local(async move { shard.forward(name, generation).await }).detach();
    }

    async fn next_step(&self, name: &str, generation: u64, batch: usize) -> Step {
        let (source, cursor, created, changed) = {
            let routers = self.routers.borrow();
            let Some(r) = routers.get(name).filter(|r| r.generation == generation) else {
                return Step::Gone;
            };
            let topics = self.topics.borrow();
            let Some(t) = topics.get(&r.config.source) else {
                return Step::Gone;
            };
            (
                r.config.source.clone(),
                r.cursor,
                t.created_lsn,
                t.changed.clone(),
            )
        };
        let mut st = ReadState::new(cursor, batch, u64::MAX);
        if let Err(e) = self.read_records(&source, created, &mut st, &[]).await {
            log::warn!("router {name:?}: reading {source:?}: {e:?}");
            return Step::Wait(changed);
        }
        let read = st.finish();
        if read.next_from_seq <= cursor {
            return Step::Wait(changed);
        }
        let routers = self.routers.borrow();
        let Some(r) = routers.get(name).filter(|r| r.generation == generation) else {
            return Step::Gone;
        };
        if r.cursor != cursor {
            return Step::Advance(r.cursor);
        }
        let c = &r.config;
        let mut records = Vec::with_capacity(read.records.len());
        let mut src_seqs = Vec::with_capacity(read.records.len());
        for rec in read.records {
            let pass = c
                .filter
                .as_ref()
                .is_none_or(|m| m.matches(rec.tag.as_deref()));
            if !pass || rec.hops >= MAX_HOPS {
                continue;
            }
            src_seqs.push(rec.seq);
            records.push(NewRecord {
                node: if c.preserve_node { rec.node } else { None },
                tag: if c.preserve_tag { rec.tag } else { None },
                data: rec.data,
                meta: rec.meta,
                hops: rec.hops + 1,
            });
        }
        if records.is_empty() {
            Step::Advance(read.next_from_seq)
        } else {
            Step::Copy {
                records,
                src_seqs,
                next: read.next_from_seq,
            }
        }
    }

    fn advance(&self, name: &str, generation: u64, cursor: u64, copied: u64) {
        let op = {
            let mut routers = self.routers.borrow_mut();
            let Some(r) = routers.get_mut(name).filter(|r| r.generation == generation) else {
                return;
            };
            r.cursor = r.cursor.max(cursor);
            r.forwarded += copied;
            Op::RouterCursor {
                topic: name.to_string(),
                cursor: r.cursor,
                forwarded: r.forwarded,
            }
        };
        if self.check_writable().is_ok() {
            self.log(&op, false);
        }
    }

    async fn forward(self: Rc<Self>, name: String, generation: u64) {
        // Shrinks while the dest refuses batches for lack of room (a full `reject` dest may
        // have room for fewer records than a batch), grows back after successes.
        let mut batch = BATCH;
        loop {
            match self.next_step(&name, generation, batch).await {
                Step::Gone => return,
                Step::Wait(ev) => {
                    // Re-check now and then: a deleted router has nobody to wake it.
                    let l = ev.listen();
                    futures_lite::future::or(l, glommio::timer::sleep(Duration::from_secs(1)))
                        .await;
                }
                Step::Advance(next) => self.advance(&name, generation, next, 0),
                Step::Copy {
                    records,
                    src_seqs,
                    next,
                } => {
                    let Some((dest, create, exactly_once)) =
                        self.routers.borrow().get(&name).map(|r| {
                            (
                                r.config.dest.clone(),
                                r.config.create_dest,
                                r.config.exactly_once,
                            )
                        })
                    else {
                        return;
                    };
                    let Ok(remote) = self.remote() else {
                        glommio::timer::sleep(RETRY).await;
                        continue;
                    };
                    let target = shard_for(&dest, remote.shards());
                    let cmd = Command::Append(AppendCmd {
                        topic: dest,
                        records,
                        idempotency_key: None,
                        create: Some(create),
                        config: None,
                        // Copies wait for room rather than being shed.
                        disable_backpressure: true,
                        stream: None,
                        router_mark: exactly_once.then(|| RouterMark {
                            router: name.clone(),
                            src_seqs,
                        }),
                    });
                    match remote.call(target, cmd).await {
                        Reply::Appended(a) => {
                            let copied = if a.deduped {
                                0
                            } else {
                                a.last_seq + 1 - a.first_seq
                            };
                            self.advance(&name, generation, next, copied);
                            batch = (batch * 2).min(BATCH);
                        }
                        Reply::Err(ShardError::TopicFull { .. }) => {
                            if batch > 1 {
                                batch /= 2;
                            } else {
                                glommio::timer::sleep(RETRY).await;
                            }
                        }
                        Reply::Err(e) => {
                            log::debug!("router {name:?}: dest refused a batch: {e:?}");
                            glommio::timer::sleep(RETRY).await;
                        }
                        _ => glommio::timer::sleep(RETRY).await,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(s: &str, d: &str) -> (String, String) {
        (s.to_string(), d.to_string())
    }

    #[test]
    fn cycles() {
        let edges = vec![e("A", "B"), e("B", "C")];
        assert_eq!(
            find_cycle(&edges, "C", "A"),
            Some(vec!["C".into(), "A".into(), "B".into(), "C".into()])
        );
        assert_eq!(find_cycle(&edges, "A", "C"), None);
        assert_eq!(
            find_cycle(&[e("B", "A")], "A", "B"),
            Some(vec!["A".into(), "B".into(), "A".into()])
        );
        assert_eq!(find_cycle(&[], "A", "B"), None);
    }
}
