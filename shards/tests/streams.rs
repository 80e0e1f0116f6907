//! Durable Streams state in the engine: producer state, `Stream-Seq`, the closed flag and
//! fork references come back after a restart, from WAL replay alone and from a snapshot.
//! Each "run" is its own executor, so nothing survives between runs but the files.

use glommio::{LocalExecutorBuilder, Placement};
use shards::mesh::AppendCmd;
use shards::stream::{meta, StreamAppend, StreamCmd, StreamError, StreamReply};
use shards::{Command, NewRecord, ReplayProgress, Reply, Shard, ShardError, ShardOptions};
use shards::{Durability, TopicConfig};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shards-ds-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn run<T: Send + 'static>(dir: &Path, f: impl AsyncFnOnce(Rc<Shard>) -> T + Send + 'static) -> T {
    let o = ShardOptions {
        id: 0,
        dir: dir.to_path_buf(),
        sync_interval: Duration::from_millis(2),
        wal_file_size: 4 << 20,
        auto_create: true,
        hot_tail_bytes: 64 << 20,
        checkpoint_interval: Duration::from_secs(3600),
        topic_gauge: Default::default(),
        all_topic_gauges: Vec::new(),
        max_topics: 0,
        max_routers: 0,
        all_bytes_gauges: Vec::new(),
        max_retained_bytes: 0,
        max_queue: 0,
        session_gauge: Default::default(),
    };
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let shard = Shard::open(o, &ReplayProgress::default())
                .await
                .expect("open");
            f(shard).await
        })
        .expect("executor")
        .join()
        .expect("join")
}

async fn create(shard: &Rc<Shard>, topic: &str) {
    let mut config = TopicConfig::defaults(false);
    config.durability = Durability::Fsync;
    let cmd = Command::Stream(StreamCmd::Create {
        topic: topic.into(),
        config,
        meta: meta("text/plain"),
        closed: false,
        records: Vec::new(),
    });
    match shard.execute(cmd).await {
        Reply::Stream(StreamReply::Info(i)) => assert!(i.created),
        other => panic!("create: {other:?}"),
    }
}

/// Appends `data` as producer `(id, epoch, seq)`; the outcome as (duplicate, producer seq,
/// head), or the refusal.
async fn append(
    shard: &Rc<Shard>,
    topic: &str,
    data: &str,
    producer: Option<(&str, u64, u64)>,
    stream_seq: Option<&str>,
    close: bool,
) -> Result<(bool, Option<u64>, u64), ShardError> {
    let cmd = Command::Append(AppendCmd {
        topic: topic.into(),
        records: vec![NewRecord {
            node: None,
            tag: None,
            data: Arc::from(data.as_bytes()),
            meta: None,
            hops: 0,
        }],
        idempotency_key: None,
        create: Some(false),
        config: None,
        router_mark: None,
        disable_backpressure: false,
        stream: Some(StreamAppend {
            content_type: Some("text/plain".into()),
            producer: producer.map(|(i, e, s)| (i.to_string(), e, s)),
            stream_seq: stream_seq.map(str::to_string),
            close,
        }),
    });
    match shard.execute(cmd).await {
        Reply::Appended(a) => {
            let ack = a.stream.expect("a stream ack");
            Ok((ack.duplicate, ack.producer_seq, a.head_seq))
        }
        Reply::Err(e) => Err(e),
        other => panic!("append: {other:?}"),
    }
}

async fn head(shard: &Rc<Shard>, topic: &str) -> shards::stream::StreamInfo {
    let cmd = Command::Stream(StreamCmd::Head {
        topic: topic.into(),
        touch: false,
        internal: false,
    });
    match shard.execute(cmd).await {
        Reply::Stream(StreamReply::Info(i)) => i,
        other => panic!("head: {other:?}"),
    }
}

/// Writes the state the checks below expect.
async fn write_state(shard: Rc<Shard>) {
    create(&shard, "/p").await;
    assert_eq!(
        append(&shard, "/p", "a", Some(("w", 0, 0)), None, false).await,
        Ok((false, Some(0), 1))
    );
    assert_eq!(
        append(&shard, "/p", "b", Some(("w", 0, 1)), Some("0002"), false).await,
        Ok((false, Some(1), 2))
    );
    create(&shard, "/c").await;
    assert_eq!(
        append(&shard, "/c", "last", Some(("z", 3, 0)), None, true).await,
        Ok((false, Some(0), 1))
    );
}

async fn check_state(shard: Rc<Shard>) {
    // A retry of the last acknowledged append is a duplicate, not new data.
    assert_eq!(
        append(&shard, "/p", "b", Some(("w", 0, 1)), None, false).await,
        Ok((true, Some(1), 2))
    );
    assert_eq!(
        append(&shard, "/p", "x", Some(("w", 0, 3)), None, false).await,
        Err(ShardError::Stream(StreamError::ProducerGap {
            expected: 2,
            received: 3
        }))
    );
    assert_eq!(
        append(&shard, "/p", "x", None, Some("0001"), false).await,
        Err(ShardError::Stream(StreamError::SeqRegression))
    );
    assert_eq!(
        append(&shard, "/p", "c", Some(("w", 0, 2)), Some("0003"), false).await,
        Ok((false, Some(2), 3))
    );
    // The closed stream stays closed, and its closing producer's retry is still a duplicate.
    let c = head(&shard, "/c").await;
    assert!(c.closed);
    assert_eq!(c.closed_by, Some(("z".to_string(), 3, 0)));
    assert_eq!(
        append(&shard, "/c", "last", Some(("z", 3, 0)), None, true).await,
        Ok((true, Some(0), 1))
    );
    assert_eq!(
        append(&shard, "/c", "more", None, None, false).await,
        Err(ShardError::Stream(StreamError::Closed { next: 1 }))
    );
    assert_eq!(
        append(&shard, "/c", "more", Some(("z", 2, 0)), None, false).await,
        Err(ShardError::Stream(StreamError::StaleEpoch { epoch: 3 }))
    );
}

#[test]
fn stream_state_comes_back_from_the_wal() {
    let dir = temp_dir("wal");
    run(&dir, write_state);
    run(&dir, check_state);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stream_state_comes_back_from_a_snapshot() {
    let dir = temp_dir("snap");
    run(&dir, async |shard: Rc<Shard>| {
        write_state(shard.clone()).await;
        shard.checkpoint().await.expect("checkpoint");
    });
    // Twice: the second run starts from the snapshot its predecessor wrote at shutdown too.
    run(&dir, check_state);
    run(&dir, async |shard: Rc<Shard>| {
        let p = head(&shard, "/p").await;
        assert_eq!(p.head, 3);
        assert!(!p.closed);
    });
    let _ = std::fs::remove_dir_all(&dir);
}
