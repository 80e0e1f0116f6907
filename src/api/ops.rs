//! Health and readiness.

use super::json::Obj;
use super::{json_response, ApiError, ApiResult};
use crate::http::Response;
use crate::runtime::Node;
use std::sync::atomic::Ordering;

pub fn health(node: &Node) -> Response {
    let mut body = Vec::with_capacity(96);
    let mut o = Obj::new(&mut body);
    o.str("status", "ok")
        .str("version", env!("CARGO_PKG_VERSION"))
        .u64(
            "uptime_ms",
            node.global.started.elapsed().as_millis() as u64,
        );
    o.end();
    json_response(200, body)
}

pub async fn ready(node: &Node) -> ApiResult {
    let g = &node.global;
    if g.draining() || !g.ready() {
        let e = if g.draining() {
            ApiError::shutting_down()
        } else {
            ApiError::not_ready(g.replay_progress())
        };
        let mut r = e.into_response(std::time::Instant::now());
        // Health and ready are exempt from the performance block; keep the error body only.
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
            if let Some(m) = v.as_object_mut() {
                m.remove("performance");
            }
            r.body = serde_json::to_vec(&v).unwrap_or_default();
        }
        return Ok(r);
    }
    let topics: usize = g.topics.iter().map(|t| t.load(Ordering::Relaxed)).sum();
    let mut body = Vec::with_capacity(96);
    let mut o = Obj::new(&mut body);
    o.str("status", "ready")
        .bool("wal_replay_complete", true)
        .u64("topics", topics as u64);
    o.end();
    Ok(json_response(200, body))
}
