//! The PROXY protocol (HAProxy's, v1 text and v2 binary): reading the header a load balancer
//! puts in front of a client's bytes, and writing one in front of ours to a backend.
//!
//! Reading is bounded in size (a v1 header is at most 107 bytes, a v2 header 16 bytes plus
//! at most [`MAX_V2_PAYLOAD`]) and in time (the caller's timeout covers the whole header).
//! Bytes read past the header come back in [`ProxyHeader::rest`]: the caller replays them
//! (pingora's `Stream::rewind`, or a write to the backend) before anything else.
//!
//! Parsing is ppp's; this module only frames the header on the wire (how many bytes to wait
//! for) and turns ppp's types into `std::net::SocketAddr`.
//!
//! This is not a policy: whether a listener expects a header, and what to do when it is
//! missing, is the caller's.

use std::io;
use std::net::{SocketAddr, SocketAddrV6};
use std::time::Duration;

use kingress_model::ProxyVersion;
use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, `\r\n` included (the spec's figure).
pub const MAX_V1_LENGTH: usize = 107;
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED_LENGTH: usize = 16;
/// The largest v2 address-and-TLV payload we accept. The format allows 64 KiB; addresses take
/// at most 216 bytes (two Unix paths) and real TLVs (AWS, Azure, GCP ids, SSL details) far
/// less than this, so anything larger is treated as hostile.
pub const MAX_V2_PAYLOAD: usize = 4096;
/// How much one read asks for. Small, because whatever follows the header is read with it
/// and must be replayed.
const READ_CHUNK: usize = 512;
/// The v1 header's first bytes.
const V1_PREFIX: &[u8] = b"PROXY ";

/// What a PROXY header said, and what came after it on the same reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client as the load balancer saw it. `None` for v1 `UNKNOWN`, v2 `LOCAL` (the
    /// balancer's own health check), and v2 families other than IPv4/IPv6 (Unix, unspecified):
    /// the caller keeps the connection's own peer address then.
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the load balancer; `None` as for `source`.
    pub destination: Option<SocketAddr>,
    /// Bytes read past the header: the start of the client's own stream, to be replayed.
    pub rest: Vec<u8>,
}

/// Why no header could be read. Every variant means "close the connection".
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    /// The whole header did not arrive within the timeout.
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    /// The peer closed (or half-closed) before a complete header.
    #[error("connection closed after {0} bytes, before a complete PROXY header")]
    Eof(usize),
    /// The first bytes are neither the v1 nor the v2 signature.
    #[error("not a PROXY protocol header")]
    Missing,
    /// A v1 header without `\r\n` within 107 bytes.
    #[error("PROXY v1 header longer than {MAX_V1_LENGTH} bytes")]
    V1TooLong,
    /// A v1 header that ppp rejects.
    #[error("malformed PROXY v1 header")]
    V1(#[source] v1::BinaryParseError),
    /// A v2 header announcing more than [`MAX_V2_PAYLOAD`] bytes.
    #[error("PROXY v2 payload of {0} bytes is over the {MAX_V2_PAYLOAD}-byte limit")]
    V2TooLong(usize),
    /// A v2 header that ppp rejects.
    #[error("malformed PROXY v2 header")]
    V2(#[source] v2::ParseError),
    /// Reading from the socket failed.
    #[error("reading the PROXY header")]
    Io(#[source] io::Error),
}

/// How far a buffer is from being a complete header.
enum Framing {
    /// Need more bytes.
    More,
    /// The header is the first `usize` bytes.
    Complete(usize),
}

/// Decides from the bytes so far whether a header is complete, may still complete, or
/// cannot be one. Never indexes past `buf`.
fn frame(buf: &[u8]) -> Result<Framing, ProxyProtocolError> {
    let sig = v2::PROTOCOL_PREFIX;
    if buf.len() < sig.len() && sig.starts_with(buf) {
        // Also a possible v1 prefix? "PROXY " and "\r\n\r\n..." differ at byte 0, so no.
        return Ok(Framing::More);
    }
    if buf.starts_with(sig) {
        let Some(&[high, low]) = buf.get(14..16) else {
            return Ok(Framing::More);
        };
        let payload = usize::from(u16::from_be_bytes([high, low]));
        if payload > MAX_V2_PAYLOAD {
            return Err(ProxyProtocolError::V2TooLong(payload));
        }
        let total = V2_FIXED_LENGTH + payload;
        return Ok(if buf.len() >= total {
            Framing::Complete(total)
        } else {
            Framing::More
        });
    }
    let head = buf.get(..V1_PREFIX.len()).unwrap_or(buf);
    if !V1_PREFIX.starts_with(head) {
        return Err(ProxyProtocolError::Missing);
    }
    let window = buf.get(..MAX_V1_LENGTH).unwrap_or(buf);
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(cr) => Ok(Framing::Complete(cr + 2)),
        None if buf.len() >= MAX_V1_LENGTH => Err(ProxyProtocolError::V1TooLong),
        None => Ok(Framing::More),
    }
}

/// Parses a complete, framed header.
fn parse(header: &[u8]) -> Result<(Option<SocketAddr>, Option<SocketAddr>), ProxyProtocolError> {
    if header.starts_with(v2::PROTOCOL_PREFIX) {
        let parsed = v2::Header::try_from(header).map_err(ProxyProtocolError::V2)?;
        if parsed.command == v2::Command::Local {
            return Ok((None, None));
        }
        return Ok(match parsed.addresses {
            v2::Addresses::IPv4(a) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((a.destination_address, a.destination_port))),
            ),
            v2::Addresses::IPv6(a) => (
                Some(SocketAddr::from((a.source_address, a.source_port))),
                Some(SocketAddr::from((a.destination_address, a.destination_port))),
            ),
            v2::Addresses::Unspecified | v2::Addresses::Unix(_) => (None, None),
        });
    }
    let parsed = v1::Header::try_from(header).map_err(ProxyProtocolError::V1)?;
    Ok(match parsed.addresses {
        v1::Addresses::Tcp4(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((a.destination_address, a.destination_port))),
        ),
        v1::Addresses::Tcp6(a) => (
            Some(SocketAddr::from((a.source_address, a.source_port))),
            Some(SocketAddr::from((a.destination_address, a.destination_port))),
        ),
        v1::Addresses::Unknown => (None, None),
    })
}

/// Reads a v1 or v2 PROXY header from the start of `stream`, within `timeout`.
///
/// Reads in small chunks, so a few bytes of what follows the header may be read with it:
/// they are in [`ProxyHeader::rest`] and must be replayed. Anything that cannot become a
/// valid header (wrong signature, over-long, malformed, early EOF, timeout) is an error, and
/// the caller should close the connection.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<ProxyHeader, ProxyProtocolError> {
    match tokio::time::timeout(timeout, read_header_inner(stream)).await {
        Ok(result) => result,
        Err(_) => Err(ProxyProtocolError::Timeout(timeout)),
    }
}

async fn read_header_inner<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ProxyProtocolError> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let n = stream.read(&mut chunk).await.map_err(ProxyProtocolError::Io)?;
        if n == 0 {
            return Err(ProxyProtocolError::Eof(buf.len()));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Framing::Complete(len) = frame(&buf)? {
            let (source, destination) = parse(buf.get(..len).unwrap_or_default())?;
            let rest = buf.split_off(len.min(buf.len()));
            return Ok(ProxyHeader {
                source,
                destination,
                rest,
            });
        }
    }
}

/// Writes the header kingress sends to a backend before the client's bytes (TCP, PROXY
/// command).
///
/// Both addresses must be of one family. When they are not (an IPv4 client on a dual-stack
/// listener reached over IPv6, or the reverse), the IPv4 one is mapped into IPv6
/// (`::ffff:a.b.c.d`) and the header is TCP6 (v1) or IPv6 (v2): the backend still learns the
/// client's address, which `UNKNOWN` would hide.
pub fn encode(version: ProxyVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyVersion::V1 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => encode_v2(source, destination),
    }
}

/// The v2 header by hand: it is 28 or 52 fixed bytes, and ppp's builder returns an
/// `io::Result` we could only unwrap.
fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    // Version 2, command PROXY.
    const VERSION_COMMAND: u8 = 0x21;
    // Protocol STREAM (TCP) in the low nibble.
    const TCP_OVER_IPV4: u8 = 0x11;
    const TCP_OVER_IPV6: u8 = 0x21;
    let mut out = Vec::with_capacity(V2_FIXED_LENGTH + 36);
    out.extend_from_slice(v2::PROTOCOL_PREFIX);
    out.push(VERSION_COMMAND);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(TCP_OVER_IPV4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            let s = as_v6(source);
            let d = as_v6(destination);
            out.push(TCP_OVER_IPV6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

fn as_v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V6(v6) => v6,
        SocketAddr::V4(v4) => SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0),
    }
}

/// Both addresses in one family: unchanged when they already are, else both IPv6.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (SocketAddr::V6(as_v6(source)), SocketAddr::V6(as_v6(destination)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const SECOND: Duration = Duration::from_secs(1);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Feeds `parts` one write at a time (each a separate read on the other side) and reads.
    async fn read_parts(parts: &[&[u8]]) -> Result<ProxyHeader, ProxyProtocolError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for part in parts {
                client.write_all(&part).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let result = read_header(&mut server, SECOND).await;
        drop(writer.await.unwrap());
        result
    }

    async fn read_all(bytes: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
        // Closed after the bytes, so an incomplete header ends in Eof rather than Timeout.
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(bytes).await.unwrap();
        drop(client);
        read_header(&mut server, SECOND).await
    }

    #[tokio::test]
    async fn v1_tcp4_with_rest() {
        let h = read_all(b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 80\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        assert_eq!(h.source, Some(addr("192.0.2.1:51000")));
        assert_eq!(h.destination, Some(addr("198.51.100.2:80")));
        assert_eq!(h.rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn v1_tcp6_and_unknown() {
        let h = read_all(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n").await.unwrap();
        assert_eq!(h.source, Some(addr("[2001:db8::1]:1")));
        assert_eq!(h.destination, Some(addr("[2001:db8::2]:443")));
        assert!(h.rest.is_empty());

        let h = read_all(b"PROXY UNKNOWN\r\nabc").await.unwrap();
        assert_eq!((h.source, h.destination), (None, None));
        assert_eq!(h.rest, b"abc");

        let h = read_all(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").await.unwrap();
        assert_eq!(h.source, None);
    }

    #[tokio::test]
    async fn v1_split_across_writes() {
        let h = read_parts(&[b"PRO", b"XY TCP4 10.0.0.1 ", b"10.0.0.2 1234", b" 80\r", b"\nhello"])
            .await
            .unwrap();
        assert_eq!(h.source, Some(addr("10.0.0.1:1234")));
        // The read that completes the header may or may not carry "hello": what is read is
        // either in rest or still in the stream, never lost.
        assert!(b"hello".starts_with(&h.rest));
    }

    #[tokio::test]
    async fn v2_ipv4_with_tlv_and_rest() {
        let mut bytes = encode(ProxyVersion::V2, addr("203.0.113.7:40000"), addr("10.1.1.1:443"));
        // Add a NOOP TLV: type 4, length 2.
        bytes[15] += 5;
        bytes.extend_from_slice(&[4, 0, 2, 0xaa, 0xbb]);
        bytes.extend_from_slice(b"\x16\x03\x01rest");
        let h = read_all(&bytes).await.unwrap();
        assert_eq!(h.source, Some(addr("203.0.113.7:40000")));
        assert_eq!(h.destination, Some(addr("10.1.1.1:443")));
        assert_eq!(h.rest, b"\x16\x03\x01rest");
    }

    #[tokio::test]
    async fn v2_split_byte_by_byte() {
        let mut bytes = encode(ProxyVersion::V2, addr("[2001:db8::7]:5"), addr("[2001:db8::8]:6"));
        bytes.extend_from_slice(b"x");
        let parts: Vec<&[u8]> = bytes.chunks(1).collect();
        let h = read_parts(&parts).await.unwrap();
        assert_eq!(h.source, Some(addr("[2001:db8::7]:5")));
        assert_eq!(h.destination, Some(addr("[2001:db8::8]:6")));
        assert!(b"x".starts_with(&h.rest));
    }

    #[tokio::test]
    async fn v2_local_and_unspecified_have_no_addresses() {
        let mut local = v2::PROTOCOL_PREFIX.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        local.extend_from_slice(b"GET");
        let h = read_all(&local).await.unwrap();
        assert_eq!((h.source, h.destination), (None, None));
        assert_eq!(h.rest, b"GET");

        // LOCAL with IPv4 addresses: still the balancer's own connection.
        let mut local4 = encode(ProxyVersion::V2, addr("1.2.3.4:5"), addr("5.6.7.8:9"));
        local4[12] = 0x20;
        let h = read_all(&local4).await.unwrap();
        assert_eq!(h.source, None);

        let mut unix = v2::PROTOCOL_PREFIX.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0u8; 216]);
        let h = read_all(&unix).await.unwrap();
        assert_eq!(h.source, None);
    }

    type Case = (&'static [u8], fn(&ProxyProtocolError) -> bool);

    #[tokio::test]
    async fn malformed_headers_are_errors() {
        use ProxyProtocolError as E;
        let cases: &[Case] = &[
            (b"GET / HTTP/1.1\r\n\r\n", |e| matches!(e, E::Missing)),
            (b"\x16\x03\x01\x00\x05hello", |e| matches!(e, E::Missing)),
            (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", |e| matches!(e, E::Missing)),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", |e| matches!(e, E::V1(_))),
            (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", |e| matches!(e, E::V1(_))),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", |e| matches!(e, E::V1(_))),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n", |e| matches!(e, E::V1(_))),
            (b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", |e| matches!(e, E::V1(_))),
            (b"PROXY TCP4 \xff\xfe 1.2.3.4 1 2\r\n", |e| matches!(e, E::V1(_))),
            (b"PROXY TCP4 1.2.3.4", |e| matches!(e, E::Eof(18))),
            (b"PROXY", |e| matches!(e, E::Eof(5))),
            (b"", |e| matches!(e, E::Eof(0))),
            (&[b'P'; 200], |e| matches!(e, E::Missing)),
            // Version 1 in the v2 framing, a bad command, a bad family, a length too short
            // for the family, an announced payload over the limit, a truncated payload.
            (b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c000000000000", |e| {
                matches!(e, E::V2(_))
            }),
            (b"\r\n\r\n\0\r\nQUIT\n\x22\x11\x00\x0c000000000000", |e| {
                matches!(e, E::V2(_))
            }),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x41\x00\x0c000000000000", |e| {
                matches!(e, E::V2(_))
            }),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x0c000000000000", |e| {
                matches!(e, E::V2(_))
            }),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff", |e| {
                matches!(e, E::V2TooLong(65535))
            }),
            (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c0000", |e| matches!(e, E::Eof(20))),
            (b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c", |e| matches!(e, E::Missing)),
        ];
        for (input, check) in cases {
            let err = read_all(input).await.unwrap_err();
            assert!(check(&err), "{:?}: {err:?}", String::from_utf8_lossy(input));
        }
    }

    #[tokio::test]
    async fn v1_without_crlf_is_too_long() {
        let mut long = b"PROXY TCP6 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 150));
        let err = read_all(&long).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::V1TooLong), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_header_times_out() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        let err = read_header(&mut server, SECOND).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::Timeout(_)), "{err:?}");
        drop(client);
    }

    #[tokio::test]
    async fn garbage_never_panics() {
        // A deterministic xorshift: every prefix of a few random streams, with and without
        // the signatures in front.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let mut bytes = match round % 3 {
                0 => v2::PROTOCOL_PREFIX.to_vec(),
                1 => b"PROXY ".to_vec(),
                _ => Vec::new(),
            };
            let len = (next() % 300) as usize;
            bytes.extend((0..len).map(|_| next() as u8));
            let _ = read_all(&bytes).await;
            let _ = frame(&bytes);
        }
    }

    #[test]
    fn encode_v1() {
        assert_eq!(
            encode(ProxyVersion::V1, addr("192.0.2.1:51000"), addr("10.0.0.1:80")),
            b"PROXY TCP4 192.0.2.1 10.0.0.1 51000 80\r\n"
        );
        assert_eq!(
            encode(ProxyVersion::V1, addr("[2001:db8::1]:1"), addr("[::1]:2")),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
        );
        assert_eq!(
            encode(ProxyVersion::V1, addr("192.0.2.1:1"), addr("[::1]:2")),
            b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n"
        );
    }

    #[tokio::test]
    async fn encode_round_trips() {
        let pairs = [("192.0.2.1:51000", "10.0.0.1:80"), ("[2001:db8::1]:1", "[::1]:65535")];
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for (s, d) in pairs {
                let h = read_all(&encode(version, addr(s), addr(d))).await.unwrap();
                assert_eq!(h.source, Some(addr(s)), "{version:?}");
                assert_eq!(h.destination, Some(addr(d)), "{version:?}");
                assert!(h.rest.is_empty());
            }
            // Mixed families: both mapped to IPv6.
            let h = read_all(&encode(version, addr("192.0.2.1:1"), addr("[::1]:2")))
                .await
                .unwrap();
            assert_eq!(h.source, Some(addr("[::ffff:192.0.2.1]:1")), "{version:?}");
            assert_eq!(h.destination, Some(addr("[::1]:2")));
        }
    }

    #[test]
    fn encode_v2_matches_ppp_builder() {
        let (s, d) = (addr("192.0.2.1:51000"), addr("10.0.0.1:80"));
        let ppp = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, (s, d))
            .build()
            .unwrap();
        assert_eq!(encode(ProxyVersion::V2, s, d), ppp);
        let (s, d) = (addr("[2001:db8::1]:1"), addr("[::1]:2"));
        let ppp = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, (s, d))
            .build()
            .unwrap();
        assert_eq!(encode(ProxyVersion::V2, s, d), ppp);
    }
}
