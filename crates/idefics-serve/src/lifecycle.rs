//! Start-up and graceful shutdown: foreground (`serve_until_signal`, the CLI), background (`spawn`, tests) or
//! inside a caller's runtime (`run`).

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::engine::ChatEngine;
use crate::scheduler::Scheduler;
use crate::server::{router, unix_now, AppState};

/// Serve on `listener` until `shutdown` resolves; then refuse new requests, let in-flight ones finish for
/// `config.shutdown_grace`, cancel what is left, and return once every connection is closed.
pub async fn run(
    listener: TcpListener,
    engine: Arc<dyn ChatEngine>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let scheduler = Scheduler::start(
        engine.clone(),
        config.max_queue,
        config.max_batch_size,
        config.batch_window,
    );
    let grace = config.shutdown_grace;
    let state = Arc::new(AppState {
        engine,
        scheduler,
        preprocess: tokio::sync::Semaphore::new(config.preprocess_concurrency.max(1)),
        fetches: tokio::sync::Semaphore::new(config.fetch_concurrency.max(1)),
        image_memory: crate::memory::ImageMemory::new(config.max_queued_image_bytes),
        config: Arc::new(config),
        closing: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        created: unix_now(),
    });
    tracing::info!(
        addr = %listener.local_addr()?, model = state.engine.model_id(),
        context_length = state.engine.context_length(), "idefics-serve listening"
    );
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let watcher_state = state.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: refusing new requests, finishing in-flight ones"
        );
        watcher_state.closing.store(true, Ordering::SeqCst);
        watcher_state.scheduler.close();
        let _ = closing_tx.send(true);
        tokio::time::sleep(grace).await;
        tracing::warn!("shutdown grace over: cancelling remaining requests");
        watcher_state.scheduler.cancel_all();
    });
    let cfg = state.config.clone();
    serve_connections(listener, router(state.clone()), &cfg, closing_rx).await;
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.scheduler.join()).await;
    tracing::info!("idefics-serve stopped");
    Ok(())
}

/// Accept connections (at most `max_connections` open; more wait in the listen backlog), serve each with a
/// header read timeout, and on shutdown close idle connections at once, let busy ones finish their response for
/// the grace period, then drop whatever is still open: a client that trickles bytes or stops reading cannot keep
/// the process alive.
async fn serve_connections(
    listener: TcpListener,
    app: axum::Router,
    cfg: &ServerConfig,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
    let mut conns = tokio::task::JoinSet::new();
    let header_timeout = cfg.header_read_timeout;
    loop {
        let accept = async {
            let permit = slots.clone().acquire_owned().await;
            (permit, listener.accept().await)
        };
        tokio::select! {
            biased;
            _ = closed(&mut closing) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            (permit, accepted) = accept => {
                let Ok(permit) = permit else { break };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let closing = closing.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    serve_one(stream, app, header_timeout, closing).await;
                });
            }
        }
    }
    drop(listener);
    let hard_stop = cfg.shutdown_grace + HARD_STOP_MARGIN;
    let drained = tokio::time::timeout(hard_stop, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "connections still open after the shutdown grace: closing them"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
}

/// Resolves once shutdown has begun (or the sender is gone).
async fn closed(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

/// After the grace period the scheduler cancels what is left; this margin lets those requests send their 503
/// before the connections are dropped.
const HARD_STOP_MARGIN: Duration = Duration::from_secs(1);

async fn serve_one(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    header_timeout: Duration,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = closed(&mut closing) => {}
    }
    // Idle connections close now; a request in progress finishes its response first.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A server running on its own thread and runtime (tests, embedding). Dropping it also shuts it down.
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful shutdown; returns when the server has stopped.
    pub fn shutdown(mut self) -> std::io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Bind `addr` now (so a bad address or a busy port is reported here) and serve on a background thread.
pub fn spawn(
    engine: Arc<dyn ChatEngine>,
    config: ServerConfig,
    addr: impl ToSocketAddrs,
) -> std::io::Result<ServerHandle> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("idefics-serve")
        .build()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("idefics-serve-main".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener)?;
                run(listener, engine, config, async move {
                    let _ = rx.await;
                })
                .await
            })
        })?;
    Ok(ServerHandle {
        addr: local,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Serve in the foreground until Ctrl-C or SIGTERM (the CLI entry point).
pub fn serve_until_signal(
    engine: Arc<dyn ChatEngine>,
    config: ServerConfig,
    addr: impl ToSocketAddrs,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("idefics-serve")
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        run(listener, engine, config, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
