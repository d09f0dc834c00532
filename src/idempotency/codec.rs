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
        let mut out = Vec::with_capacity(self.encoded_len().unwrap_or(0));
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u16).to_le_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Decode; `None` on any inconsistency (never panics on arbitrary bytes).
    pub(crate) fn decode(b: &[u8]) -> Option<StoredResponse> {
        let mut r = Reader { b, at: 0 };
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let n = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let mut headers = Vec::with_capacity(usize::from(n).min(64));
        for _ in 0..n {
            let nl = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
            let name = String::from_utf8(r.take(usize::from(nl))?.to_vec()).ok()?;
            let vl = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
            let value = r.take(vl as usize)?.to_vec();
            headers.push((name, value));
        }
        let bl = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let body = r.take(bl as usize)?.to_vec();
        if r.at != b.len() {
            return None;
        }
        Some(StoredResponse {
            status,
            headers,
            body,
        })
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
