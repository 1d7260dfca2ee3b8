//! The byte pump between a plaintext TCP socket and an HBONE stream. Runs entirely on the
//! tokio runtime: no Python, no GIL, per-direction counts at the end.

use std::future::poll_fn;
use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Read sizes grow with the flow like ztunnel's copy buffers: small for request/response
/// latency, large for bulk throughput.
pub fn read_size(moved: u64) -> usize {
    match moved {
        0..=131_071 => 1024,
        131_072..=10_485_759 => 16 * 1024,
        _ => 256 * 1024,
    }
}

#[derive(Debug)]
pub enum PumpError {
    /// The plaintext socket failed (reset, broken pipe...).
    Socket(io::Error),
    /// The HBONE stream was reset or its connection failed.
    Stream(h2::Error),
}

impl std::fmt::Display for PumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PumpError::Socket(e) => write!(f, "plaintext socket: {e}"),
            PumpError::Stream(e) => write!(f, "hbone stream: {e}"),
        }
    }
}

/// Socket -> stream. EOF becomes END_STREAM; a socket error resets the stream.
async fn socket_to_stream(
    mut from: OwnedReadHalf,
    to: &mut SendStream<Bytes>,
) -> Result<u64, PumpError> {
    let mut moved: u64 = 0;
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(read_size(moved));
        let n = match from.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                reset(from.as_ref());
                to.send_reset(Reason::CANCEL);
                return Err(PumpError::Socket(e));
            }
        };
        if n == 0 {
            to.send_data(Bytes::new(), true)
                .map_err(PumpError::Stream)?;
            return Ok(moved);
        }
        moved += n as u64;
        let mut data = buf.split().freeze();
        while !data.is_empty() {
            to.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                Some(Err(e)) => return Err(PumpError::Stream(e)),
                None => return Err(PumpError::Stream(h2::Error::from(Reason::CANCEL))),
            };
            let chunk = data.split_to(granted.min(data.len()));
            to.send_data(chunk, false).map_err(PumpError::Stream)?;
        }
    }
}

/// Stream -> socket. END_STREAM becomes FIN; a stream reset resets the socket.
async fn stream_to_socket(from: &mut RecvStream, mut to: OwnedWriteHalf) -> Result<u64, PumpError> {
    let mut moved: u64 = 0;
    loop {
        match from.data().await {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                if let Err(e) = to.write_all(&chunk).await {
                    reset(to.as_ref());
                    // Dropping the half would shutdown(SHUT_WR): a FIN the peer reads as EOF.
                    to.forget();
                    return Err(PumpError::Socket(e));
                }
                moved += n as u64;
                // Window credit only once the bytes are in the socket: backpressure end to end.
                let _ = from.flow_control().release_capacity(n);
            }
            Some(Err(e)) => {
                reset(to.as_ref());
                to.forget();
                return Err(PumpError::Stream(e));
            }
            None => {
                let _ = to.shutdown().await;
                return Ok(moved);
            }
        }
    }
}

/// Makes the eventual close of `sock` an RST, so the peer sees the reset we saw.
fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Pumps until both directions finish; returns (socket->stream, stream->socket) byte counts.
pub async fn pump(
    socket: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
) -> Result<(u64, u64), PumpError> {
    let (read, write) = socket.into_split();
    let outcome = tokio::try_join!(
        socket_to_stream(read, &mut send),
        stream_to_socket(&mut recv, write)
    );
    if outcome.is_err() {
        send.send_reset(Reason::CANCEL);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::read_size;

    #[test]
    fn buffers_grow_with_the_flow() {
        assert_eq!(read_size(0), 1024);
        assert_eq!(read_size(200_000), 16 * 1024);
        assert_eq!(read_size(20 << 20), 256 * 1024);
    }
}
