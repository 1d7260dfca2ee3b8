//! The HBONE server: accepts mTLS connections, speaks HTTP/2 and hands each CONNECT to the
//! embedder (Python) as an `InboundConnect`, which answers with a status or a pump.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use log::{debug, info, warn};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{timeout, timeout_at, Duration, Instant};
use tokio_rustls::TlsAcceptor;

use crate::settings::{tune_socket, tune_tls, H2Settings};
use crate::verify::peer_identity;

/// Which certificate to present: the destination workload's, chosen by the local address
/// the client connected to (reference 01), with an optional default. A connection that
/// arrives before its workload's certificate waits for it (as ztunnel's inbound fetches the
/// certificate during the handshake), within the handshake timeout.
#[derive(Default)]
pub struct CertSelector {
    by_ip: RwLock<HashMap<IpAddr, Arc<ServerConfig>>>,
    default: RwLock<Option<Arc<ServerConfig>>>,
    changed: Notify,
}

impl CertSelector {
    pub fn set(&self, ip: Option<IpAddr>, config: Arc<ServerConfig>) {
        match ip {
            Some(ip) => {
                self.by_ip
                    .write()
                    .expect("cert map lock")
                    .insert(ip, config);
            }
            None => *self.default.write().expect("cert default lock") = Some(config),
        }
        self.changed.notify_waiters();
    }

    pub fn remove(&self, ip: Option<IpAddr>) {
        match ip {
            Some(ip) => {
                self.by_ip.write().expect("cert map lock").remove(&ip);
            }
            None => *self.default.write().expect("cert default lock") = None,
        }
    }

    fn select(&self, local: IpAddr) -> Option<Arc<ServerConfig>> {
        let by_ip = self.by_ip.read().expect("cert map lock");
        by_ip
            .get(&local)
            .cloned()
            .or_else(|| self.default.read().expect("cert default lock").clone())
    }

    /// The certificate for `local`, waiting up to `limit` for one to be set.
    async fn wait_for(&self, local: IpAddr, limit: Duration) -> Option<Arc<ServerConfig>> {
        let deadline = Instant::now() + limit;
        loop {
            // Registered before looking, so a `set` in between is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(config) = self.select(local) {
                return Some(config);
            }
            if timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// One CONNECT request waiting for a decision.
pub struct InboundConnect {
    pub authority: String,
    pub peer_identity: String,
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub headers: Vec<(String, String)>,
    pub respond: SendResponse<Bytes>,
    pub body: RecvStream,
}

/// Sends a header-only response that ends the stream.
pub fn respond_status(respond: &mut SendResponse<Bytes>, status: u16) {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let response = Response::builder()
        .status(status)
        .body(())
        .expect("static response");
    let _ = respond.send_response(response, true);
}

struct ServerContext {
    certs: Arc<CertSelector>,
    settings: H2Settings,
    requests: mpsc::UnboundedSender<InboundConnect>,
}

/// Serves until `shutdown` flips to true; then stops accepting and drains with GOAWAY.
pub async fn serve(
    listener: TcpListener,
    certs: Arc<CertSelector>,
    settings: H2Settings,
    requests: mpsc::UnboundedSender<InboundConnect>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(ServerContext {
        certs,
        settings,
        requests,
    });
    let local = listener.local_addr().ok();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    tokio::spawn(serve_connection(sock, peer, ctx.clone(), shutdown.clone()));
                }
                Err(e) => {
                    warn!("hbone server {local:?}: accept failed: {e}");
                    // Out of descriptors: back off instead of spinning on the ready listener.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    info!("hbone server {local:?}: stopped accepting");
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

async fn serve_connection(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ServerContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    tune_socket(&sock);
    let Ok(local) = sock.local_addr() else { return };
    // A dual-stack [::] listener sees IPv4 peers as ::ffff:a.b.c.d; certificates, the store
    // and policies know them as a.b.c.d.
    let (peer, local) = (canonical(peer), canonical(local));
    let limit = ctx.settings.handshake_timeout;
    let Some(config) = ctx.certs.wait_for(local.ip(), limit).await else {
        warn!(
            "hbone: connection from {peer} to {local}: no certificate for {} within {limit:?}",
            local.ip()
        );
        return;
    };
    let mut tls = match timeout(limit, TlsAcceptor::from(config).accept(sock)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            warn!("hbone: TLS handshake with {peer} failed: {e}");
            return;
        }
        Err(_) => {
            warn!("hbone: TLS handshake with {peer} timed out after {limit:?}");
            return;
        }
    };
    tune_tls(tls.get_mut().1);
    let identity = peer_identity(tls.get_ref().1.peer_certificates()).unwrap_or_default();
    let s = &ctx.settings;
    let handshake = h2::server::Builder::new()
        .initial_window_size(s.stream_window)
        .initial_connection_window_size(s.connection_window)
        .max_frame_size(s.max_frame_size)
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size(s.max_header_list_size)
        .max_send_buffer_size(s.max_frame_size as usize)
        .handshake::<_, Bytes>(tls);
    let mut conn = match timeout(limit, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            warn!("hbone: HTTP/2 handshake with {peer} ({identity}) failed: {e}");
            return;
        }
        Err(_) => {
            warn!("hbone: HTTP/2 handshake with {peer} ({identity}) timed out");
            return;
        }
    };
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    dispatch(request, respond, &identity, peer, local, &ctx.requests);
                }
                Some(Err(e)) => {
                    debug!("hbone: connection from {peer} ({identity}) ended: {e}");
                    break;
                }
                None => break,
            },
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
        }
    }
}

fn dispatch(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    identity: &str,
    peer: SocketAddr,
    local: SocketAddr,
    requests: &mpsc::UnboundedSender<InboundConnect>,
) {
    if request.method() != Method::CONNECT {
        warn!(
            "hbone: {peer} ({identity}) sent {} instead of CONNECT: 400",
            request.method()
        );
        return respond_status(&mut respond, 400);
    }
    let Some(authority) = request.uri().authority().map(|a| a.as_str().to_string()) else {
        warn!("hbone: {peer} ({identity}) sent CONNECT without :authority: 400");
        return respond_status(&mut respond, 400);
    };
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let connect = InboundConnect {
        authority,
        peer_identity: identity.to_string(),
        peer_addr: peer,
        local_addr: local,
        headers,
        respond,
        body: request.into_body(),
    };
    if let Err(mpsc::error::SendError(mut refused)) = requests.send(connect) {
        respond_status(&mut refused.respond, 503);
    }
}
