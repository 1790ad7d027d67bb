//! Reading request bodies under limits, and gzip inflation under the same limit.
//!
//! The limit is enforced while reading (a 10 GB body is cut off at the limit, never
//! buffered) and again while inflating, so a gzip bomb costs at most `limit` bytes. Every
//! chunk kept, read or inflated, is first handed to the caller's `reserve`, which counts
//! it against the collector's in-flight budget while the body is still arriving.
//!
//! A body refused as too large is read on and thrown away, up to [`DISCARD_MAX`] bytes,
//! before the 413 goes out (nginx's "lingering close"): a server that answers and closes
//! while the client is still sending leaves unread bytes in its socket, the kernel then
//! resets the connection, and the client sees "connection reset" or "broken pipe"
//! instead of the 413 that says what was wrong (README "Limits").

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::error::ApiError;

/// Read the whole body, refusing more than `limit` bytes with 413 and a body that takes
/// longer than `timeout` with 408 (a client trickling bytes must not hold the request,
/// and its connection, open indefinitely).
///
/// `reserve` is handed the size of every chunk before it is kept, so the caller can count
/// the bytes against its in-flight budget while they arrive (a refusal ends the read);
/// `too_large` is the answer beyond `limit`.
pub async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
    too_large: impl Fn() -> ApiError,
    mut reserve: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    let mut body = body;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            if len <= DISCARD_MAX as u64 {
                discard(&mut body, 0, timeout).await;
            }
            return Err(too_large());
        }
    }
    let read = async {
        let mut out = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if out.len() + data.len() > limit {
                return Ok(Err(out.len() + data.len()));
            }
            reserve(data.len())?;
            out.extend_from_slice(&data);
        }
        Ok(Ok(out.freeze()))
    };
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout.as_millis() as u64))??
    {
        Ok(bytes) => Ok(bytes),
        Err(seen) => {
            discard(&mut body, seen, timeout.saturating_sub(started.elapsed())).await;
            Err(too_large())
        }
    }
}

/// The most bytes of a refused body read and thrown away before the 413 (module docs).
pub const DISCARD_MAX: usize = 8 << 20;

/// Read and drop the rest of `body` (`seen` bytes of it read already) until it ends, it
/// passes [`DISCARD_MAX`], or `timeout` passes; nothing is kept.
async fn discard(body: &mut Body, mut seen: usize, timeout: std::time::Duration) {
    let drain = async {
        while seen <= DISCARD_MAX {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) | None => return,
            }
        }
    };
    let _ = tokio::time::timeout(timeout, drain).await;
}

/// Undo `Content-Encoding: gzip`; the inflated body must also fit `limit` (else
/// `too_large`). `reserve` is handed the size of every inflated chunk before it is kept,
/// as in [`read_limited`].
pub fn decode(
    raw: Bytes,
    headers: &HeaderMap,
    limit: usize,
    too_large: impl Fn() -> ApiError,
    mut reserve: impl FnMut(usize) -> Result<(), ApiError>,
) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let mut reader = flate2::read::MultiGzDecoder::new(&raw[..]);
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
            let mut chunk = vec![0u8; INFLATE_CHUNK];
            loop {
                let n = reader
                    .read(&mut chunk)
                    .map_err(|e| ApiError::BadRequest(format!("invalid gzip body: {e}")))?;
                if n == 0 {
                    break;
                }
                if out.len() + n > limit {
                    return Err(too_large());
                }
                reserve(n)?;
                out.extend_from_slice(&chunk[..n]);
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(ApiError::UnsupportedEncoding(other.to_string())),
    }
}

/// Bytes inflated per step: each step is counted before it is kept.
const INFLATE_CHUNK: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn big() -> ApiError {
        ApiError::TooLarge("over".into())
    }

    fn ok(_: usize) -> Result<(), ApiError> {
        Ok(())
    }

    fn headers(enc: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, enc.parse().unwrap());
        h
    }

    #[test]
    fn inflates_gzip_within_limit() {
        let out = decode(gz(b"{\"a\":1}"), &headers("gzip"), 100, big, ok).unwrap();
        assert_eq!(&out[..], b"{\"a\":1}");
    }

    #[test]
    fn gzip_bomb_is_413_not_oom() {
        let bomb = gz(&vec![b' '; 50 * 1024 * 1024]);
        assert!(bomb.len() < 100 * 1024, "compressed {}", bomb.len());
        let e = decode(bomb, &headers("gzip"), 512_000, big, ok).unwrap_err();
        assert_eq!(e.status(), 413);
    }

    #[test]
    fn bad_gzip_and_unknown_encoding() {
        assert_eq!(
            decode(Bytes::from_static(b"nope"), &headers("gzip"), 10, big, ok)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            decode(Bytes::from_static(b"x"), &headers("br"), 10, big, ok)
                .unwrap_err()
                .status(),
            415
        );
        assert_eq!(
            &decode(Bytes::from_static(b"x"), &HeaderMap::new(), 10, big, ok).unwrap()[..],
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
            big,
            ok,
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), 413);
        let ok = read_limited(
            Body::from(vec![0u8; 100]),
            &HeaderMap::new(),
            100,
            std::time::Duration::from_secs(5),
            big,
            ok,
        )
        .await
        .unwrap();
        assert_eq!(ok.len(), 100);
    }

    #[tokio::test]
    async fn every_chunk_is_reserved_before_it_is_kept() {
        let mut seen = 0;
        let body = Body::from(vec![1u8; 1000]);
        read_limited(
            body,
            &HeaderMap::new(),
            5000,
            std::time::Duration::from_secs(5),
            big,
            |n| {
                seen += n;
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!(seen, 1000);
        // A refused reservation ends the read with its error.
        let e = read_limited(
            Body::from(vec![1u8; 1000]),
            &HeaderMap::new(),
            5000,
            std::time::Duration::from_secs(5),
            big,
            |_| Err(ApiError::BadRequest("no room".into())),
        )
        .await
        .unwrap_err();
        assert_eq!(e.status(), 400);
        // Inflation reserves what it inflates.
        let mut inflated = 0;
        decode(gz(&[b'a'; 100_000]), &headers("gzip"), 200_000, big, |n| {
            inflated += n;
            Ok(())
        })
        .unwrap();
        assert_eq!(inflated, 100_000);
    }
}
