//! Topic configuration: the resolved config, a patch from a `PUT` or a creating write, and its
//! binary encoding in the WAL.

use crate::codec::{Dec, Enc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicType {
    Log,
    Queue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discard {
    Old,
    Reject,
}

/// The commit class of a topic (SPEC §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Ack after the WAL frame is synced.
    Fsync,
    /// Ack when the frame is queued; synced within the sync interval.
    Disk,
    /// Same write path, no durability promise.
    Memory,
    /// Records never touch the WAL; config and head persist.
    Ephemeral,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Disk => "disk",
            Durability::Memory => "memory",
            Durability::Ephemeral => "ephemeral",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "fsync" => Durability::Fsync,
            "disk" => Durability::Disk,
            "memory" => Durability::Memory,
            "ephemeral" => Durability::Ephemeral,
            _ => return None,
        })
    }
    fn code(self) -> u8 {
        match self {
            Durability::Fsync => 0,
            Durability::Disk => 1,
            Durability::Memory => 2,
            Durability::Ephemeral => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => Durability::Fsync,
            1 => Durability::Disk,
            2 => Durability::Memory,
            3 => Durability::Ephemeral,
            _ => return None,
        })
    }
}

impl TopicType {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicType::Log => "log",
            TopicType::Queue => "queue",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "log" => Some(TopicType::Log),
            "queue" => Some(TopicType::Queue),
            _ => None,
        }
    }
}

impl Discard {
    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Old => "old",
            Discard::Reject => "reject",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "old" => Some(Discard::Old),
            "reject" => Some(Discard::Reject),
            _ => None,
        }
    }
}

/// A topic's full, resolved configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    pub topic_type: TopicType,
    pub ttl_ms: u64,
    pub cap_records: u64,
    pub cap_bytes: u64,
    pub discard: Discard,
    pub durability: Durability,
    pub priority: Option<i64>,
    pub auto_priority: bool,
    pub auto_create: bool,
    pub idempotency_window_ms: u64,
    pub dedupe_node: bool,
    pub lease_ms: u64,
    pub claim_jitter_ms: u64,
    pub max_deliveries: u64,
    pub dead_letter: Option<String>,
    pub leases_durable: bool,
}

impl TopicConfig {
    /// Defaults of SPEC §2; `auto_create` comes from the server's `--auto-create`.
    pub fn defaults(auto_create: bool) -> Self {
        TopicConfig {
            topic_type: TopicType::Log,
            ttl_ms: 0,
            cap_records: 0,
            cap_bytes: 0,
            discard: Discard::Old,
            durability: Durability::Disk,
            priority: None,
            auto_priority: true,
            auto_create,
            idempotency_window_ms: 120_000,
            dedupe_node: true,
            lease_ms: 30_000,
            claim_jitter_ms: 0,
            max_deliveries: 0,
            dead_letter: None,
            leases_durable: false,
        }
    }

    pub fn durable(&self) -> bool {
        self.durability == Durability::Fsync
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::with_capacity(96);
        let mut e = Enc(&mut body);
        e.u8(match self.topic_type {
            TopicType::Log => 0,
            TopicType::Queue => 1,
        })
        .u64(self.ttl_ms)
        .u64(self.cap_records)
        .u64(self.cap_bytes)
        .u8(match self.discard {
            Discard::Old => 0,
            Discard::Reject => 1,
        })
        .u8(self.durability.code());
        match self.priority {
            Some(p) => e.u8(1).i64(p),
            None => e.u8(0),
        };
        e.u8(self.auto_priority as u8)
            .u8(self.auto_create as u8)
            .u64(self.idempotency_window_ms)
            .u8(self.dedupe_node as u8)
            .u64(self.lease_ms)
            .u64(self.claim_jitter_ms)
            .u64(self.max_deliveries)
            .opt_bytes(self.dead_letter.as_deref().map(str::as_bytes))
            .u8(self.leases_durable as u8);
        // Length-prefixed so later versions can append fields.
        Enc(out).bytes(&body);
    }

    pub fn decode(d: &mut Dec<'_>) -> Option<Self> {
        let body = d.bytes()?;
        let mut d = Dec::new(body);
        let topic_type = match d.u8()? {
            0 => TopicType::Log,
            1 => TopicType::Queue,
            _ => return None,
        };
        let ttl_ms = d.u64()?;
        let cap_records = d.u64()?;
        let cap_bytes = d.u64()?;
        let discard = match d.u8()? {
            0 => Discard::Old,
            1 => Discard::Reject,
            _ => return None,
        };
        let durability = Durability::from_code(d.u8()?)?;
        let priority = match d.u8()? {
            0 => None,
            _ => Some(d.i64()?),
        };
        Some(TopicConfig {
            topic_type,
            ttl_ms,
            cap_records,
            cap_bytes,
            discard,
            durability,
            priority,
            auto_priority: d.u8()? != 0,
            auto_create: d.u8()? != 0,
            idempotency_window_ms: d.u64()?,
            dedupe_node: d.u8()? != 0,
            lease_ms: d.u64()?,
            claim_jitter_ms: d.u64()?,
            max_deliveries: d.u64()?,
            dead_letter: d.opt_str()?.map(str::to_owned),
            leases_durable: d.u8()? != 0,
        })
    }
}

/// The fields a `PUT` (or a creating write's `config`) set; absent fields keep their value.
/// Values arrive validated and clamped by the API layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigPatch {
    pub topic_type: Option<TopicType>,
    pub ttl_ms: Option<u64>,
    pub cap_records: Option<u64>,
    pub cap_bytes: Option<u64>,
    pub discard: Option<Discard>,
    pub durability: Option<Durability>,
    pub durable: Option<bool>,
    /// `Some(None)` sets the priority back to `null`.
    pub priority: Option<Option<i64>>,
    pub auto_priority: Option<bool>,
    pub auto_create: Option<bool>,
    pub idempotency_window_ms: Option<u64>,
    pub dedupe_node: Option<bool>,
    pub lease_ms: Option<u64>,
    pub claim_jitter_ms: Option<u64>,
    pub max_deliveries: Option<u64>,
    pub dead_letter: Option<Option<String>>,
    pub leases_durable: Option<bool>,
}

impl ConfigPatch {
    /// Applies the patch to `base` and returns the result.
    pub fn apply(&self, base: &TopicConfig) -> TopicConfig {
        let mut c = base.clone();
        if let Some(v) = self.topic_type {
            c.topic_type = v;
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(
            ttl_ms,
            cap_records,
            cap_bytes,
            discard,
            priority,
            auto_priority,
            auto_create,
            idempotency_window_ms,
            dedupe_node,
            lease_ms,
            claim_jitter_ms,
            max_deliveries,
            dead_letter,
            leases_durable
        );
        match (self.durability, self.durable) {
            (Some(d), _) => c.durability = d,
            (None, Some(true)) => c.durability = Durability::Fsync,
            // `durable: false` on an existing fsync topic turns it back into `disk`; on any
            // other class it changes nothing.
            (None, Some(false)) if c.durability == Durability::Fsync => {
                c.durability = Durability::Disk
            }
            _ => {}
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut c = TopicConfig::defaults(true);
        c.priority = Some(-7);
        c.dead_letter = Some("dlq".into());
        c.durability = Durability::Ephemeral;
        let mut buf = Vec::new();
        c.encode(&mut buf);
        let got = TopicConfig::decode(&mut Dec::new(&buf)).expect("decodes");
        assert_eq!(got, c);
    }

    #[test]
    fn durable_alias_and_durability_precedence() {
        let base = TopicConfig::defaults(true);
        let p = ConfigPatch {
            durable: Some(true),
            ..Default::default()
        };
        assert_eq!(p.apply(&base).durability, Durability::Fsync);
        let p = ConfigPatch {
            durable: Some(true),
            durability: Some(Durability::Memory),
            ..Default::default()
        };
        assert_eq!(p.apply(&base).durability, Durability::Memory);
        let p = ConfigPatch {
            durable: Some(false),
            ..Default::default()
        };
        let mut fsync = base.clone();
        fsync.durability = Durability::Fsync;
        assert_eq!(p.apply(&fsync).durability, Durability::Disk);
    }
}
