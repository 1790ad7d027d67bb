//! The reader the processor uses: single-object Avro to touchpoints, by hand for the
//! one schema (see [`decode`]).

use super::{check_header, CodecError, MAX_VARINT_LEN};
use crate::event::{MessageType, Touchpoint};

/// Decode a single-object Avro value written by [`encode`](super::encode()) (or any Avro writer using the
/// same schema).
///
/// Hand-written, like [`encode_ref`](super::encode_ref): the fingerprint pins the schema, so the fields come
/// in one known order and each is read straight into the [`Touchpoint`], without
/// apache-avro's intermediate `Value` tree (the processor decodes every raw record). It
/// accepts exactly what apache-avro's generic reader accepts, with the same values (a
/// proptest in this module compares the two, on valid and on damaged input).
pub fn decode(bytes: &[u8]) -> Result<Touchpoint, CodecError> {
    let mut r = Reader(check_header(bytes)?);
    let tp = Touchpoint {
        event_id: r.string("event_id")?,
        message_type: {
            let i = r.long("type")?;
            usize::try_from(i)
                .ok()
                .and_then(|i| MessageType::ALL.get(i).copied())
                .ok_or_else(|| CodecError::Avro(format!("type: enum index {i} out of range")))?
        },
        event: r.opt("event", Reader::string)?,
        anonymous_id: r.opt("anonymous_id", Reader::string)?,
        user_id: r.opt("user_id", Reader::string)?,
        previous_id: r.opt("previous_id", Reader::string)?,
        event_time_ms: r.long("event_time")?,
        timestamp_ms: r.opt("timestamp", Reader::long)?,
        sent_at_ms: r.opt("sent_at", Reader::long)?,
        received_at_ms: r.long("received_at")?,
        source: r.string("source")?,
        channel: r.string("channel")?,
        properties: r.string("properties")?,
        traits: r.string("traits")?,
        context: r.string("context")?,
        ip: r.opt("ip", Reader::string)?,
        user_agent: r.opt("user_agent", Reader::string)?,
        extra: r.string("extra")?,
    };
    if !r.0.is_empty() {
        return Err(CodecError::Avro(format!(
            "{} trailing bytes after the datum",
            r.0.len()
        )));
    }
    Ok(tp)
}

/// Reads Avro primitives off the front of a datum.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// `long`/`int`: base-128 varint of at most [`MAX_VARINT_LEN`] bytes, then zigzag.
    fn long(&mut self, field: &'static str) -> Result<i64, CodecError> {
        let mut z: u64 = 0;
        for (i, &b) in self.0.iter().enumerate().take(MAX_VARINT_LEN) {
            z |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        Err(CodecError::Avro(if self.0.len() < MAX_VARINT_LEN {
            format!("{field}: datum ends inside a number")
        } else {
            format!("{field}: number longer than {MAX_VARINT_LEN} bytes")
        }))
    }

    /// `string`: a `long` byte length, then that many bytes of UTF-8.
    fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let len = self.long(field)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or_else(|| {
                CodecError::Avro(format!(
                    "{field}: string length {len} with {} bytes left",
                    self.0.len()
                ))
            })?;
        let (text, rest) = self.0.split_at(len);
        let text = std::str::from_utf8(text)
            .map_err(|e| CodecError::Avro(format!("{field}: {e}")))?
            .to_owned();
        self.0 = rest;
        Ok(text)
    }

    /// `["null", T]`: branch 0 is null, branch 1 is a `T`.
    fn opt<T>(
        &mut self,
        field: &'static str,
        read: fn(&mut Self, &'static str) -> Result<T, CodecError>,
    ) -> Result<Option<T>, CodecError> {
        match self.long(field)? {
            0 => Ok(None),
            1 => read(self, field).map(Some),
            i => Err(CodecError::Avro(format!(
                "{field}: union branch {i} out of range"
            ))),
        }
    }
}
