//! Values passed between assets, with their type erased but their codec kept.
//!
//! An asset returns a typed value; the engine carries it as an [`AnyValue`] with
//! the [`ValueType`] that knows how to encode it for an I/O manager and decode it
//! back for a downstream asset. Every value type is serde-serializable, so the
//! built-in I/O managers store JSON and the data version is a hash of those bytes.

use std::any::{Any, TypeId};
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value of some asset's output type.
pub type AnyValue = Box<dyn Any + Send + Sync>;

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("cannot encode a value of type {type_name}: {source}")]
    Encode {
        type_name: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot decode a value of type {type_name}: {source}")]
    Decode {
        type_name: &'static str,
        source: serde_json::Error,
    },
    #[error("internal: expected a value of type {expected}, got another type")]
    WrongType { expected: &'static str },
}

/// The output type of an asset: its identity and its JSON codec.
#[derive(Clone, Copy)]
pub struct ValueType {
    type_id: fn() -> TypeId,
    type_name: &'static str,
    encode: fn(&(dyn Any + Send + Sync), &mut Vec<u8>) -> Result<(), ValueError>,
    decode: fn(&[u8]) -> Result<AnyValue, ValueError>,
}

impl ValueType {
    /// The value type of `T`.
    pub fn of<T>() -> Self
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        ValueType {
            type_id: TypeId::of::<T>,
            type_name: std::any::type_name::<T>(),
            encode: |value, out| {
                let type_name = std::any::type_name::<T>();
                let value = value.downcast_ref::<T>().ok_or(ValueError::WrongType {
                    expected: type_name,
                })?;
                serde_json::to_writer(out, value)
                    .map_err(|source| ValueError::Encode { type_name, source })
            },
            decode: |bytes| {
                let type_name = std::any::type_name::<T>();
                let value: T = serde_json::from_slice(bytes)
                    .map_err(|source| ValueError::Decode { type_name, source })?;
                Ok(Box::new(value))
            },
        }
    }

    pub fn type_id(&self) -> TypeId {
        (self.type_id)()
    }

    /// The Rust type name, for messages to the developer who wrote the asset.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Encodes `value` as JSON.
    ///
    /// # Errors
    ///
    /// When `value` is not of this type, or serde fails.
    pub fn encode(&self, value: &(dyn Any + Send + Sync)) -> Result<Vec<u8>, ValueError> {
        let mut out = Vec::new();
        (self.encode)(value, &mut out)?;
        Ok(out)
    }

    /// Decodes JSON bytes written by [`ValueType::encode`].
    pub fn decode(&self, bytes: &[u8]) -> Result<AnyValue, ValueError> {
        (self.decode)(bytes)
    }
}

impl fmt::Debug for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueType").field(&self.type_name).finish()
    }
}

impl PartialEq for ValueType {
    fn eq(&self, other: &Self) -> bool {
        self.type_id() == other.type_id()
    }
}

/// The data version of stored bytes: a short BLAKE3 hash.
pub fn data_version(bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes);
    hash.to_hex()[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let ty = ValueType::of::<Vec<u32>>();
        let bytes = ty.encode(&vec![1u32, 2, 3]).unwrap();
        assert_eq!(bytes, b"[1,2,3]");
        let back = ty.decode(&bytes).unwrap();
        assert_eq!(back.downcast_ref::<Vec<u32>>(), Some(&vec![1, 2, 3]));
        assert!(matches!(ty.encode(&"x"), Err(ValueError::WrongType { .. })));
        assert!(
            ty.decode(b"{")
                .unwrap_err()
                .to_string()
                .contains("cannot decode")
        );
    }

    #[test]
    fn data_version_follows_bytes() {
        assert_eq!(data_version(b"a"), data_version(b"a"));
        assert_ne!(data_version(b"a"), data_version(b"b"));
        assert_eq!(data_version(b"a").len(), 16);
    }
}
