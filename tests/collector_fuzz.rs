//! Bad HTTP input never breaks the collector (a real one, in-process, on the real broker).
//!
//! A fixed list of known-nasty bodies (10,000 and 100,000 nested arrays, a message exactly
//! at and one byte over 32 KiB, bodies over 500 KiB, gzip bombs, invalid UTF-8, ...) runs
//! first, then a proptest run of generated requests: arbitrary bytes, mutated and truncated
//! JSON, wrong JSON types in every field, huge strings, deep nesting, bad timestamps,
//! out-of-range numbers, gzip of garbage, odd encodings and auth. Every answer must be
//! - `200` with `{"success":true,"accepted":N,"rejected":[{index,reason,detail},..]}`, or
//! - `400`/`401`/`413`/`415` with a JSON error body (`success:false`, `error`),
//!
//! never a dropped connection, a panic or another 5xx; a `503` would only be allowed with
//! `Retry-After`, and with a healthy broker none may occur. Afterwards `/healthz` still
//! answers, and the records in the raw and DLQ topics match the responses exactly (every
//! accepted message in `touchpoints.raw`, every listed rejection in the DLQ, nothing for a
//! refused request).
//!
//! Deterministic: the proptest RNG is ChaCha with a fixed seed. Knobs:
//! - `TOUCHSTREAM_FUZZ_CASES` (else `PROPTEST_CASES`, else 256): generated cases. The long
//!   run is `TOUCHSTREAM_FUZZ_CASES=100000 cargo test -p touchstream-tests --test collector_fuzz -- --nocapture`.
//! - `TOUCHSTREAM_FUZZ_SEED` (u64, default 20260101): another seed explores other inputs;
//!   a failure report prints the seed and the shrunk case, so it can be replayed.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::Value;
use touchstream_core::config::{Config, SourceConfig};
use touchstream_tests::{self as support, CollectorHandle};

const KEY: &str = "fuzz-key";
const DEFAULT_CASES: u32 = 256;
const DEFAULT_SEED: u64 = 20_260_101;

/// Every ingest route.
const PATHS: [&str; 7] = [
    "/v1/batch",
    "/v1/import",
    "/v1/track",
    "/v1/page",
    "/v1/screen",
    "/v1/identify",
    "/v1/alias",
];

/// Rejection codes the collector may list (`RejectReason::label`).
const REASONS: [&str; 10] = [
    "malformed",
    "unknown_type",
    "missing_identity",
    "placeholder_id",
    "missing_event",
    "missing_alias_ids",
    "invalid_timestamp",
    "invalid_field",
    "event_time_before_floor",
    "event_time_too_old",
];

/// How the request authenticates.
#[derive(Debug, Clone)]
enum Auth {
    /// Basic auth with the right key.
    Header,
    /// No header (the body may carry `writeKey`).
    Absent,
    /// Basic auth with an unknown key.
    WrongKey,
    /// An `Authorization` header of this raw value.
    Raw(&'static str),
}

/// One HTTP request.
#[derive(Clone)]
struct Case {
    path: &'static str,
    auth: Auth,
    content_encoding: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    /// Status the contract fixes for this input, where it does.
    expect: Option<u16>,
}

impl std::fmt::Debug for Case {
    // Bodies can be 600 KiB: show the start, the length and the exact bytes' shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        f.debug_struct("Case")
            .field("path", &self.path)
            .field("auth", &self.auth)
            .field("content_encoding", &self.content_encoding)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body.len())
            .field("body_head", &head)
            .field("expect", &self.expect)
            .finish()
    }
}

/// A JSON tree rendered by hand, so numbers can be any literal (`1e400`,
/// `18446744073709551616`) and objects can repeat keys.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn render(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    J::Str(k.clone()).render(out);
                    out.push(':');
                    v.render(out);
                }
                out.push('}');
            }
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        self.render(&mut s);
        s
    }

    fn s(v: &str) -> J {
        J::Str(v.to_string())
    }
}

fn nasty_string() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[a-z0-9-]{1,12}",
        2 => any::<String>(),
        2 => prop::sample::select(vec![
            "", " ", "\t\n", "null", "NULL", "undefined", "0", "anonymous", "\u{0}",
            "\u{FEFF}", "\u{1F600}\u{1F600}", "\u{202E}evil", "a\"b\\c/d", "\u{FFFF}",
            "<script>alert(1)</script>", "'; DROP TABLE events; --", "%s%n%x", "../../etc/passwd",
            "\u{7f}\u{80}\u{9f}", "ＡＢＣ", "e\u{301}",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

fn number_literal() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        prop::sample::select(vec![
            "0",
            "-0",
            "-1",
            "1e400",
            "-1e400",
            "1e308",
            "5e-324",
            "1E+2",
            "0.1e-999",
            "18446744073709551616",
            "-9223372036854775809",
            "9223372036854775807",
            "123456789012345678901234567890.5",
        ])
        .prop_map(String::from),
    ]
    .boxed()
}

fn timestamp() -> BoxedStrategy<J> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "2026-01-01T10:00:00Z", "2026-01-01T10:00:00.123Z", "2026-01-01T10:00:00.123456789+05:30",
            "2026-01-01T10:00:00-12:00", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z",
            "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "2106-02-07T06:28:16Z",
            "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z",
            "2016-12-31T23:59:60Z", "2026-01-01", "2026-01-01 10:00:00", "2026-01-01T10:00:00",
            "1767261600", "yesterday", "", "T", "-2026-01-01T00:00:00Z", "+275760-09-13T00:00:00Z",
        ])
        .prop_map(J::s),
        1 => nasty_string().prop_map(J::Str),
        1 => number_literal().prop_map(J::Num),
        1 => arbitrary_json(),
    ]
    .boxed()
}

fn arbitrary_json() -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number_literal().prop_map(J::Num),
        nasty_string().prop_map(J::Str),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((nasty_string(), inner), 0..6).prop_map(J::Obj),
        ]
    })
    .boxed()
}

/// Mostly a plausible value for `field`, sometimes anything at all.
fn field_value(field: &'static str) -> BoxedStrategy<J> {
    let plausible: BoxedStrategy<J> = match field {
        "type" => prop::sample::select(vec!["track", "page", "screen", "identify", "alias"])
            .prop_map(J::s)
            .boxed(),
        "event" => prop::sample::select(vec![
            "Product Viewed",
            "Order Completed",
            "Complaint Filed",
            " ",
        ])
        .prop_map(J::s)
        .boxed(),
        "anonymousId" | "userId" | "previousId" | "messageId" | "name" | "channel" => {
            nasty_string().prop_map(J::Str).boxed()
        }
        "timestamp" | "sentAt" | "originalTimestamp" => timestamp(),
        _ => prop::collection::vec((nasty_string(), arbitrary_json()), 0..5)
            .prop_map(J::Obj)
            .boxed(),
    };
    prop_oneof![4 => plausible, 1 => arbitrary_json()].boxed()
}

const FIELDS: [&str; 14] = [
    "type",
    "messageId",
    "anonymousId",
    "userId",
    "previousId",
    "event",
    "name",
    "properties",
    "traits",
    "context",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "channel",
];

/// A Segment-ish message: each known field present with probability 1/2, plus strays.
fn message() -> BoxedStrategy<J> {
    let fields: Vec<BoxedStrategy<Option<(String, J)>>> = FIELDS
        .iter()
        .map(|f| prop::option::of(field_value(f).prop_map(move |v| (f.to_string(), v))).boxed())
        .collect();
    (
        fields,
        prop::collection::vec((nasty_string(), arbitrary_json()), 0..3),
        prop::option::weighted(0.1, prop::sample::select(vec![KEY, "nope", ""])),
    )
        .prop_map(|(known, stray, key)| {
            let mut obj: Vec<(String, J)> = known.into_iter().flatten().collect();
            obj.extend(stray);
            if let Some(k) = key {
                obj.push(("writeKey".into(), J::s(k)));
            }
            J::Obj(obj)
        })
        .boxed()
}

/// A JSON object of odd keys and values.
fn object() -> BoxedStrategy<J> {
    prop::collection::vec((nasty_string(), arbitrary_json()), 0..5)
        .prop_map(J::Obj)
        .boxed()
}

/// A message that passes validation unless a fuzzed optional field breaks it: odd
/// strings, objects and timestamps in an otherwise well-formed touchpoint.
fn valid_message() -> BoxedStrategy<J> {
    (
        prop::sample::select(vec!["track", "page", "screen", "identify", "alias"]),
        "[a-z][a-z0-9-]{0,11}",
        "[A-Z][a-z0-9-]{0,11}",
        nasty_string(),
        prop::option::weighted(0.3, timestamp()),
        prop::option::weighted(0.5, object()),
        prop::option::weighted(0.3, object()),
        prop::option::of(nasty_string()),
    )
        .prop_map(|(ty, anon, user, event, ts, props, ctx, message_id)| {
            let mut obj = vec![
                ("type".to_string(), J::s(ty)),
                ("anonymousId".to_string(), J::Str(anon.clone())),
                ("userId".to_string(), J::Str(user)),
                ("previousId".to_string(), J::Str(format!("{anon}-prev"))),
                ("event".to_string(), J::Str(format!("E {event}"))),
                ("name".to_string(), J::Str(event)),
            ];
            for (k, v) in [
                ("timestamp", ts),
                ("properties", props),
                ("context", ctx),
                ("messageId", message_id.map(J::Str)),
            ] {
                if let Some(v) = v {
                    obj.push((k.to_string(), v));
                }
            }
            J::Obj(obj)
        })
        .boxed()
}

/// A body for `path`: a batch envelope or one message, sometimes of the wrong shape.
fn json_body(path: &'static str) -> BoxedStrategy<J> {
    if path == "/v1/batch" || path == "/v1/import" {
        let batch = prop_oneof![
            8 => prop::collection::vec(
                prop_oneof![4 => valid_message(), 4 => message(), 1 => arbitrary_json()],
                0..6,
            )
                .prop_map(J::Arr),
            1 => arbitrary_json(),
        ];
        (
            batch,
            prop::option::weighted(0.3, timestamp()),
            prop::option::weighted(0.2, field_value("context")),
            prop::option::weighted(0.2, prop::sample::select(vec![KEY, "nope"])),
        )
            .prop_map(|(batch, sent_at, context, key)| {
                let mut obj = vec![("batch".to_string(), batch)];
                if let Some(s) = sent_at {
                    obj.push(("sentAt".into(), s));
                }
                if let Some(c) = context {
                    obj.push(("context".into(), c));
                }
                if let Some(k) = key {
                    obj.push(("writeKey".into(), J::s(k)));
                }
                J::Obj(obj)
            })
            .boxed()
    } else {
        prop_oneof![4 => valid_message(), 4 => message(), 1 => arbitrary_json()].boxed()
    }
}

/// Ways to break a well-formed body's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    Flip(prop::sample::Index, u8),
    InvalidUtf8(prop::sample::Index, &'static [u8]),
    Bom,
}

fn mutation() -> BoxedStrategy<Mutation> {
    prop_oneof![
        24 => Just(Mutation::None),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![
                &b"\xff"[..], b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\xe2\x82",
            ]),
        )
            .prop_map(|(i, b)| Mutation::InvalidUtf8(i, b)),
        1 => Just(Mutation::Bom),
    ]
    .boxed()
}

fn mutate(mut body: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let at = |i: &prop::sample::Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::None => {}
        Mutation::Truncate(i) => body.truncate(at(i, body.len())),
        Mutation::Insert(i, bytes) => {
            let p = at(i, body.len());
            body.splice(p..p, bytes.iter().copied());
        }
        Mutation::Flip(i, b) => {
            if !body.is_empty() {
                let p = at(i, body.len());
                body[p] ^= b | 1;
            }
        }
        Mutation::InvalidUtf8(i, bytes) => {
            // Inside a string literal when one is there, so only the encoding is wrong.
            let quotes: Vec<usize> = body
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == b'"')
                .map(|(p, _)| p + 1)
                .collect();
            let p = if quotes.is_empty() {
                at(i, body.len())
            } else {
                quotes[i.index(quotes.len())]
            };
            body.splice(p..p, bytes.iter().copied());
        }
        Mutation::Bom => {
            body.splice(0..0, *b"\xef\xbb\xbf");
        }
    }
    body
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// Deeply nested JSON: `depth` arrays (or objects), closed or not.
fn nested(depth: usize, objects: bool, closed: bool) -> String {
    let (open, close) = if objects {
        (r#"{"a":"#, "}")
    } else {
        ("[", "]")
    };
    let mut s = open.repeat(depth);
    s.push('1');
    if closed {
        s.push_str(&close.repeat(depth));
    }
    s
}

/// Place `inner` (JSON text) where `placement` says, for `path`.
fn embed(path: &str, inner: &str, placement: u8) -> String {
    let batch = path == "/v1/batch" || path == "/v1/import";
    match (placement % 4, batch) {
        (0, _) => inner.to_string(),
        (1, true) => format!(r#"{{"batch":[{inner}]}}"#),
        (2, true) => format!(
            r#"{{"batch":[{{"type":"track","event":"E","userId":"u","properties":{{"p":{inner}}}}}]}}"#
        ),
        (3, true) => format!(r#"{{"batch":{inner}}}"#),
        (_, false) => format!(
            r#"{{"event":"E","userId":"u","name":"n","previousId":"p","properties":{{"p":{inner}}}}}"#
        ),
        _ => inner.to_string(),
    }
}

/// A message of exactly `len` bytes of JSON text (for `len` ≥ 80).
fn message_of_len(len: usize, fill: char) -> String {
    let head = r#"{"type":"track","event":"Big","anonymousId":"a-big","properties":{"s":""#;
    let tail = r#""}}"#;
    let room = len - head.len() - tail.len();
    let fill_len = fill.len_utf8();
    let mut s = String::with_capacity(len);
    s.push_str(head);
    for _ in 0..room / fill_len {
        s.push(fill);
    }
    for _ in 0..room % fill_len {
        s.push('x');
    }
    s.push_str(tail);
    assert_eq!(s.len(), len);
    s
}

fn path_strategy() -> BoxedStrategy<&'static str> {
    prop::sample::select(PATHS.to_vec()).boxed()
}

fn auth_strategy() -> BoxedStrategy<Auth> {
    prop_oneof![
        12 => Just(Auth::Header),
        2 => Just(Auth::Absent),
        1 => Just(Auth::WrongKey),
        1 => prop::sample::select(vec![
            "Basic", "Basic ", "Basic !!!!", "Basic /w==", "Bearer fuzz-key", "basic ZnV6ei1rZXk6",
            "Basic ZnV6ei1rZXk", "Basic OmZ1enota2V5", "Basic //79/A==",
        ])
        .prop_map(Auth::Raw),
    ]
    .boxed()
}

fn header_strategy() -> BoxedStrategy<(Option<&'static str>, Option<&'static str>)> {
    (
        prop::option::weighted(
            0.1,
            prop::sample::select(vec![
                "identity",
                "br",
                "deflate",
                "gzip, deflate",
                "GZIP",
                " x-gzip ",
                "",
                "gzip;q=1",
            ]),
        ),
        prop::option::weighted(
            0.7,
            prop::sample::select(vec![
                "application/json",
                "text/plain;charset=UTF-8",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin1",
                "not a media type",
            ]),
        ),
    )
        .boxed()
}

/// Generated requests.
fn case_strategy() -> BoxedStrategy<Case> {
    let json_case = path_strategy()
        .prop_flat_map(|path| (Just(path), json_body(path), mutation()))
        .prop_map(|(path, body, m)| (path, mutate(body.text().into_bytes(), &m)));
    let bytes_case = (path_strategy(), prop::collection::vec(any::<u8>(), 0..2048));
    let huge_case = (
        path_strategy(),
        prop_oneof![
            32_700usize..32_840,
            100_000usize..100_010,
            520_000usize..530_000
        ],
        prop::sample::select(vec!['x', 'é', '\u{1F600}']),
    )
        .prop_map(|(path, len, fill)| {
            let msg = message_of_len(len, fill);
            (path, embed(path, &msg, 1).into_bytes())
        });
    let deep_case = (
        path_strategy(),
        prop::sample::select(vec![100usize, 127, 128, 129, 1_000, 10_000, 100_000]),
        any::<bool>(),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(|(path, depth, objects, closed, placement)| {
            let inner = nested(depth, objects, closed);
            (path, embed(path, &inner, placement).into_bytes())
        });
    let body = prop_oneof![
        16 => json_case.boxed(),
        2 => bytes_case.boxed(),
        1 => huge_case.boxed(),
        2 => deep_case.boxed(),
    ];
    // Gzip: the body compressed, garbage claimed to be gzip, or a cut gzip stream.
    let gz = prop_oneof![
        24 => Just(0u8),
        1 => Just(1u8),
        1 => Just(2u8),
        1 => Just(3u8),
        1 => Just(4u8),
    ];
    (body, auth_strategy(), header_strategy(), gz)
        .prop_map(|((path, body), auth, (enc, ctype), gz)| {
            let (body, enc) = match gz {
                1 => (gzip(&body), Some("gzip")),
                2 => (body, Some("gzip")),
                3 => {
                    let z = gzip(&body);
                    (z[..z.len() / 2].to_vec(), Some("gzip"))
                }
                4 => (gzip(&gzip(&body)), Some("gzip")),
                _ => (body, enc),
            };
            Case {
                path,
                auth,
                content_encoding: enc,
                content_type: ctype,
                body,
                expect: None,
            }
        })
        .boxed()
}

/// The known-nasty inputs, run on every test run before the generated ones.
fn fixed_cases() -> Vec<Case> {
    let case = |path: &'static str, body: Vec<u8>, expect: Option<u16>| Case {
        path,
        auth: Auth::Header,
        content_encoding: None,
        content_type: Some("application/json"),
        body,
        expect,
    };
    let mut out = Vec::new();
    for depth in [128usize, 129, 10_000, 100_000] {
        for objects in [false, true] {
            for placement in 0..4 {
                for path in ["/v1/batch", "/v1/track"] {
                    let body = embed(path, &nested(depth, objects, true), placement);
                    out.push(case(path, body.into_bytes(), None));
                }
            }
        }
    }
    // The 32 KiB message limit, exactly at and one byte over, with 1- and 4-byte chars.
    for fill in ['x', '\u{1F600}'] {
        let at = message_of_len(32 * 1024, fill);
        let over = message_of_len(32 * 1024 + 1, fill);
        out.push(case(
            "/v1/batch",
            embed("/v1/batch", &at, 1).into_bytes(),
            Some(200),
        ));
        out.push(case("/v1/track", at.clone().into_bytes(), Some(200)));
        out.push(case(
            "/v1/batch",
            embed("/v1/batch", &over, 1).into_bytes(),
            Some(413),
        ));
        out.push(case("/v1/track", over.into_bytes(), Some(413)));
    }
    // Over 500 KiB on the wire, and small on the wire but over it inflated.
    let huge = embed("/v1/batch", &message_of_len(600 * 1024, 'x'), 1);
    out.push(case("/v1/batch", huge.clone().into_bytes(), Some(413)));
    let mut bomb = case("/v1/batch", gzip(huge.as_bytes()), Some(413));
    bomb.content_encoding = Some("gzip");
    out.push(bomb);
    let mut bomb = case("/v1/batch", gzip(&vec![b' '; 20 << 20]), Some(413));
    bomb.content_encoding = Some("gzip");
    out.push(bomb);
    // Gzip of garbage, garbage claimed as gzip, an unknown encoding.
    let mut g = case("/v1/batch", gzip(&[0xff, 0x00, 0x13, 0x37]), Some(400));
    g.content_encoding = Some("gzip");
    out.push(g);
    let mut g = case("/v1/batch", b"\x1f\x8b\x08garbage".to_vec(), Some(400));
    g.content_encoding = Some("gzip");
    out.push(g);
    let mut g = case("/v1/batch", br#"{"batch":[]}"#.to_vec(), Some(415));
    g.content_encoding = Some("br");
    out.push(g);
    // Not UTF-8, empty, not JSON, JSON of the wrong shape.
    out.push(case(
        "/v1/batch",
        b"{\"batch\":[{\"type\":\"track\",\"event\":\"\xff\xfe\",\"userId\":\"u\"}]}".to_vec(),
        Some(400),
    ));
    out.push(case("/v1/track", b"\xc3\x28".to_vec(), Some(400)));
    out.push(case("/v1/batch", Vec::new(), Some(400)));
    out.push(case("/v1/track", Vec::new(), Some(400)));
    out.push(case("/v1/batch", b"null".to_vec(), Some(400)));
    out.push(case("/v1/batch", br#"{"batch":{}}"#.to_vec(), Some(400)));
    out.push(case(
        "/v1/batch",
        br#"{"batch":[1,"x",null,[]]}"#.to_vec(),
        Some(200),
    ));
    out.push(case("/v1/track", b"[]".to_vec(), None));
    out.push(case("/v1/track", b"\"just a string\"".to_vec(), None));
    // Out-of-range numbers, bad timestamps and types in otherwise fine messages.
    for (path, body) in [
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","event":"E","userId":1e400}]}"#,
        ),
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","event":"E","userId":-1,"messageId":18446744073709551616}]}"#,
        ),
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","event":"E","userId":"u","timestamp":"+275760-09-13T00:00:00Z","sentAt":"-9999-01-01T00:00:00Z"}]}"#,
        ),
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","event":"E","userId":"u","timestamp":"9999-12-31T23:59:59.999Z","sentAt":"0000-01-01T00:00:00Z"}]}"#,
        ),
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","event":"E","userId":"u","timestamp":1767261600}]}"#,
        ),
        ("/v1/batch", r#"{"batch":[],"sentAt":12}"#),
        (
            "/v1/track",
            r#"{"event":["E"],"userId":{"id":1},"properties":[]}"#,
        ),
        ("/v1/alias", r#"{"previousId":true,"userId":1.5e300}"#),
    ] {
        out.push(case(path, body.as_bytes().to_vec(), None));
    }
    // Auth problems.
    let mut a = case("/v1/batch", br#"{"batch":[]}"#.to_vec(), Some(401));
    a.auth = Auth::Absent;
    out.push(a);
    let mut a = case("/v1/batch", br#"{"batch":[]}"#.to_vec(), Some(401));
    a.auth = Auth::Raw("Basic //79/A==");
    out.push(a);
    out
}

/// Totals over every answered request, compared with the topics at the end.
#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    unavailable: AtomicU64,
    by_status: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

async fn send_and_check(
    http: &reqwest::Client,
    base: &str,
    case: &Case,
    totals: &Totals,
) -> Result<(), String> {
    let mut req = http
        .post(format!("{base}{}", case.path))
        .timeout(Duration::from_secs(60))
        .body(case.body.clone());
    match &case.auth {
        Auth::Header => req = req.basic_auth(KEY, Some("")),
        Auth::Absent => {}
        Auth::WrongKey => req = req.basic_auth("wrong-key", Some("")),
        Auth::Raw(v) => req = req.header("authorization", *v),
    }
    if let Some(e) = case.content_encoding {
        req = req.header("content-encoding", e);
    }
    if let Some(t) = case.content_type {
        req = req.header("content-type", t);
    }
    let resp = req.send().await.map_err(|e| {
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        format!("no answer (connection dropped: a panic?): {chain}")
    })?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").cloned();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("reading answer: {e}"))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "status {status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    totals.requests.fetch_add(1, Ordering::Relaxed);
    *totals
        .by_status
        .lock()
        .map_err(|e| e.to_string())?
        .entry(status)
        .or_default() += 1;
    if let Some(want) = case.expect {
        if status != want {
            return Err(format!("expected {want}, got {status}: {doc}"));
        }
    }
    match status {
        200 => {
            if doc["success"] != true {
                return Err(format!("200 without success: {doc}"));
            }
            let accepted = doc["accepted"]
                .as_u64()
                .ok_or_else(|| format!("200 without accepted: {doc}"))?;
            let rejected = doc["rejected"]
                .as_array()
                .ok_or_else(|| format!("200 without a rejected list: {doc}"))?;
            for r in rejected {
                let reason = r["reason"].as_str().unwrap_or_default();
                if r["index"].as_u64().is_none()
                    || !REASONS.contains(&reason)
                    || r["detail"].as_str().is_none()
                {
                    return Err(format!("bad rejection entry {r} in {doc}"));
                }
            }
            if case.path != "/v1/batch"
                && case.path != "/v1/import"
                && accepted + rejected.len() as u64 != 1
            {
                return Err(format!(
                    "a single-message endpoint answered for {accepted} + {} messages",
                    rejected.len()
                ));
            }
            totals.accepted.fetch_add(accepted, Ordering::Relaxed);
            totals
                .rejected
                .fetch_add(rejected.len() as u64, Ordering::Relaxed);
            Ok(())
        }
        400 | 401 | 413 | 415 => {
            if doc["success"] != false
                || doc["error"].as_str().is_none_or(str::is_empty)
                || doc["retryable"] != false
            {
                return Err(format!("status {status} with a bad error body: {doc}"));
            }
            Ok(())
        }
        503 if retry_after.is_some() && doc["retryable"] == true => {
            totals.unavailable.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        other => Err(format!("status {other}: {doc}")),
    }
}

fn env_number<T: std::str::FromStr>(names: &[&str], default: T) -> T {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{names:?} must be a number, got {v:?}"))
        })
        .unwrap_or(default)
}

#[test]
fn bad_http_input_never_breaks_the_collector() {
    support::require_port("Kafka", &support::kafka_brokers());
    let cases: u32 = env_number(&["TOUCHSTREAM_FUZZ_CASES", "PROPTEST_CASES"], DEFAULT_CASES);
    let seed: u64 = env_number(&["TOUCHSTREAM_FUZZ_SEED"], DEFAULT_SEED);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");

    let mut config = Config {
        kafka: support::kafka_config("fuzz"),
        ..Config::default()
    };
    config.collector.sources = vec![SourceConfig::new("web", KEY, "web")];
    rt.block_on(touchstream_core::kafka::ensure_topics(&config.kafka, &[]))
        .expect("topics");
    let collector = rt.block_on(CollectorHandle::start(config.clone()));
    // A fresh connection per request: a dropped connection then means the collector
    // dropped it, not that a pooled keep-alive connection raced with its closing.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let totals = Totals::default();

    let fixed = fixed_cases();
    for case in &fixed {
        if let Err(e) = rt.block_on(send_and_check(&http, &collector.base, case, &totals)) {
            panic!("fixed case {case:?}: {e}");
        }
    }

    let started = Instant::now();
    let mut seed_bytes = [0u8; 32];
    for chunk in seed_bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig {
            cases,
            failure_persistence: None,
            max_shrink_iters: 512,
            ..ProptestConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let done = AtomicU64::new(0);
    let result = runner.run(&case_strategy(), |case| {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        if n % 10_000 == 0 {
            println!("{n} cases in {:?}", started.elapsed());
        }
        rt.block_on(send_and_check(&http, &collector.base, &case, &totals))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }

    // Still alive and still ingesting.
    let health = rt
        .block_on(http.get(format!("{}/healthz", collector.base)).send())
        .expect("healthz answers after the fuzz run");
    assert_eq!(health.status(), 200);
    let ok = rt
        .block_on(
            http.post(format!("{}/v1/track", collector.base))
                .basic_auth(KEY, Some(""))
                .body(r#"{"event":"After Fuzz","userId":"u-after"}"#)
                .send(),
        )
        .expect("track after the fuzz run");
    assert_eq!(ok.status(), 200);
    totals.accepted.fetch_add(1, Ordering::Relaxed);
    assert!(
        collector.task.as_ref().is_some_and(|t| !t.is_finished()),
        "the collector is still serving"
    );

    let by_status = totals.by_status.lock().expect("totals").clone();
    println!(
        "{} requests ({} fixed, {cases} generated, seed {seed}) in {:?}; by status {by_status:?}; {} messages accepted, {} rejected",
        totals.requests.load(Ordering::Relaxed),
        fixed.len(),
        started.elapsed(),
        totals.accepted.load(Ordering::Relaxed),
        totals.rejected.load(Ordering::Relaxed),
    );
    assert_eq!(
        totals.unavailable.load(Ordering::Relaxed),
        0,
        "503s with a healthy broker"
    );

    // What reached Kafka is exactly what the answers said: nothing lost, nothing extra.
    let raw = rt.block_on(support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.raw_topic,
        Duration::from_secs(3),
    ));
    for (_, v) in &raw {
        touchstream_core::avro::decode(v).expect("every raw record decodes");
    }
    let dlq = rt.block_on(support::drain_topic(
        &config.kafka.brokers,
        &config.kafka.dlq_topic,
        Duration::from_secs(3),
    ));
    for (_, v) in &dlq {
        match serde_json::from_slice::<Value>(v) {
            Ok(doc) => assert!(
                doc["reason"].as_str().is_some_and(|r| REASONS.contains(&r)),
                "{doc}"
            ),
            Err(e) => panic!(
                "DLQ record is not JSON ({e}): {:?}",
                String::from_utf8_lossy(v)
            ),
        }
    }
    assert_eq!(
        raw.len() as u64,
        totals.accepted.load(Ordering::Relaxed),
        "raw records = accepted messages"
    );
    assert_eq!(
        dlq.len() as u64,
        totals.rejected.load(Ordering::Relaxed),
        "DLQ records = rejected messages"
    );
    rt.block_on(collector.stop());
}
