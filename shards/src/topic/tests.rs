//! Unit tests of the topic state machine.

use super::*;

fn rec(tag: Option<&str>, node: Option<&str>) -> NewRecord {
    NewRecord {
        node: node.map(Arc::from),
        tag: tag.map(Arc::from),
        data: Arc::from(&b"1"[..]),
        meta: None,
        hops: 0,
    }
}

fn topic() -> Topic {
    let store = Store::new(std::path::Path::new("/nonexistent"));
    Topic::new(TopicConfig::defaults(true), 0, store, 1)
}

fn seqs(r: &ReadResult) -> Vec<u64> {
    r.records.iter().map(|r| r.seq).collect()
}

#[test]
fn append_read_and_cursor_advance_over_skips() {
    let mut t = topic();
    t.apply_append(
        1,
        10,
        None,
        vec![
            rec(Some("a"), None),
            rec(None, Some("n1")),
            rec(Some("b"), None),
        ],
    );
    t.visible_seq = t.head_seq;
    let r = t.read(0, 10, &["n1".to_string()]);
    assert_eq!(seqs(&r), vec![1, 3]);
    assert_eq!(r.next_from_seq, 3);
    let r = t.read(0, 1, &[]);
    assert_eq!((seqs(&r), r.next_from_seq), (vec![1], 1));
    assert_eq!(
        t.delete_records(None, Some(&TagMatch::Eq("a".into())), 3),
        1
    );
    assert_eq!(t.earliest_seq(), 2);
    let r = t.read(0, 10, &["n1".to_string()]);
    assert_eq!((seqs(&r), r.next_from_seq), (vec![3], 3));
    assert_eq!(t.delete_records(Some(4), None, 3), 2);
    assert_eq!(t.earliest_seq(), 4);
    let r = t.read(0, 10, &[]);
    assert_eq!((seqs(&r), r.next_from_seq), (vec![], 3));
}

#[test]
fn fsync_records_hidden_until_visible() {
    let mut t = topic();
    t.apply_append(1, 10, None, vec![rec(None, None), rec(None, None)]);
    assert_eq!(t.read(0, 10, &[]).records.len(), 0);
    t.visible_seq = 2;
    assert_eq!(t.read(0, 10, &[]).records.len(), 2);
}

#[test]
fn caps_evict_oldest_and_set_floor() {
    let mut t = topic();
    t.config.cap_records = 2;
    for s in 1..=5 {
        t.apply_append(s, 10, None, vec![rec(None, None)]);
    }
    t.visible_seq = t.head_seq;
    assert_eq!(t.count, 2);
    assert_eq!(t.earliest_seq(), 4);
    assert_eq!(t.evict_floor, 4);
    assert_eq!(t.evict_reason, Some(LossReason::Cap));
    assert_eq!(seqs(&t.read(0, 10, &[])), vec![4, 5]);
    t.config.discard = Discard::Reject;
    assert!(t.would_reject(1, 1));
}

#[test]
fn ttl_expires_from_the_front_and_mixes_with_caps() {
    let mut t = topic();
    t.config.ttl_ms = 100;
    t.config.cap_records = 3;
    for s in 1..=5 {
        t.apply_append(s, 1000 + s, None, vec![rec(None, None)]);
    }
    t.visible_seq = t.head_seq;
    assert_eq!(t.evict_reason, Some(LossReason::Cap));
    assert!(!t.expire(1100));
    assert!(t.expire(1105));
    assert_eq!(t.earliest_seq(), 5);
    assert_eq!(t.evict_floor, 5);
    assert_eq!(t.evict_reason, Some(LossReason::Mixed));
}

#[test]
fn reservations_wait_only_when_not_yet_durable() {
    let mut r = Reservation::default();
    r.pending.push_back((10, 1024));
    assert_eq!(r.wait_for(1, 9), Some(10));
    assert_eq!(r.window, 2048);
    assert_eq!(r.wait_for(5, 10), None);
    assert_eq!(r.durable, 1024);
    r.pending.push_back((20, 3000));
    assert_eq!(r.wait_for(1000, 12), None);
    assert_eq!(r.wait_for(2000, 12), Some(20));
}

#[test]
fn glob_and_eq_matching() {
    let p = TagMatch::Prefix("order-".into());
    assert!(p.matches(Some("order-1")));
    assert!(!p.matches(Some("orde")));
    assert!(!p.matches(None));
    assert!(TagMatch::Eq("x".into()).matches(Some("x")));
    assert!(!TagMatch::Eq("x".into()).matches(Some("xy")));
}

#[test]
fn idempotency_window() {
    let mut t = topic();
    t.apply_append(1, 1000, Some("k"), vec![rec(None, None)]);
    assert_eq!(t.idem_lookup("k", 2000).map(|e| e.first_seq), Some(1));
    assert!(t.idem_lookup("k", 1000 + 120_001).is_none());
}
