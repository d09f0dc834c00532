//! The stored form of a response.
//!
//! ```text
//! status u16 | header count u16 | per header: name len u16, name, value len u32, value
//! | body len u32 | body
//! ```
//! All little-endian. The whole encoding is protected by a crc32 in its record and in the
//! entry that points at it (`docs/FORMAT.md`).

/// A response as stored for replay: status, headers, body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Header names and values, in order (the gateway chooses which ones to store).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl StoredResponse {
    /// A response with a status and a body, no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> StoredResponse {
        StoredResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Add a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The encoded length, or `None` if a part is too long to encode.
    pub(crate) fn encoded_len(&self) -> Option<usize> {
        if self.headers.len() > usize::from(u16::MAX) || u32::try_from(self.body.len()).is_err() {
            return None;
        }
        let mut n = 4 + 4 + self.body.len();
        for (name, value) in &self.headers {
            if name.len() > usize::from(u16::MAX) || u32::try_from(value.len()).is_err() {
                return None;
            }
            n += 2 + name.len() + 4 + value.len();
        }
        Some(n)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![0; self.encoded_len().unwrap_or(0)];
        self.encode_into(&mut out);
        out
    }

    /// Encode into `out`, which is [`StoredResponse::encoded_len`] bytes long (a caller's
    /// buffer: a completion encodes a small response on its stack, with no allocation).
    /// Bytes that do not fit are left out; the caller sized `out`, so none are.
    pub(crate) fn encode_into(&self, out: &mut [u8]) {
        let mut at = 0;
        let mut put = |b: &[u8]| {
            if let Some(d) = out.get_mut(at..at + b.len()) {
                d.copy_from_slice(b);
            }
            at += b.len();
        };
        put(&self.status.to_le_bytes());
        put(&(self.headers.len() as u16).to_le_bytes());
        for (name, value) in &self.headers {
            put(&(name.len() as u16).to_le_bytes());
            put(name.as_bytes());
            put(&(value.len() as u32).to_le_bytes());
            put(value);
        }
        put(&(self.body.len() as u32).to_le_bytes());
        put(&self.body);
    }

    /// Decode; `None` on any inconsistency (never panics on arbitrary bytes).
    #[cfg(test)]
    pub(crate) fn decode(b: &[u8]) -> Option<StoredResponse> {
        Replayed::new(b.to_vec()).map(|r| r.to_response())
    }

    /// Check the structure: status, header count, body offset and length.
    fn parse(b: &[u8]) -> Option<(u16, u16, usize, usize)> {
        let mut r = Reader { b, at: 0 };
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let headers = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        for _ in 0..headers {
            let nl = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
            std::str::from_utf8(r.take(usize::from(nl))?).ok()?;
            let vl = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
            r.take(vl as usize)?;
        }
        let bl = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
        let body_at = r.at;
        r.take(bl)?;
        if r.at != b.len() {
            return None;
        }
        Some((status, headers, body_at, bl))
    }
}

/// A stored response read back for replay: one buffer, viewed as status, headers and body.
///
/// Decoding checked its structure (and the record's crc32) once; the accessors only slice.
#[derive(Clone, PartialEq, Eq)]
pub struct Replayed {
    buf: Vec<u8>,
    status: u16,
    n_headers: u16,
    body_at: usize,
}

impl Replayed {
    /// Check and wrap an encoded response; `None` if it does not decode.
    pub(crate) fn new(buf: Vec<u8>) -> Option<Replayed> {
        let (status, headers, body_at, _) = StoredResponse::parse(&buf)?;
        Some(Replayed {
            status,
            n_headers: headers,
            body_at,
            buf,
        })
    }

    /// The stored status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The stored headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut r = Reader {
            b: &self.buf,
            at: 4,
        };
        (0..self.n_headers).map_while(move |_| {
            let nl = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
            let name = std::str::from_utf8(r.take(usize::from(nl))?).ok()?;
            let vl = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
            Some((name, r.take(vl as usize)?))
        })
    }

    /// The stored body.
    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_at..).unwrap_or(&[])
    }

    /// An owned copy as a [`StoredResponse`].
    pub fn to_response(&self) -> StoredResponse {
        StoredResponse {
            status: self.status,
            headers: self
                .headers()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            body: self.body().to_vec(),
        }
    }
}

impl std::fmt::Debug for Replayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayed")
            .field("status", &self.status)
            .field(
                "headers",
                &self.headers().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body().len())
            .finish()
    }
}

impl PartialEq<StoredResponse> for Replayed {
    fn eq(&self, other: &StoredResponse) -> bool {
        self.status == other.status
            && self.body() == other.body.as_slice()
            && self.headers().eq(other
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice())))
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let r = StoredResponse::new(201, b"{\"id\":7}".to_vec())
            .with_header("content-type", "application/json")
            .with_header("location", "/calls/7");
        let e = r.encode();
        assert_eq!(e.len(), r.encoded_len().unwrap());
        assert_eq!(StoredResponse::decode(&e), Some(r));
        for cut in 0..e.len() {
            assert!(StoredResponse::decode(&e[..cut]).is_none());
        }
        let mut longer = e.clone();
        longer.push(0);
        assert!(StoredResponse::decode(&longer).is_none());
        assert!(StoredResponse::decode(&[0xFF; 64]).is_none());
    }
}
