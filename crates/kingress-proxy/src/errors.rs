//! Error pages and the mapping from a failure to the status the client sees.
//!
//! As pingora-error classifies them: where the failure came from (upstream, downstream,
//! internal) and what it was picks the status: upstream timeouts are 504, other upstream
//! failures 502, a client that sent garbage 400, a client that went away nothing at all.

use bytes::Bytes;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::ResponseHeader;

/// The `Server` header kingress sets when the backend sent none (no version, on purpose).
pub const SERVER: &str = "kingress";

/// The status for a failed request; 0 when the client is gone and nothing can be sent.
pub fn status_for(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                ErrorType::ReadTimedout | ErrorType::WriteTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// A small HTML error page in nginx's shape, and its response header.
pub fn error_page(status: u16) -> pingora_error::Result<(ResponseHeader, Bytes)> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>{SERVER}</center>\r\n</body>\r\n</html>\r\n"
    );
    let body = Bytes::from(body);
    let mut header = ResponseHeader::build(status, Some(4))?;
    header.insert_header(http::header::SERVER, SERVER)?;
    header.insert_header(http::header::CONTENT_TYPE, "text/html")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_error_source() {
        let up = Error::new_up;
        assert_eq!(status_for(&up(ErrorType::ConnectTimedout)), 504);
        assert_eq!(status_for(&up(ErrorType::ReadTimedout)), 504);
        assert_eq!(status_for(&up(ErrorType::ConnectRefused)), 502);
        assert_eq!(status_for(&Error::new(ErrorType::HTTPStatus(413))), 413);
        assert_eq!(status_for(&Error::new_down(ErrorType::ConnectionClosed)), 0);
        assert_eq!(status_for(&Error::new_down(ErrorType::InvalidHTTPHeader)), 400);
    }

    #[test]
    fn error_pages_name_no_version() {
        let (h, body) = error_page(503).unwrap();
        assert_eq!(h.status.as_u16(), 503);
        assert_eq!(h.headers.get("server").map(|v| v.as_bytes()), Some(&b"kingress"[..]));
        assert!(std::str::from_utf8(&body).unwrap().contains("503 Service Unavailable"));
    }
}
