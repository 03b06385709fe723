//! Request handling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde::Serialize;

use crate::body::{self, EchoBody, PatternBody};
use crate::{EchoOptions, Signals, ws};

const X_ECHO_STATUS: HeaderName = HeaderName::from_static("x-echo-status");
const X_ECHO_DELAY_MS: HeaderName = HeaderName::from_static("x-echo-delay-ms");
const X_ECHO_SET_HEADER: HeaderName = HeaderName::from_static("x-echo-set-header");
const X_ECHO_MODE: HeaderName = HeaderName::from_static("x-echo-mode");
const X_ECHO_RESPONSE_BYTES: HeaderName = HeaderName::from_static("x-echo-response-bytes");
const X_ECHO_REQUEST_BODY_LENGTH: HeaderName = HeaderName::from_static("x-echo-request-body-length");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const APPLICATION_OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// Shared by every connection of one server.
#[derive(Debug)]
pub(crate) struct State {
    opts: EchoOptions,
}

impl State {
    pub(crate) fn new(opts: EchoOptions) -> Self {
        Self { opts }
    }

    pub(crate) fn name(&self) -> &str {
        &self.opts.name
    }
}

/// The control headers of one request, parsed leniently: anything malformed
/// is treated as absent.
#[derive(Debug, Default)]
pub(crate) struct Controls {
    status: Option<StatusCode>,
    delay: Duration,
    pub(crate) set_headers: Vec<(HeaderName, HeaderValue)>,
    mode_body: bool,
    response_bytes: Option<u64>,
}

impl Controls {
    fn parse(headers: &HeaderMap) -> Self {
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let status = text(&X_ECHO_STATUS)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|code| (200..=599).contains(code))
            .and_then(|code| StatusCode::from_u16(code).ok());
        let delay = text(&X_ECHO_DELAY_MS)
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or_default();
        let mode_body = text(&X_ECHO_MODE).is_some_and(|m| m.eq_ignore_ascii_case("body"));
        let response_bytes = text(&X_ECHO_RESPONSE_BYTES).and_then(|s| s.parse::<u64>().ok());
        let set_headers = headers
            .get_all(&X_ECHO_SET_HEADER)
            .iter()
            .filter_map(parse_set_header)
            .collect();
        Self {
            status,
            delay,
            set_headers,
            mode_body,
            response_bytes,
        }
    }

    /// Adds the requested response headers; the first occurrence of a name
    /// replaces a default header of that name, later ones are appended.
    pub(crate) fn apply_set_headers(&self, headers: &mut HeaderMap) {
        let mut seen: Vec<&HeaderName> = Vec::new();
        for (name, value) in &self.set_headers {
            if seen.contains(&name) {
                headers.append(name.clone(), value.clone());
            } else {
                seen.push(name);
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Parses `Name: value`. Framing headers are refused: they would corrupt the
/// response instead of testing anything.
fn parse_set_header(raw: &HeaderValue) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = raw.to_str().ok()?.split_once(':')?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
    if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
        return None;
    }
    let value = HeaderValue::from_str(value.trim()).ok()?;
    Some((name, value))
}

/// The JSON answer.
#[derive(Debug, Serialize)]
struct Echo<'a> {
    name: &'a str,
    method: &'a str,
    path: &'a str,
    host: String,
    version: &'static str,
    headers: serde_json::Map<String, serde_json::Value>,
    header_list: Vec<(&'a str, String)>,
    body_length: u64,
    remote_addr: String,
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
    }
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn describe(state: &State, parts: &Parts, peer: SocketAddr, body_length: u64) -> Result<Bytes, serde_json::Error> {
    let headers = &parts.headers;
    let host = headers
        .get(HOST)
        .map(lossy)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    let mut object = serde_json::Map::new();
    for name in headers.keys() {
        let joined = headers.get_all(name).iter().map(lossy).collect::<Vec<_>>().join(", ");
        object.insert(name.as_str().to_owned(), serde_json::Value::String(joined));
    }
    let echo = Echo {
        name: state.name(),
        method: parts.method.as_str(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str()),
        host,
        version: version_str(parts.version),
        headers: object,
        header_list: headers
            .iter()
            .map(|(name, value)| (name.as_str(), lossy(value)))
            .collect(),
        body_length,
        remote_addr: peer.to_string(),
    };
    let mut json = serde_json::to_vec(&echo)?;
    json.push(b'\n');
    Ok(json.into())
}

async fn sleep(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Answers one request.
pub(crate) async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    signals: Signals,
    mut req: Request<Incoming>,
) -> Result<Response<EchoBody>, hyper::Error> {
    let ctl = Controls::parse(req.headers());
    let delay = state.opts.delay.saturating_add(ctl.delay);

    if ws::is_upgrade(&req) {
        sleep(delay).await;
        let resp = ws::accept(&mut req, peer, signals, &ctl);
        log(&state, &req, peer, &resp);
        return Ok(resp);
    }

    let (parts, mut body) = req.into_parts();
    let mut resp = if ctl.mode_body {
        sleep(delay).await;
        let mut resp = Response::new(body.boxed());
        resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_OCTET_STREAM);
        resp
    } else if let Some(len) = ctl.response_bytes {
        let received = body::count(&mut body).await?;
        sleep(delay).await;
        let mut resp = Response::new(body::infallible(PatternBody::new(len)));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, APPLICATION_OCTET_STREAM);
        headers.insert(X_ECHO_REQUEST_BODY_LENGTH, HeaderValue::from(received));
        resp
    } else {
        let received = body::count(&mut body).await?;
        sleep(delay).await;
        let status = ctl.status.unwrap_or(StatusCode::OK);
        let payload = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            body::infallible(Empty::new())
        } else {
            match describe(&state, &parts, peer, received) {
                Ok(json) => body::infallible(Full::new(json)),
                Err(err) => {
                    tracing::debug!(error = %err, "echo: cannot serialise the answer");
                    body::infallible(Empty::new())
                }
            }
        };
        let mut resp = Response::new(payload);
        *resp.status_mut() = status;
        resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
        resp
    };
    ctl.apply_set_headers(resp.headers_mut());
    log(&state, &Request::from_parts(parts, ()), peer, &resp);
    Ok(resp)
}

fn log<B, C>(state: &State, req: &Request<B>, peer: SocketAddr, resp: &Response<C>) {
    tracing::debug!(
        name = %state.name(),
        method = %req.method(),
        path = %req.uri(),
        version = version_str(req.version()),
        status = resp.status().as_u16(),
        %peer,
        "echo request"
    );
}
