//! Backend (server → client) messages, parsed sans-IO from a buffer: the subset a
//! replication client meets, including `CopyBothResponse`, which `postgres-protocol` lacks.
//!
//! `parse` takes complete messages off the front of a `BytesMut` and leaves partial ones;
//! lengths are checked against [`MAX_MESSAGE_LEN`](super::wire::MAX_MESSAGE_LEN) before
//! waiting for the body, so a forged length cannot make the caller buffer without bound.

use bytes::{Buf, Bytes, BytesMut};

use super::wire::check_frame;
use super::{PgError, ServerError};

/// An authentication request (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSS, SSPI and other methods pgkeep does not implement.
    Unsupported(i32),
}

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    Auth(AuthRequest),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData,
    ReadyForQuery,
    RowDescription(Vec<String>),
    DataRow(Vec<Option<Bytes>>),
    CommandComplete(String),
    EmptyQuery,
    Error(ServerError),
    Notice(ServerError),
    CopyOut,
    CopyIn,
    CopyBoth,
    CopyData(Bytes),
    CopyDone,
    /// `NOTIFY` payloads, `NegotiateProtocolVersion`: nothing a replication client acts on.
    Ignored(u8),
}

struct Body {
    tag: u8,
    buf: Bytes,
}

impl Body {
    fn err(&self, what: &str) -> PgError {
        PgError::Protocol(format!(
            "malformed {:?} message: {what}",
            char::from(self.tag)
        ))
    }

    fn i32(&mut self) -> Result<i32, PgError> {
        if self.buf.remaining() < 4 {
            return Err(self.err("truncated"));
        }
        Ok(self.buf.get_i32())
    }

    fn i16(&mut self) -> Result<i16, PgError> {
        if self.buf.remaining() < 2 {
            return Err(self.err("truncated"));
        }
        Ok(self.buf.get_i16())
    }

    fn cstr(&mut self) -> Result<String, PgError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("unterminated string"))?;
        let s = self.buf.split_to(end);
        self.buf.advance(1);
        // Server messages may be in the server's encoding; keep what is readable.
        Ok(String::from_utf8_lossy(&s).into_owned())
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, PgError> {
        if self.buf.remaining() < n {
            return Err(self.err("truncated"));
        }
        Ok(self.buf.split_to(n))
    }

    fn fields(&mut self) -> Result<ServerError, PgError> {
        let mut e = ServerError::default();
        loop {
            if !self.buf.has_remaining() {
                return Err(self.err("fields not terminated"));
            }
            let code = self.buf.get_u8();
            if code == 0 {
                return Ok(e);
            }
            let value = self.cstr()?;
            match code {
                b'S' => e.severity = value,
                b'V' => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
    }
}

/// Takes one complete message off the front of `buf`, or returns `Ok(None)` if more bytes
/// are needed.
pub fn parse(buf: &mut BytesMut) -> Result<Option<BackendMessage>, PgError> {
    let Some(total) = check_frame(buf)? else {
        return Ok(None);
    };
    if buf.len() < total {
        // Room for what is missing, but at most 1 MiB ahead: memory follows the bytes that
        // actually arrive, not what a (checked, but possibly forged) length field claims.
        buf.reserve((total - buf.len()).min(1 << 20));
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    let tag = frame.get_u8();
    frame.advance(4);
    let mut b = Body { tag, buf: frame };
    let msg = match tag {
        b'R' => BackendMessage::Auth(match b.i32()? {
            0 => AuthRequest::Ok,
            3 => AuthRequest::Cleartext,
            5 => {
                let salt = b.bytes(4)?;
                AuthRequest::Md5 {
                    salt: [salt[0], salt[1], salt[2], salt[3]],
                }
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = b.cstr()?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                AuthRequest::Sasl { mechanisms }
            }
            11 => AuthRequest::SaslContinue(std::mem::take(&mut b.buf)),
            12 => AuthRequest::SaslFinal(std::mem::take(&mut b.buf)),
            other => AuthRequest::Unsupported(other),
        }),
        b'S' => BackendMessage::ParameterStatus {
            name: b.cstr()?,
            value: b.cstr()?,
        },
        b'K' => BackendMessage::BackendKeyData,
        b'Z' => BackendMessage::ReadyForQuery,
        b'T' => {
            let n = b.i16()?;
            let n = usize::try_from(n).map_err(|_| b.err("negative field count"))?;
            let mut names = Vec::with_capacity(n.min(b.buf.remaining() / 19));
            for _ in 0..n {
                names.push(b.cstr()?);
                b.bytes(18)?;
            }
            BackendMessage::RowDescription(names)
        }
        b'D' => {
            let n = b.i16()?;
            let n = usize::try_from(n).map_err(|_| b.err("negative column count"))?;
            let mut cols = Vec::with_capacity(n.min(b.buf.remaining() / 4));
            for _ in 0..n {
                let len = b.i32()?;
                cols.push(match len {
                    -1 => None,
                    l if l < 0 => return Err(b.err("negative column length")),
                    l => Some(b.bytes(l as usize)?),
                });
            }
            BackendMessage::DataRow(cols)
        }
        b'C' => BackendMessage::CommandComplete(b.cstr()?),
        b'I' => BackendMessage::EmptyQuery,
        b'E' => BackendMessage::Error(b.fields()?),
        b'N' => BackendMessage::Notice(b.fields()?),
        b'H' => BackendMessage::CopyOut,
        b'G' => BackendMessage::CopyIn,
        b'W' => BackendMessage::CopyBoth,
        b'd' => BackendMessage::CopyData(b.buf),
        b'c' => BackendMessage::CopyDone,
        b'A' | b'v' => BackendMessage::Ignored(tag),
        other => {
            return Err(PgError::Protocol(format!(
                "unexpected message type {:?} from the server",
                char::from(other)
            )))
        }
    };
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn parse_all(bytes: &[u8]) -> Vec<BackendMessage> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = parse(&mut buf).expect("parses") {
            out.push(m);
        }
        assert!(buf.is_empty(), "leftover bytes");
        out
    }

    #[test]
    fn parses_the_messages_of_a_replication_session() {
        let mut s = Vec::new();
        s.extend(frame(
            b'R',
            &[
                0, 0, 0, 10, b'S', b'C', b'R', b'A', b'M', b'-', b'S', b'H', b'A', b'-', b'2',
                b'5', b'6', 0, 0,
            ],
        ));
        s.extend(frame(b'S', b"server_version\x0015.10\0"));
        let mut row = vec![0, 2];
        row.extend_from_slice(&3i32.to_be_bytes());
        row.extend_from_slice(b"abc");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        s.extend(frame(b'D', &row));
        s.extend(frame(b'W', &[0, 0, 0]));
        s.extend(frame(b'd', b"wxyz"));
        s.extend(frame(b'E', b"SERROR\0C42710\0Mslot exists\0\0"));
        let msgs = parse_all(&s);
        assert_eq!(
            msgs[0],
            BackendMessage::Auth(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256".into()]
            })
        );
        assert_eq!(
            msgs[2],
            BackendMessage::DataRow(vec![Some(Bytes::from_static(b"abc")), None])
        );
        assert_eq!(msgs[3], BackendMessage::CopyBoth);
        assert_eq!(
            msgs[4],
            BackendMessage::CopyData(Bytes::from_static(b"wxyz"))
        );
        match &msgs[5] {
            BackendMessage::Error(e) => {
                assert_eq!(
                    (e.code.as_str(), e.message.as_str()),
                    ("42710", "slot exists")
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn any_split_gives_the_same_messages() {
        let mut s = Vec::new();
        s.extend(frame(b'C', b"SELECT 1\0"));
        s.extend(frame(b'd', &[7u8; 300]));
        s.extend(frame(b'Z', b"I"));
        let whole = parse_all(&s);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &s {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = parse(&mut buf).expect("parses") {
                got.push(m);
            }
        }
        assert_eq!(got, whole);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            frame(b'D', &[0, 5, 0, 0, 0, 9]),
            frame(b'D', &[0xff, 0xff]),
            frame(b'T', &[0, 1, b'a']),
            frame(b'R', &[0, 0, 0, 5, 1]),
            frame(b'E', b"Mno terminator"),
            frame(b'?', b""),
        ] {
            let mut buf = BytesMut::from(&bad[..]);
            assert!(parse(&mut buf).is_err(), "{bad:?} accepted");
        }
        let mut huge = BytesMut::from(&b"d\x7f\xff\xff\xff"[..]);
        assert!(parse(&mut huge).is_err());
    }
}
