//! The outbound HBONE connection pool: multiplexed HTTP/2 connections keyed like
//! ztunnel's (source identity, expected identities, source IP, destination), one handshake
//! per key for concurrent callers, PING keepalive and idle release.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, RecvStream, SendStream};
use http::{Method, Request};
use log::{debug, warn};
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use crate::netns::Netns;
use crate::settings::{tune_socket, tune_tls, H2Settings};
use crate::tls::Identity;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub source_identity: String,
    pub expected_identities: Vec<String>,
    pub source_ip: Option<IpAddr>,
    pub destination: SocketAddr,
}

impl PoolKey {
    pub fn new(
        source_identity: String,
        mut expected_identities: Vec<String>,
        source_ip: Option<IpAddr>,
        destination: SocketAddr,
    ) -> Self {
        expected_identities.sort();
        expected_identities.dedup();
        Self {
            source_identity,
            expected_identities,
            source_ip,
            destination,
        }
    }
}

struct PooledConnection {
    send: SendRequest<Bytes>,
    streams: AtomicUsize,
    closed: Arc<AtomicBool>,
    idle_since: Mutex<Instant>,
}

impl PooledConnection {
    fn usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

/// A reserved stream on a pooled connection; dropping it gives the slot back.
pub struct StreamSlot {
    conn: Arc<PooledConnection>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.conn.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.idle_since.lock().expect("idle lock") = Instant::now();
        }
    }
}

/// An established CONNECT tunnel (any status) and the pool slot it holds.
pub struct Tunnel {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub slot: StreamSlot,
}

pub struct PoolOptions {
    pub settings: H2Settings,
    pub max_streams_per_connection: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// SO_MARK for every pool socket (ztunnel: 0x539), so redirect rules skip our own traffic.
    pub mark: Option<u32>,
    /// A pod's network namespace: every pool socket is created inside it (in-pod mode).
    pub netns: Option<Netns>,
}

type KeyConnections = Arc<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>;

pub struct Pool {
    options: PoolOptions,
    keys: Mutex<HashMap<PoolKey, KeyConnections>>,
}

impl Pool {
    /// Creates the pool and its idle reaper (which ends when the pool is dropped).
    pub fn new(options: PoolOptions) -> Arc<Self> {
        let pool = Arc::new(Self {
            options,
            keys: Mutex::new(HashMap::new()),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&pool)));
        pool
    }

    pub fn connection_count(&self) -> usize {
        let keys = self.keys.lock().expect("pool lock");
        keys.values()
            .filter_map(|conns| {
                conns
                    .try_lock()
                    .ok()
                    .map(|c| c.iter().filter(|c| c.usable()).count())
            })
            .sum()
    }

    pub fn close(&self) {
        self.keys.lock().expect("pool lock").clear();
    }

    /// Opens a CONNECT stream to `authority` through a pooled connection for `key`.
    pub async fn open(
        &self,
        key: &PoolKey,
        identity: &Identity,
        authority: &str,
        headers: &[(String, String)],
    ) -> Result<Tunnel, String> {
        let mut request = Request::builder().method(Method::CONNECT).uri(authority);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request
            .body(())
            .map_err(|e| format!("CONNECT {authority}: {e}"))?;
        // A pooled connection may have just been closed by its peer (GOAWAY): retry once.
        let mut last_error = String::new();
        for _ in 0..2 {
            let slot = self.checkout(key, identity).await?;
            match send_connect(&slot.conn, request.clone()).await {
                Ok((status, headers, send, recv)) => {
                    return Ok(Tunnel {
                        status,
                        headers,
                        send,
                        recv,
                        slot,
                    })
                }
                Err(e) => {
                    slot.conn.closed.store(true, Ordering::Release);
                    last_error = format!("CONNECT {authority} via {}: {e}", key.destination);
                }
            }
        }
        Err(last_error)
    }

    async fn checkout(&self, key: &PoolKey, identity: &Identity) -> Result<StreamSlot, String> {
        let entry = self
            .keys
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .clone();
        // Holding the key's lock while connecting: concurrent callers wait for one handshake.
        let mut conns = entry.lock().await;
        conns.retain(|c| c.usable());
        let ours = self.options.max_streams_per_connection;
        // min(ours, the peer's SETTINGS_MAX_CONCURRENT_STREAMS), as ztunnel's pool does.
        let has_room = |c: &&Arc<PooledConnection>| {
            c.streams.load(Ordering::Acquire) < ours.min(c.send.current_max_send_streams())
        };
        let conn = match conns.iter().find(has_room) {
            Some(conn) => conn.clone(),
            None => {
                let conn = self.connect(key, identity).await?;
                conns.push(conn.clone());
                conn
            }
        };
        conn.streams.fetch_add(1, Ordering::AcqRel);
        Ok(StreamSlot { conn })
    }

    async fn connect(
        &self,
        key: &PoolKey,
        identity: &Identity,
    ) -> Result<Arc<PooledConnection>, String> {
        let dst = key.destination;
        let new_socket = || {
            if dst.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
        };
        let socket = match &self.options.netns {
            Some(netns) => netns.run(new_socket),
            None => new_socket(),
        }
        .map_err(|e| format!("socket for {dst}: {e}"))?;
        if let Some(mark) = self.options.mark {
            socket2::SockRef::from(&socket)
                .set_mark(mark)
                .map_err(|e| format!("SO_MARK {mark:#x} for {dst}: {e}"))?;
        }
        if let Some(ip) = key.source_ip {
            // The source may be a pod's address, not ours: IP_TRANSPARENT lets us bind it.
            let _ = socket2::SockRef::from(&socket).set_ip_transparent(true);
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip} for {dst}: {e}"))?;
        }
        let tcp = match timeout(self.options.connect_timeout, socket.connect(dst)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(format!("connect to {dst}: {e}")),
            Err(_) => return Err(format!("connect to {dst}: timed out")),
        };
        tune_socket(&tcp);
        let config = identity.client_config(key.expected_identities.clone())?;
        let s = &self.options.settings;
        let mut tls = match timeout(
            s.handshake_timeout,
            TlsConnector::from(config).connect(ServerName::from(dst.ip()), tcp),
        )
        .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(format!("TLS handshake with {dst}: {e}")),
            Err(_) => return Err(format!("TLS handshake with {dst}: timed out")),
        };
        tune_tls(tls.get_mut().1);
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(s.stream_window)
            .initial_connection_window_size(s.connection_window)
            .max_frame_size(s.max_frame_size)
            .max_header_list_size(s.max_header_list_size)
            .max_send_buffer_size(s.max_frame_size as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| format!("HTTP/2 handshake with {dst}: {e}"))?;
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(drive(conn, dst, s.clone(), closed.clone()));
        debug!(
            "hbone pool: new connection to {dst} as {}",
            key.source_identity
        );
        Ok(Arc::new(PooledConnection {
            send,
            streams: AtomicUsize::new(0),
            closed,
            idle_since: Mutex::new(Instant::now()),
        }))
    }
}

type Opened = (u16, Vec<(String, String)>, SendStream<Bytes>, RecvStream);

async fn send_connect(conn: &PooledConnection, request: Request<()>) -> Result<Opened, h2::Error> {
    let mut sender = conn.send.clone().ready().await?;
    let (response, send) = sender.send_request(request, false)?;
    let response = response.await?;
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok((
        response.status().as_u16(),
        headers,
        send,
        response.into_body(),
    ))
}

/// Drives one client connection, pinging it; marks it closed when it ends or stops answering.
async fn drive<T>(
    mut conn: h2::client::Connection<T, Bytes>,
    dst: SocketAddr,
    settings: H2Settings,
    closed: Arc<AtomicBool>,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ping_pong = conn.ping_pong();
    let keepalive = async move {
        let Some(mut ping_pong) = ping_pong else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(settings.keepalive_interval).await;
            match timeout(settings.keepalive_timeout, ping_pong.ping(Ping::opaque())).await {
                Ok(Ok(_)) => continue,
                _ => return,
            }
        }
    };
    tokio::select! {
        result = &mut conn => {
            if let Err(e) = result {
                debug!("hbone pool: connection to {dst} ended: {e}");
            }
        }
        _ = keepalive => warn!("hbone pool: {dst} stopped answering PING; dropping the connection"),
    }
    closed.store(true, Ordering::Release);
}

async fn reap_idle(pool: Weak<Pool>) {
    loop {
        let period = match pool.upgrade() {
            Some(p) => (p.options.idle_timeout / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(30)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let idle = pool.options.idle_timeout;
        let mut keys = pool.keys.lock().expect("pool lock");
        keys.retain(|_, conns| {
            let Ok(mut conns) = conns.try_lock() else {
                return true;
            };
            conns.retain(|c| {
                let busy = c.streams.load(Ordering::Acquire) > 0;
                c.usable() && (busy || c.idle_since.lock().expect("idle lock").elapsed() < idle)
            });
            !conns.is_empty()
        });
    }
}
