//! The `ambient_fast._native` module, typed in ambient_fast/_native.pyi.
//!
//! Asynchronous operations take a `Reactor` and a token: the work runs on the tokio runtime
//! and its outcome is queued on the reactor, whose eventfd wakes the Python event loop
//! (see `completion`). Native threads never take the GIL.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::Response;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

use crate::completion::{CompletionQueue, StopSignal};
use crate::logbridge::LogBridge;
use crate::netns::Netns;
use crate::pool::{Pool, PoolKey, PoolOptions, StreamSlot, Tunnel};
use crate::pump::pump;
use crate::server::{respond_status, serve, CertSelector, InboundConnect};
use crate::settings::{self, tune_socket, H2Settings};
use crate::tls::{self, Identity};

create_exception!(
    _native,
    HboneError,
    PyException,
    "An HBONE connection or stream failed."
);

type Headers = Vec<(String, String)>;

/// ztunnel's default worker count, used when the node has at least twice that many CPUs.
const ZTUNNEL_WORKER_THREADS: usize = 2;
/// 0 = not configured: `default_worker_threads()`.
static WORKER_THREADS: AtomicUsize = AtomicUsize::new(0);
static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// At most half the CPUs: the proxy shares the node with the workloads it serves, and on
/// 2 CPUs one worker measured faster (no cross-thread wake-ups between the pump and the
/// HTTP/2 connection tasks) for both 1 and 8 streams.
fn default_worker_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 2).clamp(1, ZTUNNEL_WORKER_THREADS)
}

fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let configured = WORKER_THREADS.load(Ordering::Acquire);
        let workers = if configured == 0 {
            default_worker_threads()
        } else {
            configured
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("ambient-native")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// What a native operation reports back.
enum Outcome {
    Counts(u64, u64),
    Stream(Tunnel),
    Request(InboundConnect),
    Error(String),
    /// A pump failed after moving these counts (in the order its `Counts` would give them).
    Failed(String, u64, u64),
}

fn parse_ip(ip: &str) -> PyResult<IpAddr> {
    ip.parse()
        .map_err(|_| PyValueError::new_err(format!("not an IP address: {ip:?}")))
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{name}: not a duration: {value}")))
}

fn addr_tuple(addr: SocketAddr) -> (String, u16) {
    (addr.ip().to_string(), addr.port())
}

/// Takes ownership of a connected TCP socket fd (the caller detached it from Python).
fn adopt_stream(fd: RawFd) -> std::io::Result<tokio::net::TcpStream> {
    // SAFETY: the caller transfers ownership of an open socket fd; nothing else closes it.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    std.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(std)?;
    tune_socket(&tcp);
    Ok(tcp)
}

async fn pump_fd(
    fd: RawFd,
    send: SendStream<Bytes>,
    recv: RecvStream,
    stop: StopSignal,
) -> Outcome {
    let tcp = match adopt_stream(fd) {
        Ok(tcp) => tcp,
        Err(e) => return Outcome::Error(format!("socket fd {fd}: {e}")),
    };
    match pump(tcp, send, recv, stop.stopped()).await {
        Ok((up, down)) => Outcome::Counts(up, down),
        Err((e, (up, down))) => Outcome::Failed(e.to_string(), up, down),
    }
}

/// The completion queue of one Python event loop.
#[pyclass(frozen, module = "ambient_fast._native")]
struct Reactor {
    queue: Arc<CompletionQueue<Outcome>>,
}

#[pymethods]
impl Reactor {
    #[new]
    fn new() -> PyResult<Self> {
        let queue = Arc::new(CompletionQueue::new()?);
        let weak = Arc::downgrade(&queue);
        LogBridge::global().set_waker(Arc::new(move || {
            if let Some(queue) = weak.upgrade() {
                queue.signal();
            }
        }));
        Ok(Self { queue })
    }

    fn fileno(&self) -> RawFd {
        self.queue.fileno()
    }

    /// Finished operations as (token, result); a failed one carries an HboneError instance.
    fn drain(&self, py: Python<'_>) -> PyResult<Vec<(u64, PyObject)>> {
        let mut done = Vec::new();
        for (token, outcome) in self.queue.drain() {
            let value = match outcome {
                Outcome::Counts(a, b) => (a, b).into_pyobject(py)?.into_any().unbind(),
                Outcome::Stream(t) => Py::new(py, HboneStream::from(t))?.into_any(),
                Outcome::Request(c) => Py::new(py, ConnectRequest::from(c))?.into_any(),
                Outcome::Error(message) => HboneError::new_err(message).into_value(py).into_any(),
                Outcome::Failed(message, a, b) => {
                    let error = HboneError::new_err(message).into_value(py).into_any();
                    error.bind(py).setattr("counts", (a, b))?;
                    error
                }
            };
            done.push((token, value));
        }
        Ok(done)
    }

    fn cancel(&self, token: u64) {
        self.queue.cancel(token);
    }

    /// Ends a running pump early (both ends reset); it still completes with its counts.
    fn cut(&self, token: u64) {
        self.queue.cut(token);
    }

    fn running(&self) -> usize {
        self.queue.running()
    }
}

/// Log records from native code as (python level, logger name, message).
#[pyfunction]
fn drain_logs() -> Vec<(u8, String, String)> {
    let (records, dropped) = LogBridge::global().drain();
    let mut out: Vec<_> = records
        .into_iter()
        .map(|r| (r.level, r.target, r.message))
        .collect();
    if dropped > 0 {
        let message = format!("{dropped} native log records dropped (queue full)");
        out.push((30, "ambient_fast_native".into(), message));
    }
    out
}

/// HTTP/2 and handshake tunables; defaults are ztunnel's.
#[pyclass(frozen, module = "ambient_fast._native")]
#[derive(Clone)]
struct Http2Settings {
    inner: H2Settings,
}

#[pymethods]
impl Http2Settings {
    #[new]
    #[pyo3(signature = (
        *,
        stream_window = settings::DEFAULT_STREAM_WINDOW,
        connection_window = settings::DEFAULT_CONNECTION_WINDOW,
        max_frame_size = settings::DEFAULT_MAX_FRAME_SIZE,
        max_concurrent_streams = settings::DEFAULT_SERVER_MAX_STREAMS,
        max_header_list_size = settings::DEFAULT_MAX_HEADER_LIST,
        keepalive_interval = settings::DEFAULT_KEEPALIVE_INTERVAL.as_secs_f64(),
        keepalive_timeout = settings::DEFAULT_KEEPALIVE_TIMEOUT.as_secs_f64(),
        handshake_timeout = settings::DEFAULT_HANDSHAKE_TIMEOUT.as_secs_f64(),
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        stream_window: u32,
        connection_window: u32,
        max_frame_size: u32,
        max_concurrent_streams: u32,
        max_header_list_size: u32,
        keepalive_interval: f64,
        keepalive_timeout: f64,
        handshake_timeout: f64,
    ) -> PyResult<Self> {
        if !(16_384..=16_777_215).contains(&max_frame_size) {
            return Err(PyValueError::new_err(format!(
                "max_frame_size: {max_frame_size} outside HTTP/2's 16384..16777215"
            )));
        }
        Ok(Self {
            inner: H2Settings {
                stream_window,
                connection_window,
                max_frame_size,
                max_concurrent_streams,
                max_header_list_size,
                keepalive_interval: seconds("keepalive_interval", keepalive_interval)?,
                keepalive_timeout: seconds("keepalive_timeout", keepalive_timeout)?,
                handshake_timeout: seconds("handshake_timeout", handshake_timeout)?,
            },
        })
    }
}

/// A workload identity: certificate chain, key and mesh roots (PEM).
#[pyclass(frozen, module = "ambient_fast._native")]
struct TlsIdentity {
    inner: Arc<Identity>,
    server_config: Arc<rustls::ServerConfig>,
}

#[pymethods]
impl TlsIdentity {
    #[new]
    fn new(chain_pem: &[u8], key_pem: &[u8], roots_pem: &[u8]) -> PyResult<Self> {
        let inner =
            Identity::from_pem(chain_pem, key_pem, roots_pem).map_err(PyValueError::new_err)?;
        let server_config = inner.server_config().map_err(PyValueError::new_err)?;
        Ok(Self {
            inner: Arc::new(inner),
            server_config,
        })
    }

    #[getter]
    fn spiffe_id(&self) -> &str {
        &self.inner.spiffe_id
    }

    #[getter]
    fn trust_domain(&self) -> &str {
        &self.inner.trust_domain
    }
}

/// The certificates an HBONE server presents, by local (destination) IP.
#[pyclass(frozen, module = "ambient_fast._native")]
struct ServerCertificates {
    inner: Arc<CertSelector>,
}

#[pymethods]
impl ServerCertificates {
    #[new]
    fn new() -> Self {
        Self {
            inner: Arc::new(CertSelector::default()),
        }
    }

    #[pyo3(signature = (ip, identity))]
    fn set(&self, ip: Option<&str>, identity: &TlsIdentity) -> PyResult<()> {
        let ip = ip.map(parse_ip).transpose()?;
        self.inner.set(ip, identity.server_config.clone());
        Ok(())
    }

    #[pyo3(signature = (ip))]
    fn remove(&self, ip: Option<&str>) -> PyResult<()> {
        self.inner.remove(ip.map(parse_ip).transpose()?);
        Ok(())
    }
}

/// A listening HBONE server; CONNECTs are delivered by `next_request`.
#[pyclass(frozen, module = "ambient_fast._native")]
struct HboneServer {
    requests: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<InboundConnect>>>,
    shutdown: watch::Sender<bool>,
}

#[pymethods]
impl HboneServer {
    #[new]
    #[pyo3(signature = (listen_fd, certificates, settings = None))]
    fn new(
        listen_fd: RawFd,
        certificates: &ServerCertificates,
        settings: Option<Http2Settings>,
    ) -> PyResult<Self> {
        // SAFETY: the caller transfers ownership of a listening socket fd.
        let std = unsafe { std::net::TcpListener::from_raw_fd(listen_fd) };
        std.set_nonblocking(true)?;
        let _context = runtime().enter();
        let listener = tokio::net::TcpListener::from_std(std)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let settings = settings.map(|s| s.inner).unwrap_or_default();
        runtime().spawn(serve(
            listener,
            certificates.inner.clone(),
            settings,
            tx,
            shutdown_rx,
        ));
        Ok(Self {
            requests: Arc::new(tokio::sync::Mutex::new(rx)),
            shutdown,
        })
    }

    /// Completes with the next ConnectRequest, or an HboneError once the server is closed.
    fn next_request(&self, reactor: &Reactor, token: u64) {
        let requests = self.requests.clone();
        reactor.queue.spawn(runtime(), token, async move {
            match requests.lock().await.recv().await {
                Some(connect) => Outcome::Request(connect),
                None => Outcome::Error("hbone server closed".into()),
            }
        });
    }

    /// Stops accepting and sends GOAWAY on every connection; open streams finish.
    fn drain(&self) {
        let _ = self.shutdown.send(true);
    }
}

/// One CONNECT waiting for Python's decision: `accept` (pump to a socket) or `reject`.
#[pyclass(frozen, module = "ambient_fast._native")]
struct ConnectRequest {
    #[pyo3(get)]
    authority: String,
    #[pyo3(get)]
    peer_identity: String,
    #[pyo3(get)]
    peer_addr: (String, u16),
    #[pyo3(get)]
    local_addr: (String, u16),
    #[pyo3(get)]
    headers: Headers,
    pending: Mutex<Option<(SendResponse<Bytes>, RecvStream)>>,
}

impl From<InboundConnect> for ConnectRequest {
    fn from(c: InboundConnect) -> Self {
        Self {
            authority: c.authority,
            peer_identity: c.peer_identity,
            peer_addr: addr_tuple(c.peer_addr),
            local_addr: addr_tuple(c.local_addr),
            headers: c.headers,
            pending: Mutex::new(Some((c.respond, c.body))),
        }
    }
}

impl ConnectRequest {
    fn take(&self) -> PyResult<(SendResponse<Bytes>, RecvStream)> {
        self.pending
            .lock()
            .expect("request lock")
            .take()
            .ok_or_else(|| {
                PyRuntimeError::new_err(format!("CONNECT {} already answered", self.authority))
            })
    }
}

#[pymethods]
impl ConnectRequest {
    fn reject(&self, status: u16) -> PyResult<()> {
        if !(400..=599).contains(&status) {
            return Err(PyValueError::new_err(format!(
                "reject status {status}: not an error"
            )));
        }
        let (mut respond, _) = self.take()?;
        respond_status(&mut respond, status);
        Ok(())
    }

    /// Answers 200 and pumps `fd`; completes with (stream->socket, socket->stream) counts, also
    /// when cut; a failure's HboneError carries them as `counts`.
    #[pyo3(signature = (reactor, token, fd, headers = Vec::new()))]
    fn accept(&self, reactor: &Reactor, token: u64, fd: RawFd, headers: Headers) -> PyResult<()> {
        let mut response = Response::builder().status(200);
        for (name, value) in &headers {
            response = response.header(name.as_str(), value.as_str());
        }
        let response = response
            .body(())
            .map_err(|e| PyValueError::new_err(format!("response headers {headers:?}: {e}")))?;
        let (mut respond, body) = self.take()?;
        reactor
            .queue
            .spawn_stoppable(runtime(), token, |stop| async move {
                match respond.send_response(response, false) {
                    Ok(send) => match pump_fd(fd, send, body, stop).await {
                        // The pump reports (socket->stream, stream->socket); callers want inbound first.
                        Outcome::Counts(to_peer, to_upstream) => {
                            Outcome::Counts(to_upstream, to_peer)
                        }
                        Outcome::Failed(message, to_peer, to_upstream) => {
                            Outcome::Failed(message, to_upstream, to_peer)
                        }
                        other => other,
                    },
                    Err(e) => {
                        // SAFETY: we own fd and nothing else will use or close it.
                        drop(unsafe { std::net::TcpStream::from_raw_fd(fd) });
                        Outcome::Error(format!("CONNECT response: {e}"))
                    }
                }
            });
        Ok(())
    }
}

/// The outbound HBONE connection pool.
#[pyclass(frozen, module = "ambient_fast._native")]
struct HbonePool {
    inner: Arc<Pool>,
}

#[pymethods]
impl HbonePool {
    #[new]
    #[pyo3(signature = (
        settings = None,
        *,
        max_streams_per_connection = settings::DEFAULT_CLIENT_MAX_STREAMS,
        idle_timeout = settings::DEFAULT_POOL_IDLE.as_secs_f64(),
        connect_timeout = settings::DEFAULT_CONNECT_TIMEOUT.as_secs_f64(),
        mark = None,
        netns = None,
    ))]
    fn new(
        settings: Option<Http2Settings>,
        max_streams_per_connection: usize,
        idle_timeout: f64,
        connect_timeout: f64,
        mark: Option<u32>,
        netns: Option<RawFd>,
    ) -> PyResult<Self> {
        if max_streams_per_connection == 0 {
            return Err(PyValueError::new_err(
                "max_streams_per_connection must be positive",
            ));
        }
        let options = PoolOptions {
            settings: settings.map(|s| s.inner).unwrap_or_default(),
            max_streams_per_connection,
            idle_timeout: seconds("idle_timeout", idle_timeout)?,
            connect_timeout: seconds("connect_timeout", connect_timeout)?,
            mark,
            netns: netns
                .map(|fd| {
                    // SAFETY: the caller's fd stays open for this call; Netns keeps a duplicate.
                    Netns::new(unsafe { BorrowedFd::borrow_raw(fd) })
                        .map_err(|e| PyValueError::new_err(format!("netns fd {fd}: {e}")))
                })
                .transpose()?,
        };
        let _context = runtime().enter();
        Ok(Self {
            inner: Pool::new(options),
        })
    }

    /// Opens a CONNECT; completes with an HboneStream (any status) or an HboneError.
    #[pyo3(signature = (
        reactor, token, destination, identity, expected_identities, authority, headers,
        source_ip = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn connect(
        &self,
        reactor: &Reactor,
        token: u64,
        destination: &str,
        identity: &TlsIdentity,
        expected_identities: Vec<String>,
        authority: String,
        headers: Headers,
        source_ip: Option<&str>,
    ) -> PyResult<()> {
        let destination: SocketAddr = destination.parse().map_err(|_| {
            PyValueError::new_err(format!("destination {destination:?}: expected ip:port"))
        })?;
        if expected_identities.is_empty() {
            return Err(PyValueError::new_err(format!(
                "connect to {destination}: no expected identities (would trust any peer)"
            )));
        }
        let source_ip = source_ip.map(parse_ip).transpose()?;
        let identity = identity.inner.clone();
        let key = PoolKey::new(
            identity.spiffe_id.clone(),
            expected_identities,
            source_ip,
            destination,
        );
        let pool = self.inner.clone();
        reactor.queue.spawn(runtime(), token, async move {
            match pool.open(&key, &identity, &authority, &headers).await {
                Ok(tunnel) => Outcome::Stream(tunnel),
                Err(e) => Outcome::Error(e),
            }
        });
        Ok(())
    }

    fn connection_count(&self) -> usize {
        self.inner.connection_count()
    }

    fn close(&self) {
        self.inner.close();
    }
}

type OpenTunnel = (SendStream<Bytes>, RecvStream, StreamSlot);

/// An opened CONNECT stream: check `status`, then `pump` a socket through it.
#[pyclass(frozen, module = "ambient_fast._native")]
struct HboneStream {
    #[pyo3(get)]
    status: u16,
    #[pyo3(get)]
    headers: Headers,
    tunnel: Mutex<Option<OpenTunnel>>,
}

impl From<Tunnel> for HboneStream {
    fn from(t: Tunnel) -> Self {
        Self {
            status: t.status,
            headers: t.headers,
            tunnel: Mutex::new(Some((t.send, t.recv, t.slot))),
        }
    }
}

#[pymethods]
impl HboneStream {
    /// Pumps `fd` through the stream; completes with (socket->stream, stream->socket) counts,
    /// also when cut; a failure's HboneError carries them as `counts`.
    fn pump(&self, reactor: &Reactor, token: u64, fd: RawFd) -> PyResult<()> {
        let (send, recv, slot) = self
            .tunnel
            .lock()
            .expect("stream lock")
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("stream already pumped or closed"))?;
        reactor
            .queue
            .spawn_stoppable(runtime(), token, |stop| async move {
                let outcome = pump_fd(fd, send, recv, stop).await;
                drop(slot);
                outcome
            });
        Ok(())
    }

    /// Resets the stream without pumping (a rejected or abandoned tunnel).
    fn close(&self) {
        if let Some((mut send, _, _)) = self.tunnel.lock().expect("stream lock").take() {
            send.send_reset(h2::Reason::CANCEL);
        }
    }
}

/// Sets the tokio worker count; only before the first native operation starts the runtime.
#[pyfunction]
fn configure_runtime(worker_threads: usize) -> PyResult<()> {
    if RUNTIME.get().is_some() {
        return Err(PyRuntimeError::new_err("native runtime already started"));
    }
    WORKER_THREADS.store(worker_threads.max(1), Ordering::Release);
    Ok(())
}

#[pyfunction]
fn crypto_provider() -> String {
    let suites: Vec<String> = tls::provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()))
        .collect();
    format!(
        "rustls 0.23, aws-lc-rs, TLS 1.3 only, suites {}",
        suites.join(", ")
    )
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    LogBridge::global();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let error = m.py().get_type::<HboneError>();
    // A pump's failure overrides this with the bytes it moved; every other failure moved none.
    error.setattr("counts", (0u64, 0u64))?;
    m.add("HboneError", error)?;
    m.add_class::<Reactor>()?;
    m.add_class::<Http2Settings>()?;
    m.add_class::<TlsIdentity>()?;
    m.add_class::<ServerCertificates>()?;
    m.add_class::<HboneServer>()?;
    m.add_class::<ConnectRequest>()?;
    m.add_class::<HbonePool>()?;
    m.add_class::<HboneStream>()?;
    m.add_function(wrap_pyfunction!(configure_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(crypto_provider, m)?)?;
    m.add_function(wrap_pyfunction!(drain_logs, m)?)?;
    crate::python_pki::register(m)
}
