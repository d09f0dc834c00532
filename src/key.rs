//! What a key is: bytes, at most [`MAX_KEY_LEN`] of them. A leaf that every layer can name
//! (the error messages, the entry codec, the policy's key builder) without importing more.

/// The longest key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// The longest idempotency scope, in bytes: a record's key is the scope's length (one byte),
/// the scope and the 16 bytes of the UUID.
pub const MAX_SCOPE_LEN: usize = MAX_KEY_LEN - 17;
