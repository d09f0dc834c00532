//! The idempotency state machine on top of the store's entries: begin, complete, abort,
//! replay, and the check of a record read back at open. The record's words are encoded and
//! decoded by `idempotency/record.rs`; this file moves them.
//!
//! Every transition is one compare-and-swap of the state word, so two requests racing on one
//! key always see one winner. The fingerprint is immutable: a key restarted with another
//! fingerprint (after it expired or was aborted) gets a new entry, which replaces the old one in
//! the index the way window entries move (the old one is marked dead first).

use std::sync::atomic::Ordering;

use crossbeam_epoch::Guard;

use super::core::Core;
use crate::error::{Error, Result};
use crate::idempotency::record::{
    deadline_s, fp_words, next_fence, pack, record_crc, unpack, IdemLayout, ResponseMeta,
    ST_COMPLETING, ST_DEAD, ST_DONE, ST_INFLIGHT, ST_VACANT,
};
use crate::idempotency::{Begin, Durability, Fingerprint, Lease, Replayed, StoredResponse};
use crate::key::{MAX_KEY_LEN, MAX_SCOPE_LEN};
use crate::storage::format::{BlobHeader, EntryHeader, KIND_IDEM};
use crate::storage::segment::Entry;

/// The largest response a completion encodes on its stack.
const SMALL_RESPONSE: usize = 1024;

impl Core {
    fn idem_fp_matches(&self, e: &Entry<'_>, l: &IdemLayout, fp: &Fingerprint) -> bool {
        fp_words(fp)
            .iter()
            .enumerate()
            .all(|(i, &w)| e.load(l.fp_at + i) == w)
    }

    /// Write a complete idempotency entry; the header (with its crc) is stored last.
    fn write_idem_entry(&self, key: &[u8], fp: &Fingerprint, state: u64) -> Result<u64> {
        let l = IdemLayout::new(key.len());
        let line = self.segs.alloc(l.lines)?;
        let e = self.segs.entry(line);
        let put = |i: usize, v: u64| {
            if let Some(w) = e.w(i) {
                w.store(v, Ordering::Relaxed);
            }
        };
        e.put_bytes(1, key);
        e.put_bytes(l.fp_at, fp.as_bytes());
        put(l.state_at, state);
        put(l.state_at + 1, 0);
        put(l.state_at + 2, 0);
        let header =
            EntryHeader::new(key.len(), 0, KIND_IDEM).with_crc(record_crc(key, fp.as_bytes()));
        if let Some(w) = e.w(0) {
            w.store(header.encode(), Ordering::Release);
        }
        Ok(line)
    }

    pub(crate) fn idem_begin(&self, key: &[u8], fp: &Fingerprint, now_ms: u64) -> Result<Begin> {
        self.idem_begin_leased(key, fp, now_ms, self.idem.lease.as_millis() as u64)
    }

    /// [`Core::idem_begin`] with a lease of `lease_ms` instead of the store's (a reservation's
    /// guard record lives as long as the reservation can be settled).
    pub(crate) fn idem_begin_leased(
        &self,
        key: &[u8],
        fp: &Fingerprint,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Begin> {
        self.saw(now_ms);
        let hash = self.hasher.hash_one(key);
        let guard = crossbeam_epoch::pin();
        let mut spins = 0u32;
        loop {
            let Some(line) = self.find_kind(hash, key, KIND_IDEM, &guard) else {
                self.make_room(now_ms)?;
                let mut lock = self.records.lock(hash);
                if self.find_kind(hash, key, KIND_IDEM, &guard).is_some() {
                    continue;
                }
                let dl = deadline_s(now_ms, lease_ms);
                let line = self.write_idem_entry(key, fp, pack(ST_INFLIGHT, 1, dl))?;
                lock.insert(hash, line, &guard, self);
                self.live_entries.fetch_add(1, Ordering::Relaxed);
                self.counters.live_records.fetch_add(1, Ordering::Relaxed);
                return Ok(Begin::Started(lease(key, 1, fp, dl)));
            };
            let e = self.segs.entry(line);
            let l = IdemLayout::new(key.len());
            let Some(w) = e.w(l.state_at) else {
                return Err(Error::Corrupt {
                    offset: self.segs.file_offset(line),
                    reason: "idempotency entry outside its segment",
                });
            };
            let s = w.load(Ordering::Acquire);
            let (state, fence, dl) = unpack(s);
            let live = now_ms < dl.saturating_mul(1000);
            let same = self.idem_fp_matches(&e, &l, fp);
            match state {
                ST_DEAD => {
                    spins += 1;
                    backoff(spins);
                    continue;
                }
                ST_DONE if live => {
                    return if same {
                        Ok(Begin::Replay(self.read_response(&e, &l, line)?))
                    } else {
                        Ok(Begin::Mismatch)
                    };
                }
                ST_COMPLETING => {
                    return Ok(if same {
                        Begin::InFlight
                    } else {
                        Begin::Mismatch
                    })
                }
                ST_INFLIGHT if live => {
                    return Ok(if same {
                        Begin::InFlight
                    } else {
                        Begin::Mismatch
                    })
                }
                _ => {}
            }
            // Vacant (aborted), or expired: the key is free. Take it over with a higher fence.
            let nf = next_fence(fence);
            let ndl = deadline_s(now_ms, lease_ms);
            if same {
                if w.compare_exchange(
                    s,
                    pack(ST_INFLIGHT, nf, ndl),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
                {
                    return Ok(Begin::Started(lease(key, nf, fp, ndl)));
                }
                continue;
            }
            // Another fingerprint: a new entry replaces this one.
            let mut lock = self.records.lock(hash);
            if self.find_kind(hash, key, KIND_IDEM, &guard) != Some(line) {
                continue;
            }
            if w.compare_exchange(
                s,
                pack(ST_DEAD, fence, dl),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
            {
                continue;
            }
            let new = match self.write_idem_entry(key, fp, pack(ST_INFLIGHT, nf, ndl)) {
                Ok(n) => n,
                Err(err) => {
                    // Could not allocate: put the old record back as it was.
                    w.store(s, Ordering::Release);
                    return Err(err);
                }
            };
            if state == ST_DONE {
                self.record_blob_dead(&e, &l);
            }
            lock.replace(hash, line, new, &guard);
            self.clear_entry(line);
            self.segs.release_later(line, l.lines, &guard);
            return Ok(Begin::Started(lease(key, nf, fp, ndl)));
        }
    }

    /// Find the record of a lease and its state word, following moves.
    fn idem_lookup<'g>(
        &'g self,
        lease: &Lease,
        guard: &Guard,
    ) -> Option<(u64, Entry<'g>, IdemLayout)> {
        let hash = self.hasher.hash_one(&lease.key);
        let line = self.find_kind(hash, &lease.key, KIND_IDEM, guard)?;
        Some((
            line,
            self.segs.entry(line),
            IdemLayout::new(lease.key.len()),
        ))
    }

    pub(crate) fn idem_complete(
        &self,
        lease: &Lease,
        resp: &StoredResponse,
        now_ms: u64,
    ) -> Result<()> {
        self.saw(now_ms);
        let max = self.idem.max_response.min(self.segs.max_blob());
        let len = resp.encoded_len().unwrap_or(usize::MAX);
        if len > max {
            return Err(Error::ResponseTooLarge { len, max });
        }
        let guard = crossbeam_epoch::pin();
        // Claim the completion, so that a concurrent complete or take-over cannot interleave
        // with the pointer writes below.
        let (line, e, l, w, s) =
            self.claim_lease(lease, &guard, |fence| pack(ST_COMPLETING, fence, 0))?;
        let fence = lease.fence;
        // A response of up to `SMALL_RESPONSE` bytes is encoded on the stack: the vector
        // the encoding was built in cost an allocation and its free (callgrind, a
        // begin-and-complete with a 250-byte response: 3 276 instructions, 3 158 without).
        let mut small = [0u8; SMALL_RESPONSE];
        let large;
        let bytes: &[u8] = match small.get_mut(..len) {
            Some(buf) => {
                resp.encode_into(buf);
                buf
            }
            None => {
                large = resp.encode();
                &large
            }
        };
        let crc = crc32fast::hash(bytes);
        let written = self.write_blob(bytes, crc, line);
        let (blob, lines) = match written {
            Ok(x) => x,
            Err(err) => {
                w.store(s, Ordering::Release);
                return Err(err);
            }
        };
        if let (Some(p), Some(q)) = (e.w(l.state_at + 1), e.w(l.state_at + 2)) {
            p.store(blob, Ordering::Relaxed);
            let meta = ResponseMeta {
                len: bytes.len() as u32,
                crc,
            };
            q.store(meta.encode(), Ordering::Relaxed);
        }
        let ttl_ms = self.idem.ttl.as_millis() as u64;
        // Release: the pointer words and the record are visible with the new state.
        w.store(
            pack(ST_DONE, fence, deadline_s(now_ms, ttl_ms)),
            Ordering::Release,
        );
        if self.idem.durability == Durability::Sync {
            self.segs.flush_lines(blob, lines)?;
            self.segs.flush_lines(line, u64::from(l.lines))?;
        }
        Ok(())
    }

    pub(crate) fn idem_abort(&self, lease: &Lease) -> Result<()> {
        let guard = crossbeam_epoch::pin();
        self.claim_lease(lease, &guard, |fence| pack(ST_VACANT, fence, 0))?;
        Ok(())
    }

    /// Find the record of `lease`, check that the lease is still the key's and in flight, and
    /// move its state word to `next(fence)` with one compare-and-swap. Returns the record's
    /// line, entry, layout, state word and the state it had.
    #[allow(clippy::type_complexity)]
    fn claim_lease<'g>(
        &'g self,
        lease: &Lease,
        guard: &'g Guard,
        next: impl Fn(u32) -> u64,
    ) -> Result<(
        u64,
        Entry<'g>,
        IdemLayout,
        &'g std::sync::atomic::AtomicU64,
        u64,
    )> {
        let mut spins = 0u32;
        loop {
            let Some((line, e, l)) = self.idem_lookup(lease, guard) else {
                return Err(Error::LeaseLost { current: 0 });
            };
            let Some(w) = e.w(l.state_at) else {
                return Err(Error::LeaseLost { current: 0 });
            };
            let s = w.load(Ordering::Acquire);
            let (state, fence, _) = unpack(s);
            if state == ST_DEAD {
                spins += 1;
                backoff(spins);
                continue;
            }
            if fence != lease.fence || !self.idem_fp_matches(&e, &l, &lease.fingerprint) {
                return Err(Error::LeaseLost { current: fence });
            }
            match state {
                ST_DONE | ST_COMPLETING => return Err(Error::AlreadyCompleted),
                ST_INFLIGHT => {}
                _ => return Err(Error::LeaseLost { current: fence }),
            }
            if w.compare_exchange(s, next(fence), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok((line, e, l, w, s));
            }
        }
    }

    /// Write a blob record; returns its first line and its length in lines.
    fn write_blob(&self, bytes: &[u8], crc: u32, owner: u64) -> Result<(u64, u64)> {
        let head = BlobHeader {
            len: bytes.len() as u64,
        };
        let lines = head.lines();
        let line = self.segs.alloc_blob(lines)?;
        let e = self.segs.entry(line);
        e.put_bytes(2, bytes);
        if let (Some(w0), Some(w1)) = (e.w(0), e.w(1)) {
            w1.store(u64::from(crc) | (owner << 32), Ordering::Relaxed);
            w0.store(head.encode(), Ordering::Release);
        }
        Ok((line, lines))
    }

    /// Read and check the response of the completed record at `line`.
    pub(crate) fn read_response_at(&self, line: u64) -> Result<Replayed> {
        let e = self.segs.entry(line);
        let l = IdemLayout::new(EntryHeader::decode(e.load(0)).key_len);
        self.read_response(&e, &l, line)
    }

    /// Read and check the response a completed record points at. A record that fails any check
    /// is never replayed: the caller gets [`Error::Corrupt`].
    fn read_response(&self, e: &Entry<'_>, l: &IdemLayout, line: u64) -> Result<Replayed> {
        let corrupt = |reason| Error::Corrupt {
            offset: self.segs.file_offset(line),
            reason,
        };
        let blob = e.load(l.state_at + 1);
        let meta = ResponseMeta::decode(e.load(l.state_at + 2));
        let (len, crc) = (meta.len as usize, meta.crc);
        if blob == 0 || len > self.segs.max_blob() {
            return Err(corrupt(
                "idempotency record without a valid response pointer",
            ));
        }
        let b = self.segs.entry(blob);
        let head = BlobHeader::decode(b.load(0));
        if head.is_none_or(|h| h.len as usize != len) || b.load(1) as u32 != crc {
            return Err(corrupt("response record header does not match its entry"));
        }
        let mut bytes = Vec::with_capacity(len.div_ceil(8) * 8);
        for i in 0..len.div_ceil(8) {
            match b.w(2 + i) {
                Some(w) => bytes.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes()),
                None => return Err(corrupt("response record crosses its segment")),
            }
        }
        bytes.truncate(len);
        if crc32fast::hash(&bytes) != crc {
            return Err(corrupt("response record checksum mismatch"));
        }
        Replayed::new(bytes).ok_or_else(|| corrupt("response record does not decode"))
    }

    /// Check an idempotency entry read at open; fixes in-flight markers a crash left.
    /// Returns the key bytes and whether the entry was dead (replaced).
    pub(crate) fn check_idem_entry(
        &self,
        e: &Entry<'_>,
        class_lines: u32,
    ) -> Option<(Vec<u8>, bool)> {
        let h = EntryHeader::decode(e.load(0));
        let key_len = h.key_len;
        if h.windows != 0 || h.reserved != 0 || key_len == 0 || key_len > MAX_KEY_LEN {
            return None;
        }
        let l = IdemLayout::new(key_len);
        if l.lines != class_lines {
            return None;
        }
        let mut key = Vec::with_capacity(key_len.div_ceil(8) * 8);
        for i in 0..key_len.div_ceil(8) {
            key.extend_from_slice(&e.load(1 + i).to_le_bytes());
        }
        if key.get(key_len..)?.iter().any(|&b| b != 0) {
            return None;
        }
        key.truncate(key_len);
        // A record's key is its scope's length, the scope and the UUID (`record_key`): a
        // length byte that does not add up (a key no `begin` can look up, whose scope would
        // read past the key) makes the entry corrupt, whatever its crc says.
        let scope_len = usize::from(*key.first()?);
        if scope_len == 0 || scope_len > MAX_SCOPE_LEN || key_len != 1 + scope_len + 16 {
            return None;
        }
        let mut fp = Vec::with_capacity(32);
        for i in 0..4 {
            fp.extend_from_slice(&e.load(l.fp_at + i).to_le_bytes());
        }
        if record_crc(&key, &fp) != h.crc {
            return None;
        }
        let w = e.w(l.state_at)?;
        let (state, fence, dl) = unpack(w.load(Ordering::Acquire));
        let dead = match state {
            ST_DONE => {
                self.record_blob_live(e, &l);
                false
            }
            ST_VACANT | ST_INFLIGHT => false,
            // A completion cut short by the crash: back in flight until its lease runs out.
            ST_COMPLETING => {
                w.store(pack(ST_INFLIGHT, fence, dl), Ordering::Release);
                false
            }
            ST_DEAD => {
                // Replaced, or about to be: if it is alone it is simply free again.
                w.store(pack(ST_VACANT, fence, 0), Ordering::Release);
                true
            }
            _ => return None,
        };
        Some((key, dead))
    }
}

impl Core {
    /// Account the response record of a completed entry as live (at open).
    fn record_blob_live(&self, e: &Entry<'_>, l: &IdemLayout) {
        let blob = e.load(l.state_at + 1);
        let len = u64::from(ResponseMeta::decode(e.load(l.state_at + 2)).len);
        if blob != 0 {
            self.segs.blob_live_add(blob, BlobHeader { len }.lines());
        }
    }
}

fn lease(key: &[u8], fence: u32, fp: &Fingerprint, deadline_s: u64) -> Lease {
    Lease {
        key: key.to_vec(),
        fence,
        fingerprint: *fp,
        deadline_ms: deadline_s.saturating_mul(1000),
    }
}

fn backoff(spins: u32) {
    if spins > 64 {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use crate::idempotency::record::record_crc;
    use crate::idempotency::{record_key, Begin, Fingerprint, IdempotencyKey, StoredResponse};
    use crate::storage::format::{EntryHeader, KIND_IDEM};
    use crate::{Options, Store};

    /// A record whose scope-length byte is changed (and its crc recomputed) is corrupt at open:
    /// no `begin` could look its key up, and its scope would read past the key. The right
    /// length (3), written the same way, loads.
    #[test]
    fn a_record_key_whose_scope_length_does_not_add_up_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tg");
        let opts = || Options::default().segment_size_log2(16).compactor(false);
        let key = IdempotencyKey::parse("4d9c3a41-6bb7-4c4e-9a39-8f3c2d7e1f00").unwrap();
        let fp = Fingerprint::of("POST", "/x", b"{}");
        for scope_len in [3u8, 0, 2, 4, 200, 255] {
            let _ = std::fs::remove_file(&path);
            let store = Store::open(&path, opts()).unwrap();
            let Begin::Started(lease) = store.begin(b"tok", &key, &fp).unwrap() else {
                panic!("a new key starts");
            };
            store
                .complete(&lease, &StoredResponse::new(200, "ok"))
                .unwrap();
            let rk = record_key(b"tok", &key).unwrap();
            let k = rk.as_bytes();
            let line = {
                let guard = crossbeam_epoch::pin();
                let core = &store.core;
                core.find_kind(core.hasher.hash_one(k), k, KIND_IDEM, &guard)
                    .unwrap()
            };
            let at = store.core.segs.file_offset(line);
            store.close().unwrap();
            let mut bad = k.to_vec();
            bad[0] = scope_len;
            let crc = record_crc(&bad, fp.as_bytes());
            let head = EntryHeader::new(k.len(), 0, KIND_IDEM).with_crc(crc);
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&head.encode().to_le_bytes(), at).unwrap();
            file.write_all_at(&bad[..1], at + 8).unwrap();
            drop(file);
            let store = Store::open(&path, opts()).unwrap();
            let r = store.open_report();
            let want = if scope_len == 3 { (1, 0) } else { (0, 1) };
            assert_eq!(
                (r.entries, r.corrupt_entries),
                want,
                "scope length {scope_len}"
            );
        }
    }
}
