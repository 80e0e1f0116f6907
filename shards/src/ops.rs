//! The operations a shard logs in its WAL, and their binary encoding.
//!
//! The live path encodes an operation, queues the frame and applies the operation to memory;
//! recovery decodes the frames and applies the same operations in the same order.

use crate::codec::{Dec, Enc};
use crate::config::TopicConfig;
use crate::topic::{NewRecord, TagMatch};
use std::sync::Arc;

pub const K_CONFIG: u8 = 10;
pub const K_APPEND: u8 = 11;
pub const K_RESERVE: u8 = 12;
pub const K_DELETE: u8 = 13;
pub const K_DROP: u8 = 14;
pub const K_SKIPPED: u8 = 15;
pub const K_SETTLE: u8 = 16;

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
    Drop {
        topic: String,
    },
    /// Written at a clean shutdown: every seq up to `head` is durable, none above was handed
    /// out, so the reservation shrinks back to the head.
    Settle {
        topic: String,
        head: u64,
    },
}

impl Op {
    pub fn kind(&self) -> u8 {
        match self {
            Op::Config { .. } => K_CONFIG,
            Op::Append { .. } => K_APPEND,
            Op::Skipped { .. } => K_SKIPPED,
            Op::Reserve { .. } => K_RESERVE,
            Op::Delete { .. } => K_DELETE,
            Op::Drop { .. } => K_DROP,
            Op::Settle { .. } => K_SETTLE,
        }
    }

    pub fn topic(&self) -> &str {
        match self {
            Op::Config { topic, .. }
            | Op::Append { topic, .. }
            | Op::Skipped { topic, .. }
            | Op::Reserve { topic, .. }
            | Op::Delete { topic, .. }
            | Op::Drop { topic }
            | Op::Settle { topic, .. } => topic,
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
                ..
            } => {
                e.u64(*first_seq)
                    .u64(*ts)
                    .opt_bytes(idem_key.as_deref().map(str::as_bytes))
                    .u32(records.len() as u32);
                for r in records {
                    e.opt_bytes(r.node.as_deref().map(str::as_bytes))
                        .opt_bytes(r.tag.as_deref().map(str::as_bytes))
                        .bytes(&r.data)
                        .opt_bytes(r.meta.as_deref());
                }
            }
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
                match matcher {
                    None => e.u8(0),
                    Some(TagMatch::Eq(s)) => e.u8(1).bytes(s.as_bytes()),
                    Some(TagMatch::Prefix(s)) => e.u8(2).bytes(s.as_bytes()),
                };
                e.u64(*upto_seq);
            }
            Op::Settle { head, .. } => {
                e.u64(*head);
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
            K_APPEND => {
                let first_seq = d.u64()?;
                let ts = d.u64()?;
                let idem_key = key(&mut d)?;
                let n = d.u32()? as usize;
                let mut records = Vec::with_capacity(n.min(10_000));
                for _ in 0..n {
                    records.push(NewRecord {
                        node: d.opt_str()?.map(Arc::from),
                        tag: d.opt_str()?.map(Arc::from),
                        data: Arc::from(d.bytes()?),
                        meta: d.opt_bytes()?.map(Arc::from),
                    });
                }
                Op::Append {
                    topic,
                    first_seq,
                    ts,
                    idem_key,
                    records,
                }
            }
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
                let matcher = match d.u8()? {
                    0 => None,
                    1 => Some(TagMatch::Eq(d.str()?.to_owned())),
                    2 => Some(TagMatch::Prefix(d.str()?.to_owned())),
                    _ => return None,
                };
                Op::Delete {
                    topic,
                    before_seq,
                    matcher,
                    upto_seq: d.u64()?,
                }
            }
            K_DROP => Op::Drop { topic },
            K_SETTLE => Op::Settle {
                topic,
                head: d.u64()?,
            },
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
            records: vec![NewRecord {
                node: Some(Arc::from("n")),
                tag: None,
                data: Arc::from(&b"{ \"a\" : 1 }"[..]),
                meta: Some(Arc::from(&b"{}"[..])),
            }],
        };
        match round_trip(op) {
            Op::Append {
                topic,
                first_seq,
                records,
                idem_key,
                ..
            } => {
                assert_eq!((topic.as_str(), first_seq), ("t", 5));
                assert_eq!(idem_key.as_deref(), Some("k"));
                assert_eq!(&*records[0].data, b"{ \"a\" : 1 }");
                assert_eq!(records[0].node.as_deref(), Some("n"));
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
