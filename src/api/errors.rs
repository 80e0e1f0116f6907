//! The error body of SPEC §1 and the mapping of shard errors onto it.

use super::json::Obj;
use super::{json_response, Perf};
use crate::http::Response;
use serde_json::{json, Value};
use shards::ShardError;
use std::time::Instant;

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }

    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn route_not_found(path: &str) -> Self {
        Self::new(404, "not_found", format!("no route for {path}"))
    }

    pub fn not_ready(progress: f64) -> Self {
        Self::new(
            503,
            "not_ready",
            "the write-ahead log is still being replayed",
        )
        .detail(json!({ "replay_progress": progress }))
        .header("retry-after", "1".into())
    }

    /// A resource cap of SPEC §1: `429 throttled` with `detail.limit` and `detail.max`.
    pub fn resource_cap(limit: &'static str, max: usize) -> Self {
        Self::new(
            429,
            "throttled",
            format!(
                "the server holds its maximum of {max} {}",
                limit.replace('_', " ")
            ),
        )
        .detail(json!({ "limit": limit, "max": max }))
        .header("retry-after", "1".into())
    }

    pub fn shutting_down() -> Self {
        Self::new(503, "shutting_down", "the server is shutting down")
            .header("retry-after", "1".into())
    }

    pub fn router_not_found(router: &str) -> Self {
        Self::new(
            404,
            "router_not_found",
            format!("router {router:?} does not exist"),
        )
        .detail(json!({ "router": router }))
    }

    pub fn topic_not_found(topic: &str) -> Self {
        Self::new(
            404,
            "topic_not_found",
            format!("topic {topic:?} does not exist"),
        )
        .detail(json!({ "topic": topic }))
    }

    pub fn from_shard(e: ShardError, topic: &str) -> Self {
        match e {
            ShardError::TopicNotFound => Self::topic_not_found(topic),
            ShardError::TopicExistsIncompatible { current } => Self::new(
                409,
                "topic_exists_incompatible",
                format!(
                    "topic {topic:?} exists with type {:?}; type cannot change",
                    current.as_str()
                ),
            )
            .detail(json!({ "topic": topic, "type": current.as_str() })),
            ShardError::TopicNotEmpty { count } => Self::new(
                409,
                "topic_not_empty",
                format!("topic {topic:?} still holds {count} records"),
            )
            .detail(json!({ "topic": topic, "count": count })),
            ShardError::TopicFull {
                cap_records,
                cap_bytes,
            } => Self::new(
                422,
                "topic_full",
                format!("topic {topic:?} is full and its discard policy is \"reject\""),
            )
            .detail(json!({ "topic": topic, "cap_records": cap_records, "cap_bytes": cap_bytes })),
            ShardError::RouterCycle { cycle } => Self::new(
                409,
                "router_cycle",
                format!("this router would close a cycle: {}", cycle.join(" -> ")),
            )
            .detail(json!({ "cycle": cycle })),
            ShardError::RouterIncompatible { message } => {
                Self::new(409, "topic_exists_incompatible", message)
            }
            ShardError::OtherTopicNotFound { topic } => Self::topic_not_found(&topic),
            ShardError::SessionNotFound => Self::new(
                404,
                "not_found",
                "watch session does not exist or has expired",
            ),
            ShardError::ResourceCap { limit, max } => Self::resource_cap(limit, max),
            ShardError::Throttled { retry_after_ms } => Self::new(
                429,
                "throttled",
                "the server is overloaded; retry later (lower-priority topics are shed first)",
            )
            .detail(json!({ "retry_after_ms": retry_after_ms }))
            .header(
                "retry-after",
                retry_after_ms.div_ceil(1000).max(1).to_string(),
            ),
            ShardError::Forbidden(msg) => Self::new(403, "forbidden", msg),
            ShardError::NotAQueue => Self::new(
                409,
                "not_a_queue",
                format!("topic {topic:?} is a log, not a queue"),
            )
            .detail(serde_json::json!({ "topic": topic })),
            ShardError::NotReady => Self::not_ready(0.0),
            ShardError::ShuttingDown => Self::shutting_down(),
            ShardError::DiskFull => Self::new(
                507,
                "insufficient_storage",
                "the disk is full; nothing of this request was written",
            ),
            // Only /v1 sends stream commands, and it answers these itself.
            ShardError::Stream(e) => Self::new(409, "conflict", format!("{e:?}")),
            ShardError::Storage(msg) => {
                if msg.contains("No space left") || msg.contains("os error 28") {
                    Self::new(507, "insufficient_storage", "the disk is full")
                } else {
                    log::error!("storage failure on topic {topic:?}: {msg}");
                    Self::new(500, "internal", "storage failure; see the server log")
                }
            }
        }
    }

    pub fn into_response(self, start: Instant) -> Response {
        let mut body = Vec::with_capacity(128);
        let mut o = Obj::new(&mut body);
        {
            let out = o.key("error");
            let mut e = Obj::new(out);
            e.str("code", self.code).str("message", &self.message);
            if let Some(d) = &self.detail {
                e.value("detail", d);
            }
            e.end();
        }
        Perf::default().write(&mut o, start);
        o.end();
        let mut r = json_response(self.status, body);
        r.headers = self.headers;
        r
    }
}
