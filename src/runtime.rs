//! One pinned glommio executor per shard, the channel mesh between them, and the accept loop.
//!
//! Each executor binds the listening port with `SO_REUSEPORT` (glommio's `TcpListener` sets
//! it), so the kernel spreads connections across cores. A request for a topic owned by another
//! shard crosses to the owner as a [`Command`] over the mesh and its [`Reply`] comes back the
//! same way: one hop each way.

use crate::api::Api;
use crate::config::Config;
use crate::http::{serve_connection, Limits};
use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::net::TcpListener;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use shards::{Command, ReplayProgress, Reply, Shard, ShardError, ShardOptions};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// State shared by all executors (atomics only).
pub struct Global {
    pub shards: usize,
    pub ready_shards: AtomicUsize,
    pub topics: Vec<Arc<AtomicUsize>>,
    pub sessions: Vec<Arc<AtomicUsize>>,
    /// Retained payload bytes per shard (for `--max-retained-bytes`).
    pub bytes: Vec<Arc<AtomicU64>>,
    /// Open SSE streams, all executors.
    pub sse_connections: AtomicUsize,
    pub max_watch_sessions: usize,
    pub max_sse_connections: usize,
    pub progress: ReplayProgress,
    pub started: Instant,
    /// Set by SIGTERM/SIGINT: stop accepting, finish in-flight requests, sync, exit 0.
    pub shutting_down: AtomicBool,
    /// Executors that have finished their requests and streams during a drain.
    pub quiesced: AtomicUsize,
    /// API keys (empty: auth off).
    pub keys: crate::api::auth::Keys,
    pub probe_auth: bool,
    /// Durable Streams settings.
    pub ds: crate::api::streams::Settings,
}

impl Global {
    pub fn draining(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn ready(&self) -> bool {
        self.ready_shards.load(Ordering::Acquire) == self.shards
    }

    /// Fraction of the WAL replayed so far, 0.0–1.0.
    pub fn replay_progress(&self) -> f64 {
        let total = self.progress.total_bytes.load(Ordering::Relaxed);
        let done = self.progress.done_bytes.load(Ordering::Relaxed);
        if self.ready() {
            1.0
        } else if total == 0 {
            0.0
        } else {
            (done as f64 / total as f64).min(0.99)
        }
    }
}

pub enum Envelope {
    Request { from: usize, id: u64, cmd: Command },
    Response { id: u64, reply: Reply },
}

/// A single-use reply slot, completed by the mesh receiver task.
struct Slot {
    value: RefCell<Option<Reply>>,
    waker: RefCell<Option<Waker>>,
}

struct SlotFuture(Rc<Slot>);

impl Future for SlotFuture {
    type Output = Reply;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        if let Some(v) = self.0.value.borrow_mut().take() {
            return Poll::Ready(v);
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl shards::mesh::Remote for Node {
    fn call(&self, shard: usize, cmd: Command) -> Pin<Box<dyn Future<Output = Reply> + '_>> {
        Box::pin(Node::call(self, shard, cmd))
    }

    fn shards(&self) -> usize {
        self.global.shards
    }
}

/// One executor's view of the cluster of shards.
pub struct Node {
    pub id: usize,
    pub global: Arc<Global>,
    shard: RefCell<Option<Rc<Shard>>>,
    senders: Senders<Envelope>,
    pending: RefCell<HashMap<u64, Rc<Slot>>>,
    next_id: Cell<u64>,
    /// Requests being answered on this executor.
    pub in_flight: Cell<usize>,
    /// SSE streams open on this executor.
    pub streams: Cell<usize>,
    /// Notified once when this executor starts draining.
    pub shutdown: shards::event::Event,
}

impl Node {
    /// Completes when the server starts draining (at once if it already is).
    pub async fn draining(&self) {
        let l = self.shutdown.listen();
        if self.global.draining() {
            return;
        }
        l.await
    }
}

impl Node {
    pub fn shards(&self) -> usize {
        self.global.shards
    }

    pub fn local(&self) -> Option<Rc<Shard>> {
        self.shard.borrow().clone()
    }

    /// Runs `cmd` on shard `target`, locally or across the mesh.
    pub async fn call(&self, target: usize, cmd: Command) -> Reply {
        if target == self.id {
            return match self.local() {
                Some(s) => s.execute(cmd).await,
                None => Reply::Err(ShardError::NotReady),
            };
        }
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        let slot = Rc::new(Slot {
            value: RefCell::new(None),
            waker: RefCell::new(None),
        });
        self.pending.borrow_mut().insert(id, slot.clone());
        let msg = Envelope::Request {
            from: self.id,
            id,
            cmd,
        };
        if self.senders.send_to(target, msg).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return Reply::Err(ShardError::Storage(format!("shard {target} is gone")));
        }
        SlotFuture(slot).await
    }

    /// Runs a command on the shard that owns `topic`.
    pub async fn call_topic(&self, topic: &str, cmd: Command) -> Reply {
        let target = shards::shard_for(topic, self.shards());
        self.call(target, cmd).await
    }

    fn complete(&self, id: u64, reply: Reply) {
        if let Some(slot) = self.pending.borrow_mut().remove(&id) {
            *slot.value.borrow_mut() = Some(reply);
            if let Some(w) = slot.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

async fn receive_loop(node: Rc<Node>, rx: ConnectedReceiver<Envelope>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Envelope::Response { id, reply } => node.complete(id, reply),
            Envelope::Request { from, id, cmd } => {
                let node = node.clone();
                glommio::spawn_local(async move {
                    let reply = match node.local() {
                        Some(s) => s.execute(cmd).await,
                        None => Reply::Err(ShardError::NotReady),
                    };
                    let _ = node
                        .senders
                        .send_to(from, Envelope::Response { id, reply })
                        .await;
                })
                .detach();
            }
        }
    }
}

/// Refuses to reuse a data directory with a different shard count: topics are placed by
/// `hash(topic) % shards`, so another count would look for them on the wrong core.
fn check_layout(dir: &Path, shards: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    let meta = dir.join("topics.meta");
    let want = format!("shards={shards}\n");
    match std::fs::read_to_string(&meta) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(format!(
            "data dir {} was written with {}; start with that --shards value",
            dir.display(),
            have.trim().replace('=', " ")
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&meta, want).map_err(|e| format!("cannot write {}: {e}", meta.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", meta.display())),
    }
}

/// Takes an exclusive lock on the data directory for the life of the process: two servers
/// on one WAL would corrupt each other.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "data dir {} is in use by another topics process",
            dir.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// The executors bind with SO_REUSEPORT, which would let a second server silently share the
/// port with a running one (splitting clients between two logs): refuse when something
/// already accepts connections there. (A plain bind probe would also trip over the closing
/// connections a killed predecessor leaves behind.)
fn refuse_if_listening(host: &str, port: u16) -> Result<(), String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let ip: IpAddr = match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => Ipv4Addr::LOCALHOST.into(),
        Ok(ip) if ip.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        Ok(ip) => ip,
        Err(_) => return Ok(()), // a host name: the executors' bind reports any problem
    };
    let addr = SocketAddr::new(ip, port);
    match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        Ok(_) => Err(format!(
            "cannot bind {host}:{port}: another process is already listening there"
        )),
        Err(_) => Ok(()),
    }
}

/// Whether `host` names only this machine.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn run(cfg: Config) -> Result<(), String> {
    let keys = crate::api::auth::Keys::parse(cfg.api_keys.as_deref().unwrap_or(""))?;
    if keys.enabled() {
        log::info!("auth on: {} API key(s)", keys.len());
    } else if is_loopback(&cfg.host) {
        log::warn!(
            "AUTH IS OFF: no API keys (--api-keys / TOPICS_API_KEYS); every client has every right"
        );
    } else if cfg.allow_insecure_no_auth {
        log::warn!(
            "AUTH IS OFF on non-loopback address {}: --allow-insecure-no-auth is set and no API keys are configured",
            cfg.host
        );
    } else {
        return Err(format!(
            "refusing to listen on {} without API keys: set --api-keys (TOPICS_API_KEYS), bind a loopback address, or pass --allow-insecure-no-auth",
            cfg.host
        ));
    }
    let shards = cfg.shard_count();
    check_layout(&cfg.data_dir, shards)?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let mut cfg = cfg;
    if cfg.port == 0 {
        let l = std::net::TcpListener::bind((cfg.host.as_str(), 0))
            .map_err(|e| format!("cannot bind {}:0: {e}", cfg.host))?;
        cfg.port = l.local_addr().map_err(|e| e.to_string())?.port();
    } else {
        refuse_if_listening(&cfg.host, cfg.port)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = if shards <= cores {
        PoolPlacement::MaxSpread(shards, None)
    } else {
        PoolPlacement::Unbound(shards)
    };
    let global = Arc::new(Global {
        shards,
        ready_shards: AtomicUsize::new(0),
        topics: (0..shards).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
        sessions: (0..shards).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
        bytes: (0..shards).map(|_| Arc::new(AtomicU64::new(0))).collect(),
        sse_connections: AtomicUsize::new(0),
        max_watch_sessions: cfg.max_watch_sessions,
        max_sse_connections: cfg.max_sse_connections,
        progress: ReplayProgress::default(),
        started: Instant::now(),
        shutting_down: AtomicBool::new(false),
        quiesced: AtomicUsize::new(0),
        keys,
        probe_auth: cfg.probe_auth,
        ds: crate::api::streams::Settings::from_config(&cfg)?,
    });
    install_signal_handler(global.clone())?;
    let mesh = MeshBuilder::<Envelope, _>::full(shards, 1024);
    log::info!(
        "topics {} starting {shards} shard(s), data in {}",
        env!("CARGO_PKG_VERSION"),
        cfg.data_dir.display()
    );
    let handles = LocalExecutorPoolBuilder::new(placement)
        .on_all_shards(move || {
            let cfg = cfg.clone();
            let global = global.clone();
            let mesh = mesh.clone();
            async move { executor_main(cfg, global, mesh).await }
        })
        .map_err(|e| format!("cannot start executors: {e}"))?;
    for r in handles.join_all() {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("executor failed: {e}")),
        }
    }
    Ok(())
}

async fn executor_main(
    cfg: Config,
    global: Arc<Global>,
    mesh: MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>,
) -> Result<(), String> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| "cannot join the channel mesh".to_string())?;
    let id = senders.peer_id();
    let node = Rc::new(Node {
        id,
        global: global.clone(),
        shard: RefCell::new(None),
        senders,
        pending: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
        in_flight: Cell::new(0),
        streams: Cell::new(0),
        shutdown: shards::event::Event::new(),
    });
    for (_, rx) in receivers.streams() {
        glommio::spawn_local(receive_loop(node.clone(), rx)).detach();
    }
    let listener = TcpListener::bind((cfg.host.as_str(), cfg.port))
        .map_err(|e| format!("cannot bind {}:{}: {e}", cfg.host, cfg.port))?;
    if id == 0 {
        log::info!("listening on http://{}:{}", cfg.host, cfg.port);
    }
    let opts = ShardOptions {
        id,
        dir: cfg.data_dir.join(format!("shard-{id}")),
        sync_interval: Duration::from_millis(cfg.sync_interval_ms),
        wal_file_size: shards::wal::FILE_SIZE,
        auto_create: cfg.auto_create,
        hot_tail_bytes: cfg.hot_tail_bytes,
        checkpoint_interval: Duration::from_millis(cfg.checkpoint_interval_ms),
        topic_gauge: global.topics[id].clone(),
        all_topic_gauges: global.topics.clone(),
        max_topics: cfg.max_topics,
        max_routers: cfg.max_routers,
        all_bytes_gauges: global.bytes.clone(),
        max_retained_bytes: cfg.max_retained_bytes,
        max_queue: cfg.max_queue_per_core,
        session_gauge: global.sessions[id].clone(),
    };
    {
        let node = node.clone();
        glommio::spawn_local(async move {
            match Shard::open(opts, &node.global.progress).await {
                Ok(shard) => {
                    *node.shard.borrow_mut() = Some(shard.clone());
                    shard.start(node.clone());
                    let ready = node.global.ready_shards.fetch_add(1, Ordering::AcqRel) + 1;
                    if ready == node.global.shards {
                        log::info!("ready: WAL replay complete");
                    }
                }
                Err(e) => {
                    log::error!("shard {id}: recovery failed: {e}");
                    std::process::exit(1);
                }
            }
        })
        .detach();
    }
    let api = Rc::new(Api::new(node.clone()));
    let limits = Limits {
        max_head_bytes: 16 * 1024,
        max_body_bytes: cfg.max_body_bytes,
        idle_timeout: Duration::from_secs(60),
    };
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            wait_for_shutdown(&node.global).await;
            None
        })
        .await;
        match accepted {
            Some(Ok(stream)) => {
                glommio::spawn_local(serve_connection(stream, api.clone(), limits)).detach();
            }
            Some(Err(e)) => {
                log::warn!("accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            None => break,
        }
    }
    drop(listener);
    node.shutdown.notify_all();
    drain(&node).await;
    Ok(())
}

/// Polls the shutdown flag set by the signal thread (a cheap check every 20 ms).
async fn wait_for_shutdown(global: &Global) {
    while !global.draining() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets in-flight requests finish (bounded), then settles and syncs the shard's log.
async fn drain(node: &Node) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while (node.in_flight.get() > 0 || node.streams.get() > 0) && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Requests and streams on every core are done before any shard closes its log: a stream
    // here writes its final cursors to a session that may live on another shard.
    let g = &node.global;
    g.quiesced.fetch_add(1, Ordering::AcqRel);
    while g.quiesced.load(Ordering::Acquire) < g.shards && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    if let Some(shard) = node.local() {
        if let Err(e) = shard.shutdown().await {
            log::error!("shard {}: final sync failed: {e:?}", node.id);
        }
    }
    log::info!("shard {} drained", node.id);
}

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn install_signal_handler(global: Arc<Global>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if global.shutting_down.swap(true, Ordering::AcqRel) {
                    log::warn!("second signal {sig}: exiting without a drain");
                    std::process::exit(1);
                }
                log::info!("signal {sig}: draining");
                // The drain is bounded: whatever holds it up, the process ends.
                let _ = std::thread::Builder::new()
                    .name("drain-watchdog".into())
                    .spawn(|| {
                        std::thread::sleep(DRAIN_TIMEOUT * 3);
                        log::error!("drain did not finish in time; exiting");
                        std::process::exit(1);
                    });
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}
