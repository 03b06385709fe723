//! WebSocket echo.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::Signals;
use crate::body::{self, EchoBody};
use crate::service::Controls;

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 `Upgrade: websocket` request.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11 && has_token(req.headers(), &UPGRADE, "websocket")
}

/// Answers the handshake and, once the connection is handed over, echoes
/// messages on a task of its own.
pub(crate) fn accept(
    req: &mut Request<Incoming>,
    peer: SocketAddr,
    signals: Signals,
    ctl: &Controls,
) -> Response<EchoBody> {
    let key = req.headers().get(SEC_WEBSOCKET_KEY).cloned();
    let Some(key) = key.filter(|_| has_token(req.headers(), &CONNECTION, "upgrade")) else {
        let mut resp = Response::new(body::infallible(Full::from(
            "WebSocket upgrade needs Connection: upgrade and Sec-WebSocket-Key\n",
        )));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return resp;
    };
    // Agree to the first subprotocol offered, if any.
    let protocol = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| !p.is_empty())
        .and_then(|p| HeaderValue::from_str(p).ok());

    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                tracing::debug!(%peer, "echo websocket open");
                echo(ws, signals, peer).await;
                tracing::debug!(%peer, "echo websocket closed");
            }
            Err(err) => tracing::debug!(%peer, error = %err, "echo websocket upgrade failed"),
        }
    });

    let mut resp = Response::new(body::infallible(Empty::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    ctl.apply_set_headers(headers);
    resp
}

/// Echoes text and binary messages until the peer closes. Pings are answered
/// by tungstenite (flushed here). On graceful shutdown a Close frame is sent
/// and the peer's reply awaited; on a forced stop the socket is dropped.
async fn echo<S>(mut ws: WebSocketStream<S>, mut signals: Signals, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut closing = false;
    loop {
        let msg = if closing {
            tokio::select! {
                msg = ws.next() => msg,
                () = signals.force() => break,
            }
        } else {
            tokio::select! {
                msg = ws.next() => msg,
                () = signals.graceful() => {
                    closing = true;
                    let frame = CloseFrame {
                        code: CloseCode::Away,
                        reason: "server shutting down".into(),
                    };
                    if ws.send(Message::Close(Some(frame))).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
        };
        let result = match msg {
            None => break,
            Some(Err(err)) => {
                tracing::debug!(%peer, error = %err, "echo websocket error");
                break;
            }
            Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                if closing {
                    Ok(())
                } else {
                    ws.send(msg).await
                }
            }
            // tungstenite queued the Pong / the Close reply; send it now.
            Some(Ok(Message::Ping(_) | Message::Close(_))) => ws.flush().await,
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Ok(()),
        };
        if let Err(err) = result {
            tracing::debug!(%peer, error = %err, "echo websocket send failed");
            break;
        }
    }
}
