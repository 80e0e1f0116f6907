//! Routers: `PUT/GET/DELETE /v0/routers/:router` and `GET /v0/routers`.
//!
//! A router lives on its source topic's shard; changes go through shard 0, which validates
//! them against every router (cycles, fan-in) before installing. Reads fan out to all shards.

use super::auth::Principal;
use super::json::Obj;
use super::records::parse_match;
use super::{
    check_topic_name, encode_cursor, json_body, json_response, page, parse, unexpected, Api,
    ApiError, ApiResult, Perf,
};
use crate::http::Request;
use serde_json::{Map, Value};
use shards::mesh::{RouterConfig, RouterFilter, RouterInfo};
use shards::{Command, Reply, TagMatch};
use std::time::Instant;

/// Topic-name characters plus `>` (`orders->audit`).
pub fn check_router_name(name: &str) -> Result<(), ApiError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-' | b'>'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid router name {name:?}: 1-255 bytes of [A-Za-z0-9._:->], starting with a letter or digit"
        )))
    }
}

fn flag(m: &Map<String, Value>, k: &str, default: bool) -> Result<bool, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(format!("{k} must be true or false"))),
    }
}

fn topic_field(m: &Map<String, Value>, k: &str) -> Result<String, ApiError> {
    match m.get(k) {
        Some(Value::String(s)) => {
            check_topic_name(s)?;
            Ok(s.clone())
        }
        None | Some(Value::Null) => Err(ApiError::invalid(format!("{k} is required"))),
        Some(_) => Err(ApiError::invalid(format!("{k} must be a topic name"))),
    }
}

pub(super) fn parse_router(v: &Value) -> Result<RouterConfig, ApiError> {
    let m = v
        .as_object()
        .ok_or_else(|| ApiError::invalid("the router config must be a JSON object"))?;
    let source = topic_field(m, "source")?;
    let dest = topic_field(m, "dest")?;
    if source == dest {
        return Err(ApiError::invalid("a router's source and dest must differ"));
    }
    let exactly_once = match m.get("guarantee") {
        None | Some(Value::Null) => false,
        Some(Value::String(g)) if g == "at_least_once" => false,
        Some(Value::String(g)) if g == "exactly_once" => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "guarantee must be \"at_least_once\" or \"exactly_once\"",
            ))
        }
    };
    let filter = match m.get("filter") {
        None | Some(Value::Null) => None,
        Some(f) => Some(parse_match(f)?),
    };
    Ok(RouterConfig {
        source,
        dest,
        preserve_node: flag(m, "preserve_node", true)?,
        preserve_tag: flag(m, "preserve_tag", true)?,
        create_dest: flag(m, "create_dest", true)?,
        filter,
        allow_cycle: flag(m, "allow_cycle", false)?,
        exactly_once,
    })
}

fn guarantee(c: &RouterConfig) -> &'static str {
    if c.exactly_once {
        "exactly_once"
    } else {
        "at_least_once"
    }
}

fn write_router(o: &mut Obj<'_>, r: &RouterInfo) {
    let c = &r.config;
    o.str("router", &r.name)
        .str("source", &c.source)
        .str("dest", &c.dest)
        .bool("preserve_node", c.preserve_node)
        .bool("preserve_tag", c.preserve_tag)
        .bool("create_dest", c.create_dest);
    match &c.filter {
        None => o.null("filter"),
        Some(TagMatch::Eq(x)) => o.value("filter", &serde_json::json!(["tag", "Eq", x])),
        Some(TagMatch::Prefix(p)) => o.value(
            "filter",
            &serde_json::json!(["tag", "Glob", format!("{p}*")]),
        ),
    };
    o.bool("allow_cycle", c.allow_cycle)
        .str("guarantee", guarantee(c));
}

/// Every shard's routers matching `f`, merged in name order.
async fn gather(api: &Api, f: RouterFilter) -> Result<Vec<RouterInfo>, ApiError> {
    let mut all = Vec::new();
    for s in 0..api.node.shards() {
        match api.node.call(s, Command::ListRouters(f.clone())).await {
            Reply::Routers(v) => all.extend(v),
            Reply::Err(e) => return Err(ApiError::from_shard(e, "")),
            _ => return Err(unexpected()),
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

pub async fn put(api: &Api, name: String, req: &Request, start: Instant) -> ApiResult {
    let body: Value = parse(json_body(req)?)?;
    let config = parse_router(&body)?;
    let source = config.source.clone();
    let reply = api.node.call(0, Command::PutRouter { name, config }).await;
    let (created, info) = match reply {
        Reply::Router { created, info } => (created, info),
        Reply::Err(e) => return Err(ApiError::from_shard(e, &source)),
        _ => return Err(unexpected()),
    };
    let mut body = Vec::with_capacity(384);
    let mut o = Obj::new(&mut body);
    o.bool("created", created);
    write_router(&mut o, &info);
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(if created { 201 } else { 200 }, body))
}

/// The router `name`, if it exists and `who` may see both its topics.
async fn find(api: &Api, name: &str, who: &Principal) -> Result<Option<RouterInfo>, ApiError> {
    let f = RouterFilter {
        name: Some(name.to_string()),
        limit: 1,
        ..Default::default()
    };
    Ok(gather(api, f)
        .await?
        .into_iter()
        .next()
        .filter(|r| who.may_see(&r.config.source) && who.may_see(&r.config.dest)))
}

pub async fn get(api: &Api, name: String, start: Instant, who: &Principal) -> ApiResult {
    let Some(info) = find(api, &name, who).await? else {
        return Err(ApiError::router_not_found(&name));
    };
    let mut body = Vec::with_capacity(384);
    let mut o = Obj::new(&mut body);
    write_router(&mut o, &info);
    o.u64("forwarded_total", info.forwarded_total);
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

pub async fn delete(api: &Api, name: String, start: Instant, who: &Principal) -> ApiResult {
    if who.restricted() && find(api, &name, who).await?.is_none() {
        // Unknown, or naming topics outside the key's prefixes: nothing it may delete.
        return Err(ApiError::new(
            403,
            "forbidden",
            format!("this key may not delete router {name:?}"),
        ));
    }
    let mut deleted = false;
    for s in 0..api.node.shards() {
        let cmd = Command::DeleteRouter { name: name.clone() };
        match api.node.call(s, cmd).await {
            Reply::RouterDeleted { deleted: d } => deleted |= d,
            Reply::Err(e) => return Err(ApiError::from_shard(e, "")),
            _ => return Err(unexpected()),
        }
    }
    let mut body = Vec::with_capacity(96);
    let mut o = Obj::new(&mut body);
    o.str("router", &name).bool("deleted", deleted);
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

pub async fn list(api: &Api, req: &Request, start: Instant, who: &Principal) -> ApiResult {
    let (page_size, after) = page(req)?;
    let f = RouterFilter {
        name: None,
        prefix: req.query_param("prefix").unwrap_or_default(),
        source: req.query_param("source"),
        dest: req.query_param("dest"),
        after,
        // With a prefix allowlist, filter everything (routers are capped at 10,000) first.
        limit: if who.restricted() {
            usize::MAX
        } else {
            page_size + 1
        },
    };
    let mut all = gather(api, f).await?;
    all.retain(|r| who.may_see(&r.config.source) && who.may_see(&r.config.dest));
    let more = all.len() > page_size;
    all.truncate(page_size);
    let mut body = Vec::with_capacity(64 + all.len() * 128);
    let mut o = Obj::new(&mut body);
    {
        let out = o.key("routers");
        out.push(b'[');
        for (i, r) in all.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut j = Obj::new(out);
            j.str("router", &r.name)
                .str("source", &r.config.source)
                .str("dest", &r.config.dest)
                .str("guarantee", guarantee(&r.config))
                .u64("forwarded_total", r.forwarded_total);
            j.end();
        }
        out.push(b']');
    }
    if more {
        if let Some(last) = all.last() {
            o.str("next_cursor", &encode_cursor(&last.name));
        }
    }
    Perf::default().write(&mut o, start);
    o.end();
    Ok(json_response(200, body))
}

/// Removes every router naming `topic` (before the topic itself is deleted).
pub async fn remove_for_topic(api: &Api, topic: &str) -> Result<Vec<String>, ApiError> {
    let mut removed = Vec::new();
    for s in 0..api.node.shards() {
        let cmd = Command::RemoveRoutersFor {
            topic: topic.to_string(),
        };
        match api.node.call(s, cmd).await {
            Reply::RoutersRemoved(v) => removed.extend(v),
            Reply::Err(e) => return Err(ApiError::from_shard(e, topic)),
            _ => return Err(unexpected()),
        }
    }
    removed.sort();
    Ok(removed)
}
