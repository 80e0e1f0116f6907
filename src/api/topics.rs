//! The control plane: `PUT/GET/DELETE /v0/topics/:topic` and `GET /v0/topics`.

use super::auth::Principal;
use super::json::Obj;
use super::{
    check_topic_name, json_body, json_response, parse, query_bool, Api, ApiError, ApiResult, Perf,
};
use super::{encode_cursor, page, unexpected};
use crate::http::Request;
use serde_json::{Map, Value};
use shards::{Command, ConfigPatch, Discard, Durability, Reply, TopicConfig, TopicType};
use std::time::Instant;

fn want_u64(m: &Map<String, Value>, k: &str) -> Result<Option<u64>, ApiError> {
    match m.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("{k} must be a non-negative integer"))),
    }
}

fn want_bool(m: &Map<String, Value>, k: &str) -> Result<Option<bool>, ApiError> {
    match m.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("{k} must be true or false"))),
    }
}

fn want_enum<T>(
    m: &Map<String, Value>,
    k: &str,
    parse: fn(&str) -> Option<T>,
    allowed: &str,
) -> Result<Option<T>, ApiError> {
    match m.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(parse)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("{k} must be one of {allowed}"))),
    }
}

/// Parses a config object (SPEC §2) into a patch, validating types and clamping ranges.
pub fn parse_config(topic: &str, v: &Value) -> Result<ConfigPatch, ApiError> {
    let m = v
        .as_object()
        .ok_or_else(|| ApiError::invalid("the topic config must be a JSON object"))?;
    let priority = match m.get("priority") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(p) => Some(Some(
            p.as_i64()
                .ok_or_else(|| ApiError::invalid("priority must be an integer or null"))?
                .clamp(-1000, 1000),
        )),
    };
    let dead_letter = match m.get("dead_letter") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(d)) => {
            check_topic_name(d)?;
            if d == topic {
                return Err(ApiError::invalid(
                    "dead_letter must differ from the topic itself",
                ));
            }
            Some(Some(d.clone()))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "dead_letter must be a topic name or null",
            ))
        }
    };
    Ok(ConfigPatch {
        topic_type: want_enum(m, "type", TopicType::parse, "\"log\", \"queue\"")?,
        ttl_ms: want_u64(m, "ttl_ms")?,
        cap_records: want_u64(m, "cap_records")?,
        cap_bytes: want_u64(m, "cap_bytes")?,
        discard: want_enum(m, "discard", Discard::parse, "\"old\", \"reject\"")?,
        durability: want_enum(
            m,
            "durability",
            Durability::parse,
            "\"fsync\", \"disk\", \"memory\", \"ephemeral\"",
        )?,
        durable: want_bool(m, "durable")?,
        priority,
        auto_priority: want_bool(m, "auto_priority")?,
        auto_create: want_bool(m, "auto_create")?,
        idempotency_window_ms: want_u64(m, "idempotency_window_ms")?,
        dedupe_node: want_bool(m, "dedupe_node")?,
        lease_ms: want_u64(m, "lease_ms")?.map(|v| v.clamp(100, 86_400_000)),
        claim_jitter_ms: want_u64(m, "claim_jitter_ms")?.map(|v| v.min(5000)),
        max_deliveries: want_u64(m, "max_deliveries")?,
        dead_letter,
        leases_durable: want_bool(m, "leases_durable")?,
    })
}

/// The full resolved config object.
pub fn write_config(o: &mut Obj<'_>, c: &TopicConfig) {
    let out = o.key("config");
    let mut j = Obj::new(out);
    j.str("type", c.topic_type.as_str())
        .u64("ttl_ms", c.ttl_ms)
        .u64("cap_records", c.cap_records)
        .u64("cap_bytes", c.cap_bytes)
        .str("discard", c.discard.as_str())
        .bool("durable", c.durable())
        .str("durability", c.durability.as_str());
    match c.priority {
        Some(p) => j.i64("priority", p),
        None => j.null("priority"),
    };
    j.bool("auto_priority", c.auto_priority)
        .bool("auto_create", c.auto_create)
        .u64("idempotency_window_ms", c.idempotency_window_ms)
        .bool("dedupe_node", c.dedupe_node)
        .u64("lease_ms", c.lease_ms)
        .u64("claim_jitter_ms", c.claim_jitter_ms)
        .u64("max_deliveries", c.max_deliveries);
    match &c.dead_letter {
        Some(d) => j.str("dead_letter", d),
        None => j.null("dead_letter"),
    };
    j.bool("leases_durable", c.leases_durable);
    j.end();
}

pub async fn put(api: &Api, topic: String, req: &Request, start: Instant) -> ApiResult {
    let body: Value = parse(json_body(req)?)?;
    let patch = parse_config(&topic, &body)?;
    let cmd = Command::PutTopic {
        topic: topic.clone(),
        patch,
    };
    let Reply::Put(r) = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    let mut body = Vec::with_capacity(512);
    let mut o = Obj::new(&mut body);
    o.str("topic", &topic).bool("created", r.created);
    write_config(&mut o, &r.config);
    Perf::from(r.timings).write(&mut o, start);
    o.end();
    Ok(json_response(if r.created { 201 } else { 200 }, body))
}

pub async fn get(api: &Api, topic: String, req: &Request, start: Instant) -> ApiResult {
    let touch = query_bool(req, "touch", true)?;
    let cmd = Command::GetTopic {
        topic: topic.clone(),
        touch,
    };
    let Reply::Info(t) = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    let mut body = Vec::with_capacity(512);
    let mut o = Obj::new(&mut body);
    o.str("topic", &topic)
        .str("type", t.config.topic_type.as_str())
        .u64("head_seq", t.head_seq)
        .u64("earliest_seq", t.earliest_seq)
        .u64("next_seq", t.head_seq + 1)
        .u64("count", t.count)
        .u64("bytes", t.bytes);
    write_config(&mut o, &t.config);
    o.i64("effective_priority", t.effective_priority)
        .u64("last_write_ts", t.last_write_ts)
        .u64("last_read_ts", t.last_read_ts);
    if let Some(q) = &t.queue {
        let mut j = Obj::new(o.key("queue"));
        j.u64("ready", q.ready)
            .u64("in_flight", q.in_flight)
            .u64("dead_lettered", q.dead_lettered);
        j.end();
    }
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

pub async fn delete(api: &Api, topic: String, req: &Request, start: Instant) -> ApiResult {
    let if_empty = query_bool(req, "if_empty", false)?;
    let routers_removed = super::routers::remove_for_topic(api, &topic).await?;
    let cmd = Command::DeleteTopic {
        topic: topic.clone(),
        if_empty,
    };
    let Reply::DeletedTopic { deleted } = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    let mut body = Vec::with_capacity(128);
    let mut o = Obj::new(&mut body);
    o.str("topic", &topic)
        .bool("deleted", deleted)
        .value("routers_removed", &serde_json::json!(routers_removed));
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

pub async fn list(api: &Api, req: &Request, start: Instant, who: &Principal) -> ApiResult {
    let prefix = req.query_param("prefix").unwrap_or_default();
    let (page_size, after) = page(req)?;
    let shards = api.node.shards();
    let mut all = Vec::new();
    for s in 0..shards {
        let cmd = Command::ListTopics {
            prefix: prefix.clone(),
            after: after.clone(),
            limit: page_size + 1,
            allowed: who.prefixes().map(<[String]>::to_vec),
        };
        match api.node.call(s, cmd).await {
            Reply::List(l) => all.extend(l),
            Reply::Err(e) => return Err(ApiError::from_shard(e, "")),
            _ => return Err(unexpected()),
        }
    }
    all.sort_by(|a, b| a.topic.cmp(&b.topic));
    let more = all.len() > page_size;
    all.truncate(page_size);
    let mut body = Vec::with_capacity(64 + all.len() * 160);
    let mut o = Obj::new(&mut body);
    {
        let out = o.key("topics");
        out.push(b'[');
        for (i, t) in all.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut j = Obj::new(out);
            j.str("topic", &t.topic)
                .u64("head_seq", t.head_seq)
                .u64("earliest_seq", t.earliest_seq)
                .u64("count", t.count)
                .u64("bytes", t.bytes)
                .bool("durable", t.durable)
                .i64("effective_priority", t.effective_priority);
            j.end();
        }
        out.push(b']');
    }
    if more {
        if let Some(last) = all.last() {
            o.str("next_cursor", &encode_cursor(&last.topic));
        }
    }
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let p =
            parse_config("t", &serde_json::json!({"durable": true, "lease_ms": 5})).expect("ok");
        assert_eq!(p.durable, Some(true));
        assert_eq!(p.lease_ms, Some(100));
        assert!(parse_config("t", &serde_json::json!({"ttl_ms": -1})).is_err());
        assert!(parse_config("t", &serde_json::json!({"type": "stream"})).is_err());
        assert!(parse_config("t", &serde_json::json!({"dead_letter": "t"})).is_err());
        assert!(parse_config("t", &serde_json::json!([1])).is_err());
    }
}
