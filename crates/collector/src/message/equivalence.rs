//! The two readings of a message (the scanner and the `Value` tree) give the same
//! touchpoint or the same rejection, detail text included, on arbitrary messages: valid
//! ones, ones each rule rejects, and ones that are not JSON objects at all.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value};
use touchstream_core::{MessageType, Touchpoint};

use super::build::{build, Buffers};
use super::canonical;
use super::dom::Dom;
use super::reject::{RejectReason, Rejection};
use super::scan::Scanned;
use super::seam::{ObjectField, ScalarField, WRITE_KEY};
use super::tests::{batch_context, meta, RECEIVED};
use super::{to_touchpoint, BatchContext, RequestMeta, Validator};

/// The touchpoint or rejection of the `Value` reading.
fn reference(
    raw: &str,
    implied: Option<MessageType>,
    meta: &RequestMeta<'_>,
) -> Result<Touchpoint, Rejection> {
    let dom = Dom::parse(raw)?;
    build(&dom, &mut Buffers::default(), raw, implied, meta).map(|t| t.to_touchpoint())
}

/// The keys with a column of their own, and `writeKey`.
fn known_fields() -> impl Iterator<Item = &'static str> {
    ScalarField::ALL
        .into_iter()
        .map(ScalarField::key)
        .chain(ObjectField::ALL.into_iter().map(ObjectField::key))
        .chain([WRITE_KEY])
}

/// A batch context from generated text, when it is an object.
fn generated_batch_context(text: Option<String>) -> Option<BatchContext> {
    text.and_then(|b| serde_json::from_str::<Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
        .map(BatchContext::new)
}

#[test]
fn canonical_forms_and_context_merge_match_the_value_path() {
    let ctx = batch_context(
        json!({"channel": "mobile", "userAgent": "batch-ua", "z": [1, {"b": 2, "a": 1}]}),
    );
    let batch = RequestMeta {
        batch_context: Some(&ctx),
        ..meta()
    };
    for raw in [
        r#"{"type":"track","event":"E","userId":"u","properties":{"b":1,"a":{"d":1E2,"c":-0},"b":2},"zz":1,"aa":{"y":1,"x":2},"zz":3}"#,
        r#"{"type":"page","userId":"u","context":{"userAgent":7,"locale":"fr","channel":"web"}}"#,
        r#"{"type":"page","userId":"u","context":{"userAgent":"own\u0021"},"channel":null}"#,
        r#"{"type":"page","userId":"u","context":null,"context":{"channel":"store"}}"#,
        r#"{"type":"page","userId":"u","context":{"channel":"store"},"context":null}"#,
        r#"{"type":"page","userId":"u","channel":"email","context":{"channel":"store"}}"#,
        r#"{"type":"page","userId":"u","channel":"nope","context":{"channel":"store"}}"#,
        r#"{"t\u0079pe":"identify","userId":12.50,"messageId":7,"traits":{"\u00e9":"\u00e9","a\nb":"\/"}}"#,
        r#"{"type":"identify","userId":"u","messageId":"  "}"#,
        r#"{"type":"identify","userId":"u","writeKey":"k","integrations":{"All":false}}"#,
        r#"{"$serde_json::private::RawValue":"{\"type\":\"page\",\"userId\":\"u\"}"}"#,
        r#"{"type":"page","userId":"u","properties":{"$serde_json::private::RawValue":"[1]"}}"#,
        r#"{"type":"page","userId":"u","n":1e400}"#,
        r#"{"type":"page","userId":"u"} "#,
        r#"{"type":"page","userId":"u"} x"#,
        r#"["type"]"#,
    ] {
        for m in [&meta(), &batch] {
            let want = reference(raw, None, m);
            assert_eq!(to_touchpoint(raw, None, m), want, "{raw}");
        }
    }
}

/// A value for `key`: what clients send there, right or wrong.
fn value(key: &'static str) -> BoxedStrategy<String> {
    let pool: Vec<&'static str> = match key {
        "type" => vec![
            r#""track""#,
            r#""page""#,
            r#""screen""#,
            r#""identify""#,
            r#""alias""#,
            r#""purchase""#,
            r#""Track""#,
            r#""tr\u0061ck""#,
            "1",
            "null",
        ],
        "anonymousId" | "userId" | "previousId" | "messageId" => vec![
            r#""u-1""#,
            r#""a-\u00e9""#,
            r#""""#,
            r#"" ""#,
            r#""null""#,
            r#""Anonymous""#,
            r#""0""#,
            "0",
            "42",
            "-7",
            "1.5",
            "1E2",
            "-0",
            "18446744073709551616",
            "null",
            "true",
            r#"{"id":1}"#,
            "[]",
        ],
        "event" | "name" => vec![
            r#""Order Completed""#,
            r#""""#,
            r#"" ""#,
            "5",
            "null",
            "false",
            "[1]",
            r#""caf\u00e9""#,
        ],
        "timestamp" | "originalTimestamp" | "sentAt" => vec![
            r#""2025-11-25T11:59:00Z""#,
            r#""2025-11-25T11:59:00.123+01:00""#,
            r#""2025-11-25T11:59:00""#,
            r#""yesterday""#,
            r#""""#,
            "1700000000",
            "null",
            "{}",
        ],
        "channel" => vec![
            r#""browser""#,
            r#""mobile""#,
            r#""server""#,
            r#""store""#,
            r#""call_center""#,
            "null",
            "3",
        ],
        _ => vec![],
    };
    let json = prop_oneof![
        8 => canonical::tests::json_text_with(false),
        1 => canonical::tests::json_text(),
    ];
    if pool.is_empty() {
        prop_oneof![3 => context(), 1 => json].boxed()
    } else {
        prop_oneof![
            4 => prop::sample::select(pool).prop_map(String::from),
            1 => json,
        ]
        .boxed()
    }
}

/// Context-like objects: `channel`/`userAgent` of any type, repeats, nesting.
fn context() -> BoxedStrategy<String> {
    let key = prop::sample::select(vec![
        "channel",
        "userAgent",
        "locale",
        "library",
        "ip",
        "a",
        "userAgen\\u0074",
    ]);
    let val = prop_oneof![
        prop::sample::select(vec![
            r#""browser""#,
            r#""mobile""#,
            r#""web""#,
            r#""store""#,
            r#""email""#,
            r#""ua-\"1\"""#,
            "null",
            "1",
            r#"{"name":"analytics.js","version":"1"}"#,
            "[]",
            r#""""#,
        ])
        .prop_map(String::from),
        canonical::tests::json_text_with(false),
    ];
    prop::collection::vec((key, val), 0..5)
        .prop_map(|entries| {
            let body: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
        .boxed()
}

/// Messages that often pass validation (a plausible core in random order) with
/// any other fields, right or wrong, repeated or not, around it.
fn message() -> impl Strategy<Value = String> {
    // Every field with a column of its own, plus unknown and escaped ones.
    let keys: Vec<&'static str> = known_fields()
        .chain([
            "integrations",
            "_metadata",
            "zz",
            "a\\u0062",
            "\\u0074ype",
            "",
        ])
        .collect();
    let key = prop::sample::select(keys);
    let entry = |k: &'static str| {
        let unescaped: &'static str = match k {
            "\\u0074ype" => "type",
            other => other,
        };
        (Just(k), value(unescaped), " ?")
    };
    let core = (
        prop::sample::select(vec![
            r#""track""#,
            r#""page""#,
            r#""screen""#,
            r#""identify""#,
            r#""alias""#,
        ]),
        prop::sample::select(vec![r#""anon-1""#, r#""anon-\u00e9""#, "17"]),
        prop::sample::select(vec![r#""user-1""#, "42"]),
        prop::sample::select(vec![r#""Order Completed""#, r#""Home""#]),
        prop::sample::select(vec![
            r#""2025-11-25T11:59:00.123Z""#,
            r#""2025-11-25T11:00:00Z""#,
        ]),
        prop::sample::select(vec![
            r#""2025-11-25T11:59:01Z""#,
            r#""2025-11-25T11:00:02Z""#,
        ]),
        context(),
        prop::sample::subsequence(
            vec![
                "type",
                "anonymousId",
                "userId",
                "previousId",
                "event",
                "name",
                "timestamp",
                "sentAt",
                "context",
            ],
            0..=9,
        ),
    )
        .prop_map(|(t, a, u, e, ts, sent, ctx, keep)| {
            let all = [
                ("type", t.to_string()),
                ("anonymousId", a.to_string()),
                ("userId", u.to_string()),
                ("previousId", a.to_string()),
                ("event", e.to_string()),
                ("name", e.to_string()),
                ("timestamp", ts.to_string()),
                ("sentAt", sent.to_string()),
                ("context", ctx),
            ];
            all.into_iter()
                .filter(|(k, _)| keep.contains(k))
                .map(|(k, v)| (k, v, String::new()))
                .collect::<Vec<_>>()
        });
    let others = prop::collection::vec(key.prop_flat_map(entry), 0..5);
    (core, others)
        .prop_flat_map(|(mut core, others)| {
            core.extend(others);
            Just(core).prop_shuffle()
        })
        .prop_map(|entries| {
            let body: Vec<String> = entries
                .iter()
                .map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
}

/// The generator reaches every outcome: acceptance and each rejection reason.
#[test]
fn messages_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        let raw = strategy.new_tree(&mut runner).unwrap().current();
        let outcome =
            reference(&raw, None, &meta()).map_or_else(|r| r.reason.label(), |_| "accepted");
        seen.insert(outcome);
    }
    let mut want: Vec<&str> = [
        RejectReason::Malformed,
        RejectReason::UnknownType,
        RejectReason::MissingIdentity,
        RejectReason::PlaceholderId,
        RejectReason::MissingEvent,
        RejectReason::MissingAliasIds,
        RejectReason::InvalidTimestamp,
        RejectReason::InvalidField,
    ]
    .map(RejectReason::label)
    .to_vec();
    want.push("accepted");
    want.sort();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), want);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The scanner's reading gives exactly what the `Value` reading gives — touchpoint or
    /// rejection with its detail — and declines only what `Value` reads differently from
    /// an object; the entry point (scanner, else `Value`) answers the same.
    #[test]
    fn scanner_equals_value_reading(
        raw in message(),
        implied in proptest::option::of(proptest::sample::select(MessageType::ALL.to_vec())),
        batch in proptest::option::of(context()),
        batch_sent_at in proptest::option::of(RECEIVED - 5_000..RECEIVED),
        header_ua in proptest::option::of(Just("ua-header".to_string())),
    ) {
        let ctx = generated_batch_context(batch);
        let m = RequestMeta {
            batch_context: ctx.as_ref(),
            batch_sent_at_ms: batch_sent_at,
            user_agent: header_ua,
            ..meta()
        };
        let want = reference(&raw, implied, &m);
        let mut scanned = Scanned::default();
        let mut bufs = Buffers::default();
        let fast = scanned
            .scan(&raw, m.batch_context.is_some())
            .then(|| build(&scanned, &mut bufs, &raw, implied, &m).map(|t| t.to_touchpoint()));
        match fast {
            Some(got) => prop_assert_eq!(got, want.clone()),
            None => prop_assert!(
                !serde_json::from_str::<Value>(&raw).is_ok_and(|v| v.is_object())
                    || raw.contains(canonical::RAW_VALUE_TOKEN),
                "declined a plain object: {}", raw
            ),
        }
        prop_assert_eq!(to_touchpoint(&raw, implied, &m), want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// One validator over a request's messages: nothing of a message leaks into the next
    /// (the buffers are reused).
    #[test]
    fn a_reused_validator_equals_the_value_reading(
        raws in prop::collection::vec(message(), 1..6),
        batch in proptest::option::of(context()),
    ) {
        let ctx = generated_batch_context(batch);
        let m = RequestMeta {
            batch_context: ctx.as_ref(),
            ..meta()
        };
        let mut v = Validator::new();
        for raw in &raws {
            let got = v.validate(raw, None, &m).map(|t| t.to_touchpoint());
            prop_assert_eq!(got, reference(raw, None, &m));
        }
    }
}
