//! How a partition's state is kept in `processor_state.snapshot`: the stage's JSON,
//! compressed as one LZ4 frame while it is written.
//!
//! Why: a journey partition's JSON is ~520 bytes per active customer (8.6 MB per
//! partition at 100k customers over 6 partitions), and every snapshot interval the whole
//! state is serialized, held until its cut is written, and sent to ClickHouse. Serialized
//! straight into the compressor, the uncompressed text never exists as a whole: the
//! process holds the compressed bytes only (measured at 100k customers: 40 % of a
//! journey partition's JSON, 18 % of an identity partition's), and ClickHouse receives
//! and stores that. LZ4 over zstd: it compresses at several hundred MB/s, so the snapshot's cost is still
//! the serialization.
//!
//! Snapshots written before compression (plain JSON, which always starts with `{`) are
//! still read: [`decode`] tells the two apart by the LZ4 frame's magic number.

use std::borrow::Cow;
use std::io::{Read, Write};

/// The first four bytes of an LZ4 frame (little-endian 0x184D2204).
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4d, 0x18];

/// Bytes of JSON gathered before they go to the compressor: see [`encode`].
const JSON_BUFFER: usize = 64 * 1024;

/// The LZ4 frame's block size: see [`encode`].
const BLOCK_SIZE: lz4_flex::frame::BlockSize = lz4_flex::frame::BlockSize::Max1MB;

/// Why a snapshot could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The state did not serialize.
    #[error(transparent)]
    Serialize(serde_json::Error),
    /// Writing the JSON into the compressor failed.
    #[error("writing the snapshot: {0}")]
    Write(#[source] std::io::Error),
    /// Finishing the LZ4 frame failed.
    #[error("compressing the snapshot: {0}")]
    Compress(#[source] lz4_flex::frame::Error),
    /// The stored frame is damaged or cut off.
    #[error("decompressing the snapshot: {0}")]
    Decompress(#[source] std::io::Error),
    /// The stored bytes are neither an LZ4 frame nor JSON.
    #[error("snapshot is neither an LZ4 frame nor JSON (starts with {0:02x?})")]
    Unknown(Vec<u8>),
}

/// A stage's snapshot as stored: `value` serialized as JSON straight into an LZ4 frame.
///
/// serde_json writes token by token, so the JSON goes through a buffer in front of the
/// encoder, which then sees large writes only. Measured on a 10k-customer journey
/// partition (`journey_snapshot` in `crates/journey/benches/engine.rs`, 2026-11-26):
/// 103 ms unbuffered, 62 ms buffered.
///
/// The frame's blocks are 1 MiB ([`BLOCK_SIZE`]) instead of the 64 KiB the encoder
/// picks from a 64 KiB first write: each block starts its match search afresh. On the
/// same partition (2026-12-04, one run, the box slower than on 2026-11-26: 16.6 MB of
/// JSON, of which serializing is 37 ms) the whole encode took 79 ms with 64 KiB blocks,
/// 70 ms with 256 KiB, 64 ms with 1 MiB and 82 ms with 4 MiB (no longer in cache). The
/// encoder holds one block and its compressed copy while it runs (about 2 MiB, for a
/// whole snapshot and for a delta alike), freed when it ends; reading one back holds as
/// much. Any block size is an LZ4 frame like before: frames written with 64 KiB blocks
/// are read the same way.
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    // The content checksum makes a damaged or cut-off snapshot an error at restore
    // instead of a state that silently lacks customers.
    let info = lz4_flex::frame::FrameInfo::new()
        .content_checksum(true)
        .block_size(BLOCK_SIZE);
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    let mut buffered = std::io::BufWriter::with_capacity(JSON_BUFFER, &mut enc);
    serde_json::to_writer(&mut buffered, value).map_err(CodecError::Serialize)?;
    buffered.flush().map_err(CodecError::Write)?;
    drop(buffered);
    enc.finish().map_err(CodecError::Compress)
}

/// The JSON of a stored snapshot: decompressed if it is an LZ4 frame, as it is if it is
/// JSON already (older processors), an error otherwise.
pub fn decode(stored: &[u8]) -> Result<Cow<'_, [u8]>, CodecError> {
    if stored.starts_with(&LZ4_MAGIC) {
        let mut json = Vec::with_capacity(stored.len().saturating_mul(4));
        lz4_flex::frame::FrameDecoder::new(stored)
            .read_to_end(&mut json)
            .map_err(CodecError::Decompress)?;
        Ok(Cow::Owned(json))
    } else if stored.first() == Some(&b'{') {
        Ok(Cow::Borrowed(stored))
    } else {
        Err(CodecError::Unknown(stored[..stored.len().min(4)].to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> serde_json::Value {
        let customers: Vec<_> = (0..2000)
            .map(|i| serde_json::json!({"id": format!("customer-{i}"), "last_time_ms": 1_764_000_000_000_i64 + i}))
            .collect();
        serde_json::json!({"watermark_ms": 1_764_000_000_000_i64, "customers": customers})
    }

    #[test]
    fn round_trip_gives_the_same_json_and_compresses() {
        let value = state();
        let plain = serde_json::to_vec(&value).unwrap();
        let stored = encode(&value).unwrap();
        assert!(stored.starts_with(&LZ4_MAGIC));
        assert!(
            stored.len() * 3 < plain.len(),
            "{} vs {}",
            stored.len(),
            plain.len()
        );
        let json = decode(&stored).unwrap();
        assert!(matches!(json, Cow::Owned(_)));
        assert_eq!(&*json, plain.as_slice());
    }

    #[test]
    fn buffered_json_is_the_whole_document() {
        // Larger than the buffer, so it is flushed more than once and at the end.
        let value = serde_json::json!([state(), state(), state()]);
        let plain = serde_json::to_vec(&value).unwrap();
        assert!(plain.len() > 2 * JSON_BUFFER, "{}", plain.len());
        let stored = encode(&value).unwrap();
        assert_eq!(&*decode(&stored).unwrap(), plain.as_slice());
    }

    #[test]
    fn frames_of_64k_blocks_from_older_processors_are_read() {
        // Before 1 MiB blocks the encoder picked 64 KiB ones from its first write.
        let value = serde_json::json!([state(), state(), state()]);
        let plain = serde_json::to_vec(&value).unwrap();
        let info = lz4_flex::frame::FrameInfo::new()
            .content_checksum(true)
            .block_size(lz4_flex::frame::BlockSize::Max64KB);
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(&plain).unwrap();
        let old = enc.finish().unwrap();
        let new = encode(&value).unwrap();
        // The frame descriptor's BD byte (after the 4-byte magic and FLG) holds the
        // block size: 0x40 for 64 KiB, 0x60 for 1 MiB.
        assert_eq!(old[5], 0x40, "the old frame has 64 KiB blocks");
        assert_eq!(new[5], 0x60, "snapshots are written in 1 MiB blocks");
        assert_eq!(&*decode(&old).unwrap(), plain.as_slice());
        assert_eq!(&*decode(&new).unwrap(), plain.as_slice());
    }

    #[test]
    fn plain_json_from_older_processors_is_read_as_it_is() {
        let plain = serde_json::to_vec(&state()).unwrap();
        let json = decode(&plain).unwrap();
        assert!(matches!(json, Cow::Borrowed(_)));
        assert_eq!(&*json, plain.as_slice());
    }

    #[test]
    fn damaged_or_foreign_bytes_are_an_error_not_a_state() {
        let value = state();
        let mut stored = encode(&value).unwrap();
        stored.truncate(stored.len() / 2);
        let err = decode(&stored).unwrap_err().to_string();
        assert!(err.contains("decompressing"), "{err}");
        let err = decode(b"\x00\x01garbage").unwrap_err().to_string();
        assert!(err.contains("neither"), "{err}");
        assert!(decode(b"").is_err());
    }

    #[test]
    fn a_failing_serialization_fails_the_encode() {
        struct Unserializable;
        impl serde::Serialize for Unserializable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("state not serializable"))
            }
        }
        let err = encode(&Unserializable).unwrap_err();
        assert_eq!(err.to_string(), "state not serializable");
    }
}
