//! Reading request bodies under limits, and gzip inflation under the same limit.
//!
//! The limit is enforced while reading (a 10 GB body is cut off at the limit, never
//! buffered) and again while inflating, so a gzip bomb costs at most `limit` bytes.

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;

/// Read the whole body, refusing more than `limit` bytes with 413 and a body that takes
/// longer than `timeout` with 408 (a client trickling bytes must not hold the request,
/// and its connection, open indefinitely).
pub async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::TooLarge(format!("request body over {limit} bytes"));
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout.as_millis() as u64))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::BadRequest(format!("reading body: {e}"))),
    }
}

/// Undo `Content-Encoding: gzip`; the inflated body must also fit `limit`.
pub fn decode(raw: Bytes, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
            let mut reader = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
            reader
                .read_to_end(&mut out)
                .map_err(|e| ApiError::BadRequest(format!("invalid gzip body: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::TooLarge(format!(
                    "request body over {limit} bytes after gzip inflation"
                )));
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(ApiError::UnsupportedEncoding(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn headers(enc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, enc.parse().unwrap());
        h
    }

    #[test]
    fn inflates_gzip_within_limit() {
        let out = decode(gz(b"{\"a\":1}"), &headers("gzip"), 100).unwrap();
        assert_eq!(&out[..], b"{\"a\":1}");
    }

    #[test]
    fn gzip_bomb_is_413_not_oom() {
        let bomb = gz(&vec![b' '; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024, "compressed {}", bomb.len());
        let e = decode(bomb, &headers("gzip"), 512_000).unwrap_err();
        assert_eq!(e.status(), 413);
    }

    #[test]
    fn bad_gzip_and_unknown_encoding() {
        assert_eq!(
            decode(Bytes::from_static(b"nope"), &headers("gzip"), 10)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            decode(Bytes::from_static(b"x"), &headers("br"), 10)
                .unwrap_err()
                .status(),
            415
        );
        assert_eq!(
            &decode(Bytes::from_static(b"x"), &HeaderMap::new(), 10).unwrap()[..],
            b"x"
        );
    }

    #[tokio::test]
    async fn body_over_limit_is_413() {
        let e = read_limited(
            Body::from(vec![0u8; 101]),
            &HeaderMap::new(),
            100,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), 413);
        let ok = read_limited(
            Body::from(vec![0u8; 100]),
            &HeaderMap::new(),
            100,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(ok.len(), 100);
    }
}
