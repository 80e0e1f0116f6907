//! Watch sessions (SPEC §6): the server-side cursors of an SSE watch.
//!
//! A session lives on the shard `hash(wid) % shards`, whichever core its stream is served
//! from. Its spec and cursors are logged in that shard's WAL, so sessions survive restarts;
//! cursor progress is logged as the stream advances, and a session with no open stream is
//! reclaimed after its TTL.

use crate::codec::{Dec, Enc};
use crate::mesh::{Reply, ShardError};
use crate::ops::Op;
use crate::shard::{now_ms, Shard};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

pub const SESSION_TTL_MS: u64 = 300_000;

/// What a watch follows and how.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchSpec {
    /// Topic name and cursor (last seq delivered), in name order.
    pub cursors: Vec<(String, u64)>,
    pub nodes: Vec<String>,
    pub limit: u32,
    pub max_batch_bytes: u64,
    pub heartbeat_ms: u64,
    pub include_meta: bool,
    pub include_tags: bool,
    pub include_data: bool,
    pub strong: bool,
    /// SHA-256 of the API key that created the session: only that key may open it.
    pub owner: Option<[u8; 32]>,
}

impl WatchSpec {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        e.u32(self.cursors.len() as u32);
        for (t, c) in &self.cursors {
            e.bytes(t.as_bytes()).u64(*c);
        }
        e.u32(self.nodes.len() as u32);
        for n in &self.nodes {
            e.bytes(n.as_bytes());
        }
        let flags = self.include_meta as u8
            | (self.include_tags as u8) << 1
            | (self.include_data as u8) << 2
            | (self.strong as u8) << 3;
        e.u32(self.limit)
            .u64(self.max_batch_bytes)
            .u64(self.heartbeat_ms)
            .u8(flags);
        // Appended last; frames written before sessions had owners end before it.
        if let Some(o) = &self.owner {
            e.u8(1);
            e.0.extend_from_slice(o);
        }
    }

    pub fn decode(d: &mut Dec<'_>) -> Option<Self> {
        let n = d.u32()? as usize;
        let mut cursors = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            cursors.push((d.str()?.to_owned(), d.u64()?));
        }
        let n = d.u32()? as usize;
        let mut nodes = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            nodes.push(d.str()?.to_owned());
        }
        let limit = d.u32()?;
        let max_batch_bytes = d.u64()?;
        let heartbeat_ms = d.u64()?;
        let flags = d.u8()?;
        let owner = if d.is_empty() {
            None
        } else {
            match d.u8()? {
                1 => {
                    let mut o = [0u8; 32];
                    for b in o.iter_mut() {
                        *b = d.u8()?;
                    }
                    Some(o)
                }
                _ => return None,
            }
        };
        Some(WatchSpec {
            owner,
            cursors,
            nodes,
            limit,
            max_batch_bytes,
            heartbeat_ms,
            include_meta: flags & 1 != 0,
            include_tags: flags & 2 != 0,
            include_data: flags & 4 != 0,
            strong: flags & 8 != 0,
        })
    }
}

pub struct Session {
    pub spec: WatchSpec,
    pub open_streams: u32,
    pub last_active_ms: u64,
}

/// Applies a session operation (live and at replay).
pub fn apply_watch(sessions: &mut BTreeMap<String, Session>, op: Op, now: u64) {
    match op {
        Op::WatchPut { topic, spec } => {
            sessions.insert(
                topic,
                Session {
                    spec,
                    open_streams: 0,
                    last_active_ms: now,
                },
            );
        }
        Op::WatchCursor { topic, cursors } => {
            if let Some(s) = sessions.get_mut(&topic) {
                for (name, seq) in cursors {
                    if let Some(c) = s.spec.cursors.iter_mut().find(|(n, _)| *n == name) {
                        c.1 = seq;
                    }
                }
                s.last_active_ms = now;
            }
        }
        Op::WatchDel { topic } => {
            sessions.remove(&topic);
        }
        _ => {}
    }
}

impl Shard {
    pub(crate) async fn create_watch(
        &self,
        wid: String,
        spec: WatchSpec,
    ) -> Result<Reply, ShardError> {
        self.check_writable()?;
        let op = Op::WatchPut { topic: wid, spec };
        let lsn = self.log(&op, true);
        apply_watch(&mut self.sessions.borrow_mut(), op, now_ms());
        self.update_session_gauge();
        self.durable(lsn).await?;
        Ok(Reply::WatchOk)
    }

    /// Opens a stream on a session: rewinds its cursors to `rewind` where that is lower and
    /// returns the spec to serve.
    pub(crate) fn open_watch(
        &self,
        wid: &str,
        rewind: Option<Vec<(String, u64)>>,
        key: Option<[u8; 32]>,
    ) -> Result<Reply, ShardError> {
        let mut sessions = self.sessions.borrow_mut();
        let s = sessions.get_mut(wid).ok_or(ShardError::SessionNotFound)?;
        if s.spec.owner.is_some() && s.spec.owner != key {
            return Err(ShardError::Forbidden(
                "this watch session was created with another API key".into(),
            ));
        }
        let mut rewound = Vec::new();
        if let Some(map) = rewind {
            for (name, seq) in map {
                if let Some(c) = s.spec.cursors.iter_mut().find(|(n, _)| *n == name) {
                    if seq < c.1 {
                        c.1 = seq;
                        rewound.push((name, seq));
                    }
                }
            }
        }
        s.open_streams += 1;
        s.last_active_ms = now_ms();
        let spec = s.spec.clone();
        drop(sessions);
        if !rewound.is_empty() && self.check_writable().is_ok() {
            self.log(
                &Op::WatchCursor {
                    topic: wid.to_string(),
                    cursors: rewound,
                },
                false,
            );
        }
        Ok(Reply::Watch(Box::new(spec)))
    }

    /// Records a stream's progress; `close` ends one open stream of the session.
    pub(crate) fn watch_progress(
        &self,
        wid: &str,
        cursors: Vec<(String, u64)>,
        close: bool,
    ) -> Result<Reply, ShardError> {
        let mut sessions = self.sessions.borrow_mut();
        let s = sessions.get_mut(wid).ok_or(ShardError::SessionNotFound)?;
        if close {
            s.open_streams = s.open_streams.saturating_sub(1);
        }
        let changed: Vec<(String, u64)> = cursors
            .into_iter()
            .filter(|(n, seq)| s.spec.cursors.iter().any(|(m, c)| m == n && c != seq))
            .collect();
        let op = Op::WatchCursor {
            topic: wid.to_string(),
            cursors: changed,
        };
        let logged = match &op {
            Op::WatchCursor { cursors, .. } if !cursors.is_empty() => self.check_writable().is_ok(),
            _ => false,
        };
        if logged {
            self.log(&op, false);
        }
        apply_watch(&mut sessions, op, now_ms());
        Ok(Reply::WatchOk)
    }

    /// Reclaims sessions idle past their TTL with no open stream, once a minute.
    pub(crate) fn start_session_reaper(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                let Some(shard) = weak.upgrade() else {
                    return;
                };
                let now = now_ms();
                let expired: Vec<String> = shard
                    .sessions
                    .borrow()
                    .iter()
                    .filter(|(_, s)| s.open_streams == 0 && s.last_active_ms + SESSION_TTL_MS < now)
                    .map(|(w, _)| w.clone())
                    .collect();
                for wid in expired {
                    if shard.check_writable().is_err() {
                        break;
                    }
                    let op = Op::WatchDel { topic: wid };
                    shard.log(&op, false);
                    apply_watch(&mut shard.sessions.borrow_mut(), op, now);
                }
                shard.update_session_gauge();
            }
        })
        .detach();
    }

    pub fn session_count(&self) -> usize {
        self.sessions.borrow().len()
    }

    fn update_session_gauge(&self) {
        self.opts
            .session_gauge
            .store(self.session_count(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trip() {
        let spec = WatchSpec {
            cursors: vec![("a".into(), 3), ("b".into(), 0)],
            nodes: vec!["n1".into()],
            limit: 256,
            max_batch_bytes: 262_144,
            heartbeat_ms: 15_000,
            include_meta: true,
            include_tags: false,
            include_data: true,
            strong: true,
            owner: Some([7; 32]),
        };
        let mut buf = Vec::new();
        spec.encode(&mut buf);
        assert_eq!(WatchSpec::decode(&mut Dec::new(&buf)), Some(spec.clone()));
        for cut in 0..buf.len() {
            // A cut frame never decodes to the session (at most to one without its owner).
            assert_ne!(
                WatchSpec::decode(&mut Dec::new(&buf[..cut])),
                Some(spec.clone())
            );
        }
        let no_owner = WatchSpec {
            owner: None,
            ..spec
        };
        let mut buf = Vec::new();
        no_owner.encode(&mut buf);
        assert_eq!(WatchSpec::decode(&mut Dec::new(&buf)), Some(no_owner));
    }

    #[test]
    fn cursor_updates_and_deletes() {
        let mut m = BTreeMap::new();
        let spec = WatchSpec {
            cursors: vec![("a".into(), 0)],
            nodes: vec![],
            limit: 1,
            max_batch_bytes: 1,
            heartbeat_ms: 1000,
            include_meta: true,
            include_tags: false,
            include_data: true,
            strong: false,
            owner: None,
        };
        apply_watch(
            &mut m,
            Op::WatchPut {
                topic: "w".into(),
                spec,
            },
            1,
        );
        apply_watch(
            &mut m,
            Op::WatchCursor {
                topic: "w".into(),
                cursors: vec![("a".into(), 9), ("zz".into(), 4)],
            },
            2,
        );
        assert_eq!(m["w"].spec.cursors, vec![("a".to_string(), 9)]);
        apply_watch(&mut m, Op::WatchDel { topic: "w".into() }, 3);
        assert!(m.is_empty());
    }
}
