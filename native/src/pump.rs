//! The byte pump between a plaintext TCP socket and an HBONE stream. Runs entirely on the
//! tokio runtime: no Python, no GIL, per-direction counts at the end (a cut's and a failure's
//! too).

use std::future::{poll_fn, Future};
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

/// Socket -> stream, counting into `moved`. EOF becomes END_STREAM; a socket error resets the
/// stream.
async fn socket_to_stream(
    from: &mut OwnedReadHalf,
    to: &mut SendStream<Bytes>,
    moved: &mut u64,
) -> Result<(), PumpError> {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(read_size(*moved));
        let n = match from.read_buf(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                reset(from.as_ref());
                to.send_reset(Reason::CANCEL);
                return Err(PumpError::Socket(e));
            }
        };
        if n == 0 {
            return to.send_data(Bytes::new(), true).map_err(PumpError::Stream);
        }
        *moved += n as u64;
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

/// Stream -> socket, counting into `moved`. END_STREAM becomes FIN; a stream reset resets the
/// socket.
async fn stream_to_socket(
    from: &mut RecvStream,
    to: &mut OwnedWriteHalf,
    moved: &mut u64,
) -> Result<(), PumpError> {
    loop {
        match from.data().await {
            Some(Ok(chunk)) => {
                let n = chunk.len();
                if let Err(e) = to.write_all(&chunk).await {
                    reset(to.as_ref());
                    return Err(PumpError::Socket(e));
                }
                *moved += n as u64;
                // Window credit only once the bytes are in the socket: backpressure end to end.
                let _ = from.flow_control().release_capacity(n);
            }
            Some(Err(e)) => {
                reset(to.as_ref());
                return Err(PumpError::Stream(e));
            }
            None => {
                let _ = to.shutdown().await;
                return Ok(());
            }
        }
    }
}

/// Makes the eventual close of `sock` an RST, so the peer sees the reset we saw.
fn reset(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

/// Pumps until both directions finish, or until `stop` resolves (a cut: the socket and the
/// stream are reset). Returns (socket->stream, stream->socket) byte counts, a cut's included;
/// a failure comes with the counts moved before it.
pub async fn pump(
    socket: TcpStream,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    stop: impl Future<Output = ()>,
) -> Result<(u64, u64), (PumpError, (u64, u64))> {
    let (mut read, mut write) = socket.into_split();
    let (mut up, mut down) = (0, 0);
    // The directions count into locals, so the totals outlive a pump ended mid-copy.
    let finished = tokio::select! {
        biased;
        outcome = async {
            tokio::try_join!(
                socket_to_stream(&mut read, &mut send, &mut up),
                stream_to_socket(&mut recv, &mut write, &mut down)
            )
        } => Some(outcome),
        () = stop => None,
    };
    // The socket closes when `read` drops; dropping the write half would put a FIN before an RST.
    write.forget();
    match finished {
        Some(Ok(_)) => Ok((up, down)),
        Some(Err(e)) => {
            send.send_reset(Reason::CANCEL);
            Err((e, (up, down)))
        }
        None => {
            reset(read.as_ref());
            send.send_reset(Reason::CANCEL);
            Ok((up, down))
        }
    }
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
