use super::*;

fn state() -> StreamState {
    StreamState {
        meta: meta("text/plain"),
        ..Default::default()
    }
}

fn producer(id: &str, epoch: u64, seq: u64) -> StreamAppend {
    StreamAppend {
        content_type: Some("text/plain".into()),
        producer: Some((id.into(), epoch, seq)),
        ..Default::default()
    }
}

#[test]
fn producer_rules() {
    let mut s = state();
    assert_eq!(admit(&s, &producer("p", 0, 0), true, 0).ok(), Some(None));
    assert_eq!(
        admit(&s, &producer("p", 0, 1), true, 0),
        Err(StreamError::ProducerGap {
            expected: 0,
            received: 1
        })
    );
    s.apply_stamp(&StreamStamp {
        producer: Some(("p".into(), 0, 0)),
        ..Default::default()
    });
    let dup = admit(&s, &producer("p", 0, 0), true, 1).unwrap().unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.producer_seq, Some(0));
    assert_eq!(admit(&s, &producer("p", 0, 1), true, 1).ok(), Some(None));
    assert_eq!(
        admit(&s, &producer("p", 0, 3), true, 1),
        Err(StreamError::ProducerGap {
            expected: 1,
            received: 3
        })
    );
    assert_eq!(
        admit(&s, &producer("p", 1, 2), true, 1),
        Err(StreamError::EpochNeedsSeqZero)
    );
    s.apply_stamp(&StreamStamp {
        producer: Some(("p".into(), 2, 0)),
        ..Default::default()
    });
    assert_eq!(
        admit(&s, &producer("p", 1, 0), true, 1),
        Err(StreamError::StaleEpoch { epoch: 2 })
    );
}

#[test]
fn closed_and_seq_rules() {
    let mut s = state();
    let seq = |v: &str| StreamAppend {
        stream_seq: Some(v.into()),
        ..Default::default()
    };
    s.apply_stamp(&StreamStamp {
        stream_seq: Some("09".into()),
        ..Default::default()
    });
    assert_eq!(admit(&s, &seq("10"), true, 0).ok(), Some(None));
    assert_eq!(
        admit(&s, &seq("09"), true, 0),
        Err(StreamError::SeqRegression)
    );
    let wrong = StreamAppend {
        content_type: Some("Application/JSON".into()),
        ..Default::default()
    };
    assert_eq!(
        admit(&s, &wrong, true, 0),
        Err(StreamError::ContentTypeMismatch)
    );
    // Without data the content type is not checked.
    assert_eq!(admit(&s, &wrong, false, 0).ok(), Some(None));
    s.apply_stamp(&StreamStamp {
        close: true,
        ..Default::default()
    });
    assert_eq!(
        admit(&s, &StreamAppend::default(), true, 7),
        Err(StreamError::Closed { next: 7 })
    );
    let close = StreamAppend {
        close: true,
        ..Default::default()
    };
    assert!(admit(&s, &close, false, 7).unwrap().unwrap().closed);
}

#[test]
fn state_round_trip() {
    let mut s = state();
    s.meta.ttl_secs = Some(0);
    s.meta.expires_at = Some("2030-01-01T00:00:00Z".into());
    s.meta.expires_at_ms = Some(1_893_456_000_000);
    s.meta.fork_source = Some("/a/b".into());
    s.meta.fork_base = 5;
    s.meta.fork_sub = 2;
    s.created_ms = 42;
    s.closed = true;
    s.closed_by = Some(("p".into(), 1, 2));
    s.forks = 3;
    s.soft_deleted = true;
    s.last_stream_seq = Some("x".into());
    s.producers.insert("p".into(), (1, 2));
    let mut buf = Vec::new();
    s.encode(&mut Enc(&mut buf));
    let back = StreamState::decode(&mut Dec::new(&buf)).unwrap();
    assert_eq!(back.meta, s.meta);
    assert_eq!(back.created_ms, 42);
    assert!(back.closed && back.soft_deleted);
    assert_eq!(back.forks, 3);
    assert_eq!(back.closed_by, s.closed_by);
    assert_eq!(back.last_stream_seq, s.last_stream_seq);
    assert_eq!(back.producers, s.producers);
}
