//! Avro codec for `touchpoints.raw` values.
//!
//! Framing is Avro **single-object encoding** (Avro spec 1.12, "Single object encoding"):
//! two marker bytes `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the
//! schema's Parsing Canonical Form, then the Avro binary datum. We chose it over
//! Confluent's registry framing because it needs no schema registry: any stock Avro library
//! (fastavro, avro-java, apache-avro) decodes a value with `schemas/touchpoint.avsc` alone,
//! and the fingerprint lets a consumer refuse bytes written with a schema it does not know.
//! The schema file is embedded at build time, so the binary and the repository can't drift.
//!
//! Encoding (the collector's per-message path) is written by hand for this one schema and
//! proven byte-identical to apache-avro's generic writer by a proptest; decoding (the
//! processor's) is written by hand too and proven to accept exactly what apache-avro's
//! generic reader accepts, with the same values.
//!
//! The parts: `schema` (the fingerprint: CRC-64-AVRO over the Parsing Canonical Form),
//! `encode` (the hand-written writer and [`TouchpointRef`]), `decode` (the hand-written
//! reader) and `generic` (apache-avro's reader, the reference [`decode()`] is tested
//! against); the framing, the embedded schema and the error type are here.

use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::Schema;

mod decode;
mod encode;
mod generic;
mod schema;
#[cfg(test)]
mod tests;

pub use decode::decode;
pub use encode::{encode, encode_ref, TouchpointRef};
pub use generic::decode_generic;
pub use schema::{crc64_avro, parsing_canonical_form};

/// The schema text, the single source of truth for the wire format.
pub const TOUCHPOINT_SCHEMA_JSON: &str = include_str!("../../../../schemas/touchpoint.avsc");

/// Marker that opens every single-object-encoded value.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Length of the single-object header (magic + fingerprint).
pub const HEADER_LEN: usize = 10;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Too short or missing the `C3 01` marker: not single-object Avro.
    #[error("not a single-object Avro value (missing C3 01 header)")]
    NotSingleObject,
    /// Written with a schema whose fingerprint we do not know.
    #[error("unknown schema fingerprint {0:016x}")]
    UnknownFingerprint(u64),
    /// The datum does not match the schema.
    #[error("avro: {0}")]
    Avro(String),
    /// The datum decoded but a field had an unexpected shape.
    #[error("field {field}: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What was wrong.
        reason: String,
    },
}

struct Codec {
    schema: &'static Schema,
    fingerprint: u64,
    reader: GenericDatumReader<'static>,
}

fn codec() -> &'static Codec {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        // The schema is embedded and covered by tests: failing here is a build defect, not
        // a runtime condition, so these are proven invariants.
        #[allow(clippy::expect_used)]
        let schema = SCHEMA.get_or_init(|| {
            Schema::parse_str(TOUCHPOINT_SCHEMA_JSON).expect("embedded touchpoint.avsc parses")
        });
        #[allow(clippy::expect_used)]
        let json: serde_json::Value =
            serde_json::from_str(TOUCHPOINT_SCHEMA_JSON).expect("embedded touchpoint.avsc is JSON");
        #[allow(clippy::expect_used)]
        Codec {
            fingerprint: crc64_avro(parsing_canonical_form(&json, None).as_bytes()),
            schema,
            reader: GenericDatumReader::builder(schema)
                .build()
                .expect("reader for embedded schema"),
        }
    })
}

/// The parsed touchpoint schema.
pub fn schema() -> &'static Schema {
    codec().schema
}

/// CRC-64-AVRO fingerprint of the schema, as carried (little-endian) in each value's header.
pub fn fingerprint() -> u64 {
    codec().fingerprint
}

/// Bytes a zigzag varint of any `long` can take (the writer reserves for them, the reader
/// refuses longer ones).
const MAX_VARINT_LEN: usize = 10;

/// The datum after a valid single-object header with our schema's fingerprint.
fn check_header(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(CodecError::NotSingleObject);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    let fp = u64::from_le_bytes(fp);
    if fp != codec().fingerprint {
        return Err(CodecError::UnknownFingerprint(fp));
    }
    Ok(&bytes[HEADER_LEN..])
}
