//! Little-endian binary primitives shared by every structure in the format.
//!
//! Every decoder works on an untrusted byte slice: lengths and counts are checked against the
//! bytes that remain before anything is allocated, so a hostile length field can never make a
//! reader allocate more than the input it was given.

use crate::error::FormatError;

/// Appends format primitives to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn i8(&mut self, v: i8) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub(crate) fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// `bytes`: u32 length, then the bytes.
    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("byte strings in the format are < 4 GiB");
        self.u32(len).raw(v)
    }

    /// `string`: a `bytes` that holds UTF-8.
    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// `count`: u32 number of items that follow.
    pub(crate) fn count(&mut self, n: usize) -> &mut Self {
        let n = u32::try_from(n).expect("lists in the format have < 2^32 items");
        self.u32(n)
    }

    /// `option<T>`: u8 0 (absent) or 1 (present, then T).
    pub(crate) fn option<T>(&mut self, v: Option<T>, mut f: impl FnMut(&mut Self, T)) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                f(self, v);
                self
            }
        }
    }
}

/// Reads format primitives from an untrusted slice; every read is bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// What is being decoded, for error messages ("index segment", "pack table of contents").
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self) -> FormatError {
        FormatError::Truncated { what: self.what }
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> FormatError {
        FormatError::Invalid {
            what: self.what,
            reason: reason.into(),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(self.truncated());
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn i8(&mut self) -> Result<i8, FormatError> {
        Ok(i8::from_le_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub(crate) fn string(&mut self) -> Result<String, FormatError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.invalid("a string is not valid UTF-8"))
    }

    /// Reads a u32 item count and checks it against the bytes left, given the smallest size
    /// one item can have, so a forged count cannot trigger a huge allocation.
    pub(crate) fn count(&mut self, min_item_size: usize) -> Result<usize, FormatError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_size.max(1)) > self.remaining() {
            return Err(self.invalid(format!(
                "a list claims {n} items but only {} bytes remain",
                self.remaining()
            )));
        }
        Ok(n)
    }

    pub(crate) fn option<T>(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<T, FormatError>,
    ) -> Result<Option<T>, FormatError> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            t => Err(self.invalid(format!("option tag {t} is neither 0 nor 1"))),
        }
    }
}
