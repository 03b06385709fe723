//! SSL passthrough (`--enable-ssl-passthrough`): on the HTTPS listener, the SNI of each
//! ClientHello is read without terminating TLS; the connections for a passthrough host are
//! relayed as raw TCP to an endpoint of its backend, the others are handed back (their
//! bytes replayed) to the usual TLS termination.
//!
//! Reading the ClientHello is bounded in size ([`MAX_CLIENT_HELLO`], one full TLS record)
//! here and in time by the caller (the TLS handshake timeout). The bytes are parsed by
//! rustls's own [`Acceptor`], the code that would parse them anyway a moment later, so a
//! hostile ClientHello is rejected the same way in both places and never panics.
//!
//! This is not a TLS terminator and not a router: it answers "which SNI", and
//! [`relay`] connects and copies bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kingress_model::L4Route;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::l4::L4Settings;
use crate::l4::tcp::{Upstream, connect_endpoint, relay as relay_bytes};
use crate::state::Tables;

/// The most bytes read while looking for a complete ClientHello: one TLS record of
/// 16 KiB plus its 5-byte header. A ClientHello that needs more (several records) is
/// not inspected: the connection is terminated as usual.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes of a connection are, seen as the start of a TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed to tell.
    Incomplete,
    /// A complete ClientHello, with its SNI host name if it had one.
    Complete { sni: Option<String> },
    /// Not a ClientHello rustls accepts (plaintext, garbage, a malformed message).
    Invalid,
}

/// Parses the bytes received so far. Pure, and total on any input.
pub fn parse_client_hello(buf: &[u8]) -> Hello {
    let mut acceptor = Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => return Hello::Invalid,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(None) => Hello::Incomplete,
        Ok(Some(accepted)) => Hello::Complete {
            sni: accepted.client_hello().server_name().map(str::to_owned),
        },
        Err(_) => Hello::Invalid,
    }
}

/// The outcome of reading a ClientHello from a connection.
#[derive(Debug)]
pub enum Peeked {
    /// A complete ClientHello.
    Hello {
        sni: Option<String>,
    },
    /// [`MAX_CLIENT_HELLO`] bytes and still incomplete: let the TLS terminator decide.
    TooLarge,
    /// Not TLS, or a ClientHello rustls rejects: close.
    Invalid,
    /// The client closed before a complete ClientHello.
    Eof,
    Io(io::Error),
}

/// Reads from `stream` into `buf` (which may already hold bytes, e.g. those read past a
/// PROXY header) until `buf` holds a complete ClientHello, cannot be one, or reaches
/// [`MAX_CLIENT_HELLO`]. Everything read is left in `buf`, to be replayed. Not bounded
/// in time: the caller's timeout is.
pub async fn peek_client_hello<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Peeked {
    let mut chunk = [0u8; 4096];
    loop {
        if !buf.is_empty() {
            match parse_client_hello(buf) {
                Hello::Complete { sni } => return Peeked::Hello { sni },
                Hello::Invalid => return Peeked::Invalid,
                Hello::Incomplete => {}
            }
        }
        let room = MAX_CLIENT_HELLO.saturating_sub(buf.len());
        if room == 0 {
            return Peeked::TooLarge;
        }
        let want = chunk.len().min(room);
        let Some(window) = chunk.get_mut(..want) else {
            return Peeked::TooLarge;
        };
        match stream.read(window).await {
            Ok(0) => return Peeked::Eof,
            Ok(n) => buf.extend_from_slice(window.get(..n).unwrap_or_default()),
            Err(e) => return Peeked::Io(e),
        }
    }
}

/// What the HTTPS listener needs to pass connections through.
#[derive(Clone, Debug)]
pub struct Passthrough {
    /// The passthrough hosts (`Tables::l4`) and their endpoints.
    pub tables: Arc<Tables>,
    /// Connect timeout and tries per endpoint, and the idle timeout of a relayed
    /// connection; the bind address and UDP fields are not used.
    pub settings: L4Settings,
}

impl Passthrough {
    /// Endpoint connects bounded by `connect_timeout` (`proxy-connect-timeout`), relays
    /// closed after `idle_timeout` without a byte either way (`proxy-stream-timeout`).
    pub fn new(tables: Arc<Tables>, connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Self {
            tables,
            settings: L4Settings {
                connect_timeout,
                idle_timeout,
                ..L4Settings::default()
            },
        }
    }

    /// The passthrough route for a ClientHello's SNI, if the host is one.
    pub fn route(&self, sni: &str) -> Option<Arc<L4Route>> {
        self.tables.l4().passthrough(sni).cloned()
    }

    /// Whether any host is passed through now (else the ClientHello is not read at all).
    pub fn active(&self) -> bool {
        self.tables.l4().has_passthrough()
    }
}

/// Why a passthrough connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("no endpoint to pass through to")]
    Connect(#[source] crate::l4::tcp::ConnectError),
    #[error("sending the ClientHello to {endpoint}")]
    Replay {
        endpoint: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("relaying to {endpoint}")]
    Relay {
        endpoint: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Connects to an endpoint of `route` (round-robin, another endpoint when a connect
/// fails), writes `hello` (the bytes already read from the client) to it, then relays
/// both ways until both sides are done or the connection is idle. Returns the bytes
/// relayed after `hello` (client to endpoint, endpoint to client).
pub async fn relay(
    passthrough: &Passthrough,
    route: &L4Route,
    client: TcpStream,
    hello: &[u8],
) -> Result<(u64, u64), PassthroughError> {
    let Upstream {
        mut stream,
        addr,
        in_flight,
    } = connect_endpoint(&passthrough.tables, &route.backend, &passthrough.settings)
        .await
        .map_err(PassthroughError::Connect)?;
    stream
        .write_all(hello)
        .await
        .map_err(|source| PassthroughError::Replay { endpoint: addr, source })?;
    let moved = relay_bytes(client, stream, passthrough.settings.idle_timeout)
        .await
        .map_err(|source| PassthroughError::Relay { endpoint: addr, source })?;
    drop(in_flight);
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncWriteExt;

    /// A real ClientHello from rustls's client, for `host` (None: no SNI).
    fn client_hello(host: Option<&str>) -> Vec<u8> {
        use rustls::pki_types::ServerName;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.enable_sni = host.is_some();
        let name = ServerName::try_from(host.unwrap_or("no-sni.invalid").to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn complete_hello_with_and_without_sni() {
        let hello = client_hello(Some("secure.example.com"));
        assert_eq!(
            parse_client_hello(&hello),
            Hello::Complete {
                sni: Some("secure.example.com".into())
            }
        );
        assert_eq!(parse_client_hello(&client_hello(None)), Hello::Complete { sni: None });
    }

    #[test]
    fn every_prefix_is_incomplete_and_never_panics() {
        let hello = client_hello(Some("a.example"));
        for len in 1..hello.len() {
            let got = parse_client_hello(&hello[..len]);
            assert_eq!(got, Hello::Incomplete, "prefix of {len} bytes");
        }
    }

    #[test]
    fn garbage_is_invalid_never_a_panic() {
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid);
        assert_eq!(parse_client_hello(b"PROXY TCP4 1.2.3.4"), Hello::Invalid);
        // A handshake record announcing more than 16 KiB.
        assert_eq!(parse_client_hello(&[0x16, 3, 1, 0xff, 0xff]), Hello::Invalid);
        // Application data before any handshake.
        assert_eq!(parse_client_hello(&[0x17, 3, 3, 0, 1, 0]), Hello::Invalid);

        // Fuzz-style: random bytes, a valid record header over random bytes, and a valid
        // ClientHello with one byte flipped or cut anywhere.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..500 {
            let len = (next() % 600) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_client_hello(&random);
            let mut record = vec![0x16, 3, 1];
            record.extend_from_slice(&(len as u16).to_be_bytes());
            record.push(1);
            record.extend_from_slice(&random);
            let _ = parse_client_hello(&record);
        }
        let hello = client_hello(Some("b.example"));
        for i in 0..hello.len() {
            let mut flipped = hello.clone();
            flipped[i] ^= (next() as u8) | 1;
            let _ = parse_client_hello(&flipped);
            let _ = parse_client_hello(&flipped[..i]);
        }
    }

    /// Writes `parts` one by one into a pipe and peeks from the other end.
    async fn peek_parts(parts: Vec<Vec<u8>>, prefix: Vec<u8>) -> (Peeked, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for part in parts {
                client.write_all(&part).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut buf = prefix;
        let peeked = peek_client_hello(&mut server, &mut buf).await;
        drop(writer.await.unwrap());
        (peeked, buf)
    }

    #[tokio::test]
    async fn peek_across_writes_keeps_every_byte() {
        let hello = client_hello(Some("split.example"));
        let parts: Vec<Vec<u8>> = hello.chunks(7).map(<[u8]>::to_vec).collect();
        let (peeked, buf) = peek_parts(parts, Vec::new()).await;
        assert!(matches!(peeked, Peeked::Hello { sni: Some(ref s) } if s == "split.example"));
        assert_eq!(buf, hello);

        // Bytes already read (past a PROXY header) count as the start.
        let (head, tail) = hello.split_at(10);
        let (peeked, buf) = peek_parts(vec![tail.to_vec()], head.to_vec()).await;
        assert!(matches!(peeked, Peeked::Hello { sni: Some(_) }));
        assert_eq!(buf, hello);
    }

    #[tokio::test]
    async fn peek_garbage_eof_and_too_large() {
        let (peeked, _) = peek_parts(vec![b"GET / HTTP/1.1\r\n".to_vec()], Vec::new()).await;
        assert!(matches!(peeked, Peeked::Invalid), "{peeked:?}");

        let hello = client_hello(Some("c.example"));
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&hello[..20]).await.unwrap();
        drop(client);
        let mut buf = Vec::new();
        let peeked = peek_client_hello(&mut server, &mut buf).await;
        assert!(matches!(peeked, Peeked::Eof), "{peeked:?}");
        assert_eq!(buf, &hello[..20]);

        // A handshake message (type 1, ClientHello) announced larger than one record,
        // spread over records of 16 KiB: never complete within the bound.
        let mut big = Vec::new();
        big.extend_from_slice(&[0x16, 3, 1, 0x40, 0x00, 1, 0x00, 0x80, 0x00]);
        big.extend(std::iter::repeat_n(0u8, 0x4000 - 4));
        big.extend_from_slice(&[0x16, 3, 1, 0x40, 0x00]);
        big.extend(std::iter::repeat_n(0u8, 0x4000));
        let (peeked, buf) = peek_parts(vec![big], Vec::new()).await;
        assert!(matches!(peeked, Peeked::TooLarge | Peeked::Invalid), "{peeked:?}");
        assert!(buf.len() <= MAX_CLIENT_HELLO);
    }
}
