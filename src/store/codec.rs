//! Encoding of stored values: postcard bytes of versioned enums.
//!
//! Every value type stored in redb is an enum whose variants are the successive versions of the record
//! (`V1(..)`, `V2(..)`); postcard writes the variant index first, so old records stay readable after a
//! new version is added. Decoding errors name the table and key.

use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

/// Encodes a value for `table`.
pub fn encode<T: Serialize>(table: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Encode { table, source: e })
}

/// Decodes a value read from `table` at `key` (the key is only used for the error message).
pub fn decode<T: DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { table, key: key.to_string(), source: e })
}
