//! The data plane: append (`POST /v0/topics/:topic`), diff and record deletes.

use super::json::Obj;
use super::topics::parse_config;
use super::{
    json_body, json_response, parse, query_bool, unexpected, Api, ApiError, ApiResult, Perf,
};
use crate::http::Request;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use shards::mesh::{AppendCmd, DiffCmd};
use shards::{Command, NewRecord, Reply, TagMatch};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

pub const MAX_BATCH: usize = 10_000;
pub const MAX_RECORD_BYTES: usize = 1 << 20;
pub const MAX_META_BYTES: usize = 16 << 10;
pub const MAX_META_KEYS: usize = 64;
pub const MAX_TAG_BYTES: usize = 256;
pub const MAX_NODE_BYTES: usize = 128;
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// One record of an append. Deserialised by hand so that only a JSON object is accepted
/// (a derived struct would also take an array of its fields).
#[derive(Default)]
pub(super) struct RecordIn<'a> {
    data: Option<&'a RawValue>,
    meta: Option<&'a RawValue>,
    tag: Option<Cow<'a, str>>,
    node: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RecordIn<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = RecordIn<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record object like {\"data\": ...}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut r = RecordIn::default();
                while let Some(k) = m.next_key::<Cow<'_, str>>()? {
                    match &*k {
                        "data" => r.data = Some(m.next_value()?),
                        "meta" => r.meta = m.next_value::<Option<&'a RawValue>>()?,
                        "tag" => r.tag = m.next_value()?,
                        "node" => r.node = m.next_value()?,
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
pub(super) struct AppendBody<'a> {
    #[serde(borrow)]
    records: Option<Vec<RecordIn<'a>>>,
    #[serde(borrow, default)]
    node: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    create: Option<bool>,
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    disable_backpressure: Option<bool>,
}

fn too_large(index: usize, what: &str, limit: usize, got: usize) -> ApiError {
    ApiError::new(
        400,
        "record_too_large",
        format!("record {index}: {what} is {got} bytes, over the limit of {limit}"),
    )
    .detail(json!({ "index": index, "field": what, "limit": limit, "size": got }))
}

fn check_meta(index: usize, meta: &RawValue) -> Result<(), ApiError> {
    let raw = meta.get();
    if raw.len() > MAX_META_BYTES {
        return Err(too_large(index, "meta", MAX_META_BYTES, raw.len()));
    }
    let keys: BTreeMap<Cow<'_, str>, serde::de::IgnoredAny> = serde_json::from_str(raw)
        .map_err(|_| ApiError::invalid(format!("record {index}: meta must be a JSON object")))?;
    if keys.len() > MAX_META_KEYS {
        return Err(ApiError::new(
            400,
            "record_too_large",
            format!(
                "record {index}: meta has {} keys, over the limit of {MAX_META_KEYS}",
                keys.len()
            ),
        )
        .detail(
            json!({ "index": index, "field": "meta", "limit": MAX_META_KEYS, "keys": keys.len() }),
        ));
    }
    Ok(())
}

pub(super) fn to_record(
    index: usize,
    r: RecordIn<'_>,
    batch_node: Option<&str>,
) -> Result<NewRecord, ApiError> {
    let data = r.data.map(RawValue::get).unwrap_or("null").as_bytes();
    let meta = r.meta.map(|m| m.get().as_bytes());
    let size = data.len() + meta.map_or(0, <[u8]>::len);
    if size > MAX_RECORD_BYTES {
        return Err(too_large(index, "data+meta", MAX_RECORD_BYTES, size));
    }
    if let Some(m) = r.meta {
        check_meta(index, m)?;
    }
    if let Some(t) = &r.tag {
        if t.len() > MAX_TAG_BYTES {
            return Err(too_large(index, "tag", MAX_TAG_BYTES, t.len()));
        }
    }
    let node = r.node.as_deref().or(batch_node);
    if let Some(n) = node {
        if n.len() > MAX_NODE_BYTES {
            return Err(too_large(index, "node", MAX_NODE_BYTES, n.len()));
        }
    }
    Ok(NewRecord {
        node: node.map(Arc::from),
        tag: r.tag.as_deref().map(Arc::from),
        data: Arc::from(data),
        meta: meta.map(Arc::from),
        hops: 0,
    })
}

pub async fn append(api: &Api, topic: String, req: &Request, start: Instant) -> ApiResult {
    let return_seqs = query_bool(req, "return_seqs", true)?;
    let body: AppendBody<'_> = parse(json_body(req)?)?;
    let records = body
        .records
        .ok_or_else(|| ApiError::invalid("records is required: an array of {\"data\": ...}"))?;
    if records.is_empty() {
        return Err(ApiError::invalid("records must not be empty"));
    }
    if records.len() > MAX_BATCH {
        return Err(ApiError::new(
            400,
            "batch_too_large",
            format!(
                "{} records in one write; the limit is {MAX_BATCH}",
                records.len()
            ),
        )
        .detail(json!({ "limit": MAX_BATCH, "count": records.len() })));
    }
    if let Some(n) = &body.node {
        if n.len() > MAX_NODE_BYTES {
            return Err(too_large(0, "node", MAX_NODE_BYTES, n.len()));
        }
    }
    let key = match body.idempotency_key {
        Some(k) => Some(k.into_owned()),
        None => req.header("idempotency-key").map(str::to_owned),
    };
    if let Some(k) = &key {
        if k.len() > MAX_IDEMPOTENCY_KEY || k.is_empty() {
            return Err(ApiError::invalid(format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY} bytes"
            )));
        }
    }
    let config = match &body.config {
        None | Some(Value::Null) => None,
        Some(c) => Some(parse_config(&topic, c)?),
    };
    let batch_node = body.node.as_deref();
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        out.push(to_record(i, r, batch_node)?);
    }
    let n = out.len() as u64;
    let cmd = Command::Append(AppendCmd {
        topic: topic.clone(),
        records: out,
        idempotency_key: key,
        create: body.create,
        config,
        router_mark: None,
        disable_backpressure: body.disable_backpressure.unwrap_or(false),
        stream: None,
    });
    let Reply::Appended(r) = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    let count = if r.deduped {
        r.last_seq + 1 - r.first_seq
    } else {
        n
    };
    let mut body = Vec::with_capacity(192 + if return_seqs { 8 * count as usize } else { 0 });
    let mut o = Obj::new(&mut body);
    o.str("topic", &topic)
        .u64("first_seq", r.first_seq)
        .u64("last_seq", r.last_seq);
    if return_seqs {
        o.u64_array("seqs", r.first_seq..=r.last_seq);
    }
    o.u64("head_seq", r.head_seq)
        .u64("count", count)
        .bool("created", r.created)
        .bool("deduped", r.deduped);
    Perf::from(r.timings).write(&mut o, start);
    o.end();
    Ok(json_response(if r.created { 201 } else { 200 }, body))
}

/// A JSON array of records as diff and watch return them: `$`-metadata, then the stored
/// `data` and `meta` bytes verbatim.
pub fn write_records(
    out: &mut Vec<u8>,
    records: &[shards::Record],
    include_tags: bool,
    include_meta: bool,
    include_data: bool,
) {
    out.push(b'[');
    for (i, rec) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut j = Obj::new(out);
        j.u64("$seq", rec.seq).u64("$ts", rec.ts);
        if let Some(n) = &rec.node {
            j.str("$node", n);
        }
        if include_tags {
            if let Some(t) = &rec.tag {
                j.str("$tag", t);
            }
        }
        if include_data {
            j.raw("data", &rec.data);
        }
        if include_meta {
            if let Some(m) = &rec.meta {
                j.raw("meta", m);
            }
        }
        j.end();
    }
    out.push(b']');
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum NodeSel {
    One(String),
    Many(Vec<String>),
}

impl NodeSel {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            NodeSel::One(n) => vec![n],
            NodeSel::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct DiffBody {
    #[serde(default)]
    from_seq: Option<u64>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    node: Option<NodeSel>,
    #[serde(default)]
    include_tags: Option<bool>,
    #[serde(default)]
    include_meta: Option<bool>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

pub async fn diff(api: &Api, topic: String, req: &Request, start: Instant) -> ApiResult {
    let body: DiffBody = parse(json_body(req)?)?;
    let limit = match body.limit.unwrap_or(0) {
        0 => 256,
        l => l.min(1000),
    } as usize;
    let nodes = body.node.map(NodeSel::into_vec).unwrap_or_default();
    let include_tags = body.include_tags.unwrap_or(true);
    let include_meta = body.include_meta.unwrap_or(true);
    let from_seq = body.from_seq.unwrap_or(0);
    let cmd = Command::Diff(DiffCmd {
        topic: topic.clone(),
        from_seq,
        limit,
        nodes,
        wait_ms: body.wait_ms.unwrap_or(0).min(30_000),
        durable_only: false,
    });
    let Reply::Diff(r) = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    let payload: usize = r
        .records
        .iter()
        .map(|x| 64 + x.data.len() + x.meta.as_ref().map_or(0, |m| m.len()))
        .sum();
    let mut body = Vec::with_capacity(256 + payload);
    let mut o = Obj::new(&mut body);
    o.str("topic", &topic);
    write_records(
        o.key("records"),
        &r.records,
        include_tags,
        include_meta,
        true,
    );
    o.u64("next_from_seq", r.next_from_seq)
        .u64("head_seq", r.head_seq)
        .u64("earliest_seq", r.earliest_seq)
        .bool("caught_up", r.next_from_seq >= r.head_seq);
    match &r.tombstone {
        None => {
            o.null("tombstone");
        }
        Some(t) => {
            let out = o.key("tombstone");
            let mut j = Obj::new(out);
            j.u64("gap_from", t.gap_from)
                .u64("gap_to", t.gap_to)
                .str("reason", t.reason)
                .u64("missed_estimate", t.missed_estimate)
                .u64("earliest_seq", r.earliest_seq)
                .u64("head_seq", r.head_seq);
            j.end();
        }
    }
    o.u64("lag", r.head_seq.saturating_sub(r.next_from_seq));
    Perf {
        records_scanned: Some(r.scanned),
        ..Perf::default()
    }
    .write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

#[derive(Deserialize)]
pub(super) struct DeleteBody {
    #[serde(default)]
    before_seq: Option<u64>,
    #[serde(default, rename = "match")]
    matcher: Option<Value>,
}

/// `["tag", "Eq", "x"]`, `["tag", "Glob", "prefix*"]` or a bare string (Eq).
pub fn parse_match(v: &Value) -> Result<TagMatch, ApiError> {
    let bad = || {
        ApiError::invalid(
            "match must be a tag string, [\"tag\", \"Eq\", \"x\"] or [\"tag\", \"Glob\", \"prefix*\"]",
        )
    };
    match v {
        Value::String(s) => Ok(TagMatch::Eq(s.clone())),
        Value::Array(a) if a.len() == 3 => {
            if a[0].as_str() != Some("tag") {
                return Err(bad());
            }
            let val = a[2].as_str().ok_or_else(bad)?;
            match a[1].as_str() {
                Some("Eq") => Ok(TagMatch::Eq(val.to_string())),
                Some("Glob") => {
                    let stars = val.matches('*').count();
                    if stars == 0 {
                        Ok(TagMatch::Eq(val.to_string()))
                    } else if stars == 1 && val.ends_with('*') {
                        Ok(TagMatch::Prefix(val[..val.len() - 1].to_string()))
                    } else {
                        Err(ApiError::invalid(
                            "a Glob pattern may only have one trailing '*'",
                        ))
                    }
                }
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

pub async fn delete(api: &Api, topic: String, req: &Request, start: Instant) -> ApiResult {
    let body: DeleteBody = parse(json_body(req)?)?;
    let matcher = match &body.matcher {
        None | Some(Value::Null) => None,
        Some(m) => Some(parse_match(m)?),
    };
    if body.before_seq.is_none() && matcher.is_none() {
        return Err(ApiError::invalid(
            "a delete needs before_seq, match, or both",
        ));
    }
    let cmd = Command::DeleteRecords {
        topic: topic.clone(),
        before_seq: body.before_seq,
        matcher,
    };
    let Reply::DeletedRecords(r) = api.ask(&topic, cmd).await? else {
        return Err(unexpected());
    };
    let mut body = Vec::with_capacity(256);
    let mut o = Obj::new(&mut body);
    o.str("topic", &topic)
        .u64("deleted", r.deleted)
        .u64("earliest_seq", r.earliest_seq)
        .u64("head_seq", r.head_seq)
        .u64("count", r.count)
        .u64("bytes", r.bytes);
    Perf::from(r.timings).write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_language() {
        assert_eq!(
            parse_match(&json!("x")).ok(),
            Some(TagMatch::Eq("x".into()))
        );
        assert_eq!(
            parse_match(&json!(["tag", "Glob", "ord*"])).ok(),
            Some(TagMatch::Prefix("ord".into()))
        );
        assert_eq!(
            parse_match(&json!(["tag", "Eq", "a*"])).ok(),
            Some(TagMatch::Eq("a*".into()))
        );
        assert!(parse_match(&json!(["tag", "Glob", "*a*"])).is_err());
        assert!(parse_match(&json!(["node", "Eq", "a"])).is_err());
        assert!(parse_match(&json!(["tag", "Regex", "a"])).is_err());
        assert!(parse_match(&json!(5)).is_err());
    }
}
