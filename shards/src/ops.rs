//! The operations a shard logs in its WAL, and their binary encoding.
//!
//! The live path encodes an operation, queues the frame and applies the operation to memory;
//! recovery decodes the frames and applies the same operations in the same order.

use crate::codec::{Dec, Enc};
use crate::config::TopicConfig;
use crate::mesh::RouterConfig;
use crate::stream::{StreamStamp, StreamState};
use crate::topic::{NewRecord, TagMatch};
use crate::watch::WatchSpec;
use std::sync::Arc;

pub const K_CONFIG: u8 = 10;
pub const K_APPEND: u8 = 11;
pub const K_RESERVE: u8 = 12;
pub const K_DELETE: u8 = 13;
pub const K_DROP: u8 = 14;
pub const K_SKIPPED: u8 = 15;
pub const K_SETTLE: u8 = 16;
pub const K_DELETE_SEQS: u8 = 17;
/// An append to a Durable Stream: [`K_APPEND`]'s body, then the stream stamp.
pub const K_STREAM_APPEND: u8 = 18;
/// A Durable Stream's whole state (creation, close without data, fork references).
pub const K_STREAM_STATE: u8 = 19;
pub const K_QUEUE_LEASE: u8 = 40;
pub const K_QUEUE_RELEASE: u8 = 41;
pub const K_QUEUE_DEAD: u8 = 42;
pub const K_ROUTER_PUT: u8 = 20;
pub const K_ROUTER_CURSOR: u8 = 21;
pub const K_ROUTER_DEL: u8 = 22;
pub const K_WATCH_PUT: u8 = 30;
pub const K_WATCH_CURSOR: u8 = 31;
pub const K_WATCH_DEL: u8 = 32;

#[derive(Debug)]
pub enum Op {
    /// Create a topic or replace its config.
    Config {
        topic: String,
        config: TopicConfig,
    },
    Append {
        topic: String,
        first_seq: u64,
        ts: u64,
        idem_key: Option<String>,
        records: Vec<NewRecord>,
        /// Exactly-once router mark: (router, last source seq), committed with the records.
        mark: Option<(String, u64)>,
        /// A Durable Stream's producer, `Stream-Seq` and close, committed with the records.
        stream: Option<Box<StreamStamp>>,
    },
    StreamState {
        topic: String,
        state: Box<StreamState>,
    },
    /// An ephemeral topic's append: the seqs and key are logged, the records are not.
    Skipped {
        topic: String,
        first_seq: u64,
        count: u64,
        ts: u64,
        idem_key: Option<String>,
    },
    /// Seqs up to `upto` may have been acknowledged; never reuse them.
    Reserve {
        topic: String,
        upto: u64,
    },
    Delete {
        topic: String,
        before_seq: Option<u64>,
        matcher: Option<TagMatch>,
        upto_seq: u64,
    },
    /// A delete resolved to the records it removes: (seq, payload size), in seq order.
    DeleteSeqs {
        topic: String,
        victims: Vec<(u64, u64)>,
    },
    Drop {
        topic: String,
    },
    /// Queue jobs leased (or leases extended): (seq, lease id, deadline, deliveries, size),
    /// and the fresh-job cursor after the claim. Logged only with `leases_durable`.
    QueueLease {
        topic: String,
        node: String,
        entries: Vec<(u64, u64, u64, u32, u64)>,
        fresh_cursor: u64,
    },
    /// Leases given back: (seq, claimable again at; 0 = now).
    QueueRelease {
        topic: String,
        entries: Vec<(u64, u64)>,
    },
    /// Jobs moved to the dead-letter topic: deleted here and counted.
    QueueDead {
        topic: String,
        victims: Vec<(u64, u64)>,
    },
    /// Written at a clean shutdown: every seq up to `head` is durable, none above was handed
    /// out, so the reservation shrinks back to the head.
    Settle {
        topic: String,
        head: u64,
    },
    /// A router installed or reconfigured on its source's shard (`topic` is the router name).
    RouterPut {
        topic: String,
        config: RouterConfig,
        cursor: u64,
        forwarded: u64,
    },
    /// A router's progress: source seqs up to `cursor` are forwarded.
    RouterCursor {
        topic: String,
        cursor: u64,
        forwarded: u64,
    },
    RouterDel {
        topic: String,
    },
    /// A watch session created (`topic` is the wid).
    WatchPut {
        topic: String,
        spec: WatchSpec,
    },
    /// A watch session's cursors moved.
    WatchCursor {
        topic: String,
        cursors: Vec<(String, u64)>,
    },
    WatchDel {
        topic: String,
    },
}

fn encode_match(e: &mut Enc<'_>, m: &Option<TagMatch>) {
    match m {
        None => e.u8(0),
        Some(TagMatch::Eq(s)) => e.u8(1).bytes(s.as_bytes()),
        Some(TagMatch::Prefix(s)) => e.u8(2).bytes(s.as_bytes()),
    };
}

fn decode_match(d: &mut Dec<'_>) -> Option<Option<TagMatch>> {
    Some(match d.u8()? {
        0 => None,
        1 => Some(TagMatch::Eq(d.str()?.to_owned())),
        2 => Some(TagMatch::Prefix(d.str()?.to_owned())),
        _ => return None,
    })
}

impl Op {
    pub fn kind(&self) -> u8 {
        match self {
            Op::Config { .. } => K_CONFIG,
            Op::Append { stream: None, .. } => K_APPEND,
            Op::Append { .. } => K_STREAM_APPEND,
            Op::StreamState { .. } => K_STREAM_STATE,
            Op::Skipped { .. } => K_SKIPPED,
            Op::Reserve { .. } => K_RESERVE,
            Op::Delete { .. } => K_DELETE,
            Op::DeleteSeqs { .. } => K_DELETE_SEQS,
            Op::QueueLease { .. } => K_QUEUE_LEASE,
            Op::QueueRelease { .. } => K_QUEUE_RELEASE,
            Op::QueueDead { .. } => K_QUEUE_DEAD,
            Op::Drop { .. } => K_DROP,
            Op::Settle { .. } => K_SETTLE,
            Op::RouterPut { .. } => K_ROUTER_PUT,
            Op::RouterCursor { .. } => K_ROUTER_CURSOR,
            Op::RouterDel { .. } => K_ROUTER_DEL,
            Op::WatchPut { .. } => K_WATCH_PUT,
            Op::WatchCursor { .. } => K_WATCH_CURSOR,
            Op::WatchDel { .. } => K_WATCH_DEL,
        }
    }

    pub fn topic(&self) -> &str {
        match self {
            Op::Config { topic, .. }
            | Op::Append { topic, .. }
            | Op::StreamState { topic, .. }
            | Op::Skipped { topic, .. }
            | Op::Reserve { topic, .. }
            | Op::Delete { topic, .. }
            | Op::DeleteSeqs { topic, .. }
            | Op::QueueLease { topic, .. }
            | Op::QueueRelease { topic, .. }
            | Op::QueueDead { topic, .. }
            | Op::Drop { topic }
            | Op::Settle { topic, .. }
            | Op::RouterPut { topic, .. }
            | Op::RouterCursor { topic, .. }
            | Op::RouterDel { topic }
            | Op::WatchPut { topic, .. }
            | Op::WatchCursor { topic, .. }
            | Op::WatchDel { topic } => topic,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        e.bytes(self.topic().as_bytes());
        match self {
            Op::Config { config, .. } => config.encode(e.0),
            Op::Append {
                first_seq,
                ts,
                idem_key,
                records,
                mark,
                stream,
                ..
            } => {
                e.u64(*first_seq)
                    .u64(*ts)
                    .opt_bytes(idem_key.as_deref().map(str::as_bytes));
                match mark {
                    Some((r, s)) => e.u8(1).bytes(r.as_bytes()).u64(*s),
                    None => e.u8(0),
                };
                e.u32(records.len() as u32);
                for r in records {
                    e.opt_bytes(r.node.as_deref().map(str::as_bytes))
                        .opt_bytes(r.tag.as_deref().map(str::as_bytes))
                        .bytes(&r.data)
                        .opt_bytes(r.meta.as_deref())
                        .u8(r.hops);
                }
                if let Some(s) = stream {
                    match &s.producer {
                        Some((id, epoch, seq)) => {
                            e.u8(1).bytes(id.as_bytes()).u64(*epoch).u64(*seq)
                        }
                        None => e.u8(0),
                    };
                    e.opt_bytes(s.stream_seq.as_deref().map(str::as_bytes))
                        .u8(s.close as u8);
                }
            }
            Op::StreamState { state, .. } => state.encode(&mut e),
            Op::Skipped {
                first_seq,
                count,
                ts,
                idem_key,
                ..
            } => {
                e.u64(*first_seq)
                    .u64(*count)
                    .u64(*ts)
                    .opt_bytes(idem_key.as_deref().map(str::as_bytes));
            }
            Op::Reserve { upto, .. } => {
                e.u64(*upto);
            }
            Op::Delete {
                before_seq,
                matcher,
                upto_seq,
                ..
            } => {
                match before_seq {
                    Some(b) => e.u8(1).u64(*b),
                    None => e.u8(0),
                };
                encode_match(&mut e, matcher);
                e.u64(*upto_seq);
            }
            Op::Settle { head, .. } => {
                e.u64(*head);
            }
            Op::DeleteSeqs { victims, .. } | Op::QueueDead { victims, .. } => {
                e.u32(victims.len() as u32);
                for (s, n) in victims {
                    e.u64(*s).u64(*n);
                }
            }
            Op::QueueLease {
                node,
                entries,
                fresh_cursor,
                ..
            } => {
                e.bytes(node.as_bytes()).u64(*fresh_cursor);
                e.u32(entries.len() as u32);
                for (s, id, d, n, size) in entries {
                    e.u64(*s).u64(*id).u64(*d).u32(*n).u64(*size);
                }
            }
            Op::QueueRelease { entries, .. } => {
                e.u32(entries.len() as u32);
                for (s, t) in entries {
                    e.u64(*s).u64(*t);
                }
            }
            Op::RouterPut {
                config,
                cursor,
                forwarded,
                ..
            } => {
                let flags = config.preserve_node as u8
                    | (config.preserve_tag as u8) << 1
                    | (config.create_dest as u8) << 2
                    | (config.allow_cycle as u8) << 3
                    | (config.exactly_once as u8) << 4;
                e.bytes(config.source.as_bytes())
                    .bytes(config.dest.as_bytes())
                    .u8(flags);
                encode_match(&mut e, &config.filter);
                e.u64(*cursor).u64(*forwarded);
            }
            Op::RouterCursor {
                cursor, forwarded, ..
            } => {
                e.u64(*cursor).u64(*forwarded);
            }
            Op::RouterDel { .. } | Op::WatchDel { .. } => {}
            Op::WatchPut { spec, .. } => spec.encode(e.0),
            Op::WatchCursor { cursors, .. } => {
                e.u32(cursors.len() as u32);
                for (t, c) in cursors {
                    e.bytes(t.as_bytes()).u64(*c);
                }
            }
            Op::Drop { .. } => {}
        }
    }

    /// Decodes a frame body; `None` if it is not a valid operation of this kind.
    pub fn decode(kind: u8, body: &[u8]) -> Option<Op> {
        let mut d = Dec::new(body);
        let topic = d.str()?.to_owned();
        let key = |d: &mut Dec<'_>| d.opt_str().map(|o| o.map(str::to_owned));
        Some(match kind {
            K_CONFIG => Op::Config {
                topic,
                config: TopicConfig::decode(&mut d)?,
            },
            K_APPEND | K_STREAM_APPEND => {
                let first_seq = d.u64()?;
                let ts = d.u64()?;
                let idem_key = key(&mut d)?;
                let mark = match d.u8()? {
                    0 => None,
                    1 => Some((d.str()?.to_owned(), d.u64()?)),
                    _ => return None,
                };
                let n = d.u32()? as usize;
                let mut records = Vec::with_capacity(n.min(10_000));
                for _ in 0..n {
                    records.push(NewRecord {
                        node: d.opt_str()?.map(Arc::from),
                        tag: d.opt_str()?.map(Arc::from),
                        data: Arc::from(d.bytes()?),
                        meta: d.opt_bytes()?.map(Arc::from),
                        hops: d.u8()?,
                    });
                }
                let stream = if kind == K_STREAM_APPEND {
                    let producer = match d.u8()? {
                        0 => None,
                        1 => Some((d.str()?.to_owned(), d.u64()?, d.u64()?)),
                        _ => return None,
                    };
                    Some(Box::new(StreamStamp {
                        producer,
                        stream_seq: d.opt_str()?.map(str::to_owned),
                        close: d.u8()? != 0,
                    }))
                } else {
                    None
                };
                Op::Append {
                    topic,
                    first_seq,
                    ts,
                    idem_key,
                    records,
                    mark,
                    stream,
                }
            }
            K_STREAM_STATE => Op::StreamState {
                topic,
                state: Box::new(StreamState::decode(&mut d)?),
            },
            K_SKIPPED => Op::Skipped {
                topic,
                first_seq: d.u64()?,
                count: d.u64()?,
                ts: d.u64()?,
                idem_key: key(&mut d)?,
            },
            K_RESERVE => Op::Reserve {
                topic,
                upto: d.u64()?,
            },
            K_DELETE => {
                let before_seq = match d.u8()? {
                    0 => None,
                    _ => Some(d.u64()?),
                };
                let matcher = decode_match(&mut d)?;
                Op::Delete {
                    topic,
                    before_seq,
                    matcher,
                    upto_seq: d.u64()?,
                }
            }
            K_DELETE_SEQS | K_QUEUE_DEAD => {
                let n = d.u32()? as usize;
                let mut victims = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    victims.push((d.u64()?, d.u64()?));
                }
                if kind == K_QUEUE_DEAD {
                    Op::QueueDead { topic, victims }
                } else {
                    Op::DeleteSeqs { topic, victims }
                }
            }
            K_QUEUE_LEASE => {
                let node = d.str()?.to_owned();
                let fresh_cursor = d.u64()?;
                let n = d.u32()? as usize;
                let mut entries = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    entries.push((d.u64()?, d.u64()?, d.u64()?, d.u32()?, d.u64()?));
                }
                Op::QueueLease {
                    topic,
                    node,
                    entries,
                    fresh_cursor,
                }
            }
            K_QUEUE_RELEASE => {
                let n = d.u32()? as usize;
                let mut entries = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    entries.push((d.u64()?, d.u64()?));
                }
                Op::QueueRelease { topic, entries }
            }
            K_DROP => Op::Drop { topic },
            K_SETTLE => Op::Settle {
                topic,
                head: d.u64()?,
            },
            K_ROUTER_PUT => {
                let source = d.str()?.to_owned();
                let dest = d.str()?.to_owned();
                let flags = d.u8()?;
                let filter = decode_match(&mut d)?;
                Op::RouterPut {
                    topic,
                    config: RouterConfig {
                        source,
                        dest,
                        preserve_node: flags & 1 != 0,
                        preserve_tag: flags & 2 != 0,
                        create_dest: flags & 4 != 0,
                        allow_cycle: flags & 8 != 0,
                        exactly_once: flags & 16 != 0,
                        filter,
                    },
                    cursor: d.u64()?,
                    forwarded: d.u64()?,
                }
            }
            K_ROUTER_CURSOR => Op::RouterCursor {
                topic,
                cursor: d.u64()?,
                forwarded: d.u64()?,
            },
            K_ROUTER_DEL => Op::RouterDel { topic },
            K_WATCH_PUT => Op::WatchPut {
                topic,
                spec: WatchSpec::decode(&mut d)?,
            },
            K_WATCH_CURSOR => {
                let n = d.u32()? as usize;
                let mut cursors = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    cursors.push((d.str()?.to_owned(), d.u64()?));
                }
                Op::WatchCursor { topic, cursors }
            }
            K_WATCH_DEL => Op::WatchDel { topic },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(op: Op) -> Op {
        let mut buf = Vec::new();
        op.encode(&mut buf);
        let back = Op::decode(op.kind(), &buf).expect("decodes");
        for cut in 0..buf.len() {
            assert!(Op::decode(op.kind(), &buf[..cut]).is_none(), "cut {cut}");
        }
        back
    }

    #[test]
    fn append_round_trip_keeps_bytes() {
        let op = Op::Append {
            topic: "t".into(),
            first_seq: 5,
            ts: 99,
            idem_key: Some("k".into()),
            mark: Some(("r".into(), 7)),
            records: vec![NewRecord {
                node: Some(Arc::from("n")),
                tag: None,
                data: Arc::from(&b"{ \"a\" : 1 }"[..]),
                meta: Some(Arc::from(&b"{}"[..])),
                hops: 0,
            }],
            stream: None,
        };
        match round_trip(op) {
            Op::Append {
                topic,
                first_seq,
                records,
                idem_key,
                stream,
                ..
            } => {
                assert_eq!((topic.as_str(), first_seq), ("t", 5));
                assert_eq!(idem_key.as_deref(), Some("k"));
                assert_eq!(&*records[0].data, b"{ \"a\" : 1 }");
                assert_eq!(records[0].node.as_deref(), Some("n"));
                assert!(stream.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stream_append_round_trip_keeps_the_stamp() {
        let stamp = StreamStamp {
            producer: Some(("p1".into(), 3, 9)),
            stream_seq: Some("0010".into()),
            close: true,
        };
        let op = Op::Append {
            topic: "/s/x".into(),
            first_seq: 1,
            ts: 2,
            idem_key: None,
            mark: None,
            records: vec![NewRecord {
                node: None,
                tag: None,
                data: Arc::from(&[0u8, 255, 10][..]),
                meta: None,
                hops: 0,
            }],
            stream: Some(Box::new(stamp.clone())),
        };
        assert_eq!(op.kind(), K_STREAM_APPEND);
        match round_trip(op) {
            Op::Append {
                records, stream, ..
            } => {
                assert_eq!(&*records[0].data, &[0u8, 255, 10][..]);
                assert_eq!(stream.as_deref(), Some(&stamp));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn delete_seqs_round_trip() {
        let op = Op::DeleteSeqs {
            topic: "t".into(),
            victims: vec![(3, 10), (9, 0)],
        };
        match round_trip(op) {
            Op::DeleteSeqs { topic, victims } => {
                assert_eq!(topic, "t");
                assert_eq!(victims, vec![(3, 10), (9, 0)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn delete_round_trip() {
        let op = Op::Delete {
            topic: "t".into(),
            before_seq: Some(3),
            matcher: Some(TagMatch::Prefix("a".into())),
            upto_seq: 10,
        };
        match round_trip(op) {
            Op::Delete {
                before_seq,
                matcher,
                upto_seq,
                ..
            } => {
                assert_eq!(before_seq, Some(3));
                assert_eq!(matcher, Some(TagMatch::Prefix("a".into())));
                assert_eq!(upto_seq, 10);
            }
            other => panic!("{other:?}"),
        }
    }
}
