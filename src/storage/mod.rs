//! Storage: bytes on disk and in memory, with no knowledge of windows or records.
//!
//! * [`file`]: create, lock and trim the store file, read and write its header;
//! * [`format`]: the on-disk layout, one codec per structure (file header, segment header,
//!   entry header word, entry layout, blob record head);
//! * [`segment`]: the file grows by segments, entries are allocated from them in size classes;
//! * [`index`]: the in-memory key-hash → entry table with lock-free lookups;
//! * [`readers`]: read sections, which let the usual check read without pinning the epoch;
//! * [`words`]: bytes (keys, fingerprints, responses) as the words an entry stores them in;
//! * [`hook`]: the test hook at every msync, fdatasync and fallocate (failure injection,
//!   power-loss simulation);
//! * [`raw`] and [`sys`]: mapped memory and system calls, the only modules allowed `unsafe`.
//!
//! The engine (`crate::engine`) builds on these; nothing here imports the engine.

pub(crate) mod file;
pub(crate) mod format;
pub(crate) mod hook;
pub(crate) mod index;
#[allow(
    unsafe_code,
    reason = "the one door to mapped memory: every block argued in its `// SAFETY:` comment"
)]
pub(crate) mod raw;
pub(crate) mod readers;
pub(crate) mod segment;
#[allow(
    unsafe_code,
    reason = "system calls std does not offer: every block argued in its `// SAFETY:` comment"
)]
pub(crate) mod sys;
pub(crate) mod words;
