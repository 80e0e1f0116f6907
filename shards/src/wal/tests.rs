//! Unit tests of WAL framing, rotation, recovery and the disk-full handling.

use super::*;

#[test]
fn frame_round_trip_and_corruption() {
    let mut buf = Vec::new();
    encode_frame(&mut buf, 3, 42, 9, b"hello");
    let (h, body) = decode_frame(&buf).expect("valid frame");
    assert_eq!(
        h,
        FrameHead {
            len: HEADER + 5,
            epoch: 3,
            lsn: 42,
            kind: 9
        }
    );
    assert_eq!(body, b"hello");
    for i in 0..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x40;
        assert!(decode_frame(&bad).is_none_or(|(h2, _)| h2 != h), "byte {i}");
    }
    for cut in 0..buf.len() {
        assert!(decode_frame(&buf[..cut]).is_none());
    }
    assert!(decode_frame(&[0u8; 64]).is_none());
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wal-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Runs a future made by `make` on its own executor (the WAL's tasks die with it).
fn on_executor<T, F>(make: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            // Keep a timer armed: an executor parked with only a WAL write in flight can
            // miss that write's completion for a long time (seen with glommio 0.9 when
            // nothing else is running; the server always has timers armed).
            glommio::spawn_local(async {
                loop {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            })
            .detach();
            // A watchdog: a stuck test fails instead of hanging.
            futures_lite::future::or(make(), async {
                glommio::timer::sleep(Duration::from_secs(30)).await;
                panic!("test timed out");
            })
            .await
        })
        .expect("executor")
        .join()
        .expect("join")
}

const SMALL: u64 = 64 << 10;

fn body(i: u64) -> Vec<u8> {
    format!("frame-{i:06}-").repeat(60).into_bytes()
}

/// Replays `dir` and returns the bodies of kind 7 frames in order.
fn replay(dir: PathBuf) -> Vec<Vec<u8>> {
    on_executor(move || async move {
        let mut got = Vec::new();
        let (_wal, _) = open(
            &dir,
            SMALL,
            Duration::ZERO,
            &ReplayProgress::default(),
            |k, _, b| {
                if k == 7 {
                    got.push(b.to_vec())
                }
            },
        )
        .await
        .expect("reopen");
        got
    })
}

/// Waits for `lsn` to be durable; fails with the log's state after 5 s.
async fn durable(wal: &Rc<Wal>, lsn: u64) {
    futures_lite::future::or(
        async { wal.wait_durable(lsn).await.expect("durable") },
        async {
            glommio::timer::sleep(Duration::from_secs(5)).await;
            let st = wal.state.borrow();
            panic!(
                "lsn {lsn} not durable: durable {} next_failed {:?} no_space {:?} \
                 file {} pos {} queued {}",
                wal.durable_lsn(),
                wal.next_failed.borrow(),
                st.no_space,
                st.file_idx,
                st.file_pos,
                st.chunks.len()
            );
        },
    )
    .await
}

async fn wait_until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// The next file cannot be made: frames that would need it are refused before anything
/// is queued, and accepted again once space returns.
#[test]
fn next_file_without_space_refuses_then_recovers() {
    let dir = temp_dir("refuse");
    let d = dir.clone();
    let accepted = on_executor(move || {
        async move {
            let (wal, _) = open(
                &d,
                SMALL,
                Duration::ZERO,
                &ReplayProgress::default(),
                |_, _, _| {},
            )
            .await
            .expect("open");
            fault::set_no_space(true);
            let mut i = 0u64;
            let refused = loop {
                match wal.try_append(7, &body(i), true) {
                    Ok(lsn) => {
                        durable(&wal, lsn).await;
                        i += 1;
                    }
                    Err(e) => break e,
                }
                assert!(i < 1000, "never refused");
            };
            assert!(is_no_space(&refused), "{refused}");
            assert!(wal.room_for(body(i).len()).is_err());
            let before = wal.last_lsn();
            assert!(wal.try_append(7, &body(i), true).is_err());
            assert_eq!(wal.last_lsn(), before, "a refused frame is not queued");
            fault::set_no_space(false);
            wait_until("space noticed", || wal.room_for(body(i).len()).is_ok()).await;
            // Well past the rotation.
            for _ in 0..200 {
                let lsn = wal.try_append(7, &body(i), true).expect("room again");
                durable(&wal, lsn).await;
                i += 1;
            }
            i
        }
    });
    let got = replay(dir.clone());
    assert_eq!(got.len() as u64, accepted);
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, body(i as u64));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A write fails for lack of space with frames already queued (acknowledged `disk`
/// writes): they stay queued, in order, and are written once space returns.
#[test]
fn stalled_frames_are_kept_and_written_when_space_returns() {
    let dir = temp_dir("stall");
    let d = dir.clone();
    let n = on_executor(move || {
        async move {
            let (wal, _) = open(
                &d,
                SMALL,
                Duration::ZERO,
                &ReplayProgress::default(),
                |_, _, _| {},
            )
            .await
            .expect("open");
            fault::set_no_space(true);
            // Unchecked appends run past the end of the file, which needs the next one.
            let n = 200u64;
            let mut last = 0;
            for i in 0..n {
                last = wal.append(7, &body(i), false);
                if i % 10 == 0 {
                    glommio::yield_if_needed().await;
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            }
            wal.hurry();
            wait_until("stall noticed", || wal.no_space().is_some()).await;
            assert!(wal.durable_lsn() < last);
            // Waiters keep waiting, unless told to give up.
            let gave_up = wal.wait_durable_while(last, || false).await;
            assert!(gave_up.is_err_and(|e| e.is_no_space()));
            assert!(wal.failed().is_none());
            glommio::timer::sleep(Duration::from_millis(600)).await;
            assert!(wal.durable_lsn() < last, "nothing written without space");
            fault::set_no_space(false);
            wal.wait_durable(last)
                .await
                .expect("written once space is back");
            assert!(wal.no_space().is_none());
            // And the log goes on.
            let lsn = wal.append(7, &body(n), true);
            wal.wait_durable(lsn).await.expect("durable");
            n + 1
        }
    });
    let got = replay(dir.clone());
    assert_eq!(got.len() as u64, n);
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, body(i as u64), "frame {i}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
