//! A deliberately tiny HTTP/1.1 client over `std::net::TcpStream`.
//!
//! The testkit only needs to poke a loopback test server (readiness probes,
//! bucket creation, raw object round trips in its own tests). A real HTTP
//! client crate would drag an async runtime or TLS stack into every test
//! build for that; one request per connection with `Connection: close` keeps
//! this to reading until EOF.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A complete HTTP response as received from the test server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code, e.g. `200` or `412`.
    pub status: u16,
    /// Header fields in the order received; names as sent by the server.
    pub headers: Vec<(String, String)>,
    /// The body, with any chunked transfer-encoding removed.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name`, compared case-insensitively as HTTP
    /// requires.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy), for assertions and error messages.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request and reads the whole response.
///
/// `headers` must not contain `Host`, `Content-Length` or `Connection`: they
/// are set here. Every I/O step is bounded by `timeout`, so a wedged server
/// fails the test instead of hanging it.
pub(crate) fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    // CR/LF in any field would let a caller split the request in two; reject
    // rather than send something the server may interpret differently.
    let fields = [method, path]
        .into_iter()
        .chain(headers.iter().flat_map(|(n, v)| [*n, *v]));
    for field in fields {
        if field.contains(['\r', '\n']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CR or LF in HTTP request field {field:?}"),
            ));
        }
    }
    if !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("HTTP request path must start with '/': {path:?}"),
        ));
    }

    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));

    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method.eq_ignore_ascii_case("HEAD"))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses a full response read to EOF. `head_request` because a response to
/// HEAD announces a Content-Length but carries no body.
fn parse_response(raw: &[u8], head_request: bool) -> io::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid(format!("incomplete HTTP response ({} bytes)", raw.len())))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| invalid("HTTP response head is not UTF-8"))?;
    let rest = &raw[split + 4..];

    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| invalid(format!("bad HTTP status line {status_line:?}")))?;

    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };

    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(response);
    }
    let chunked = response
        .header("Transfer-Encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = response.header("Content-Length") {
        let len: usize = len
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {len:?}")))?;
        if rest.len() < len {
            return Err(invalid(format!(
                "HTTP body truncated: got {} of {len} bytes",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| invalid("truncated chunk size line"))?;
        let size_text = std::str::from_utf8(&data[..line_end])
            .map_err(|_| invalid("chunk size is not UTF-8"))?;
        // Chunk extensions (";name=value") are allowed and ignored.
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out); // trailers, if any, are ignored
        }
        if data.len() < size + 2 {
            return Err(invalid("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"x\"\r\n\r\nhello";
        let r = parse_response(raw, false).expect("parse");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("etag"), Some("\"x\""));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn parses_chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n";
        let r = parse_response(raw, false).expect("parse");
        assert_eq!(r.body, b"hello!");
    }

    #[test]
    fn head_response_has_no_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        let r = parse_response(raw, true).expect("parse");
        assert!(r.body.is_empty());
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(parse_response(b"nonsense", false).is_err());
        assert!(parse_response(b"FOO 200 OK\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", false).is_err());
    }

    #[test]
    fn rejects_header_injection() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let err = send(
            addr,
            "GET",
            "/",
            &[("X", "a\r\nB: c")],
            b"",
            Duration::from_secs(1),
        )
        .expect_err("must refuse CR/LF");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
