//! The codec against itself and against apache-avro: round trips, the hand-written
//! encoder byte for byte and the hand-written decoder value for value (proptests over
//! arbitrary and damaged records), the schema fingerprint.

use apache_avro::types::Value;

use super::*;
use crate::event::{MessageType, Touchpoint};

/// Every field set to a distinctive value, so a swapped or dropped field shows.
fn full() -> Touchpoint {
    Touchpoint {
        event_id: "msg-1".into(),
        message_type: MessageType::Alias,
        event: Some("Order Completed".into()),
        anonymous_id: Some("anon-ä-1".into()),
        user_id: Some("user-42".into()),
        previous_id: Some("anon-0".into()),
        event_time_ms: 1_700_000_000_123,
        timestamp_ms: Some(1_700_000_000_100),
        sent_at_ms: Some(1_700_000_000_200),
        received_at_ms: 1_700_000_000_300,
        source: "web".into(),
        channel: "call_center".into(),
        properties: r#"{"revenue":12.5}"#.into(),
        traits: r#"{"plan":"pro"}"#.into(),
        context: r#"{"locale":"de-DE"}"#.into(),
        ip: Some("203.0.113.7".into()),
        user_agent: Some("Mozilla/5.0".into()),
        extra: r#"{"integrations":{"All":true}}"#.into(),
    }
}

#[test]
fn round_trips_every_field() {
    let tp = full();
    let bytes = encode(&tp).unwrap();
    assert_eq!(&bytes[..2], &SINGLE_OBJECT_MAGIC);
    assert_eq!(decode(&bytes).unwrap(), tp);
}

#[test]
fn round_trips_all_optionals_absent_and_every_type() {
    for t in MessageType::ALL {
        let tp = Touchpoint {
            message_type: t,
            event: None,
            anonymous_id: None,
            user_id: Some("u".into()),
            previous_id: None,
            timestamp_ms: None,
            sent_at_ms: None,
            ip: None,
            user_agent: None,
            event_time_ms: -5,
            ..full()
        };
        assert_eq!(decode(&encode(&tp).unwrap()).unwrap(), tp);
    }
}

#[test]
fn rejects_foreign_bytes() {
    assert!(matches!(decode(b"{}"), Err(CodecError::NotSingleObject)));
    let mut bytes = encode(&full()).unwrap();
    bytes[2] ^= 0xff;
    assert!(matches!(
        decode(&bytes),
        Err(CodecError::UnknownFingerprint(_))
    ));
    // A valid header over a body that is not a Touchpoint datum (string length -1).
    let mut garbage = encode(&full()).unwrap()[..HEADER_LEN].to_vec();
    garbage.extend_from_slice(&[0x01, 0xff, 0xff]);
    let res = decode(&garbage);
    assert!(res.is_err(), "{res:?}");
}

#[test]
fn crc64_avro_matches_the_spec_vector() {
    // Avro spec / fastavro: fingerprint of "int" is 0x7275d51a3f395c8f.
    assert_eq!(crc64_avro(br#""int""#), 0x7275_d51a_3f39_5c8f);
}

#[test]
fn canonical_form_reduces_logical_types_and_qualifies_names() {
    let json: serde_json::Value = serde_json::from_str(TOUCHPOINT_SCHEMA_JSON).unwrap();
    let pcf = parsing_canonical_form(&json, None);
    assert!(pcf.starts_with(r#"{"name":"io.touchstream.Touchpoint","type":"record","fields":[{"name":"event_id","type":"string"}"#), "{pcf}");
    assert!(pcf.contains(r#"{"name":"event_time","type":"long"}"#));
    assert!(pcf.contains(r#"{"name":"timestamp","type":["null","long"]}"#));
    assert!(pcf.contains(r#""type":{"name":"io.touchstream.MessageType","type":"enum","symbols":["track","page","screen","identify","alias"]}"#));
    assert!(!pcf.contains("doc") && !pcf.contains("default") && !pcf.contains(' '));
    // The value fastavro computes for schemas/touchpoint.avsc (LE bytes c254d4c5c78e604e).
    assert_eq!(
        fingerprint().to_le_bytes(),
        [0xc2, 0x54, 0xd4, 0xc5, 0xc7, 0x8e, 0x60, 0x4e]
    );
}

/// The generic apache-avro encoder the collector used before [`encode`] was written by
/// hand: the reference the hand-written bytes must equal.
fn apache_encode(tp: &Touchpoint) -> Vec<u8> {
    use apache_avro::writer::datum::GenericDatumWriter;
    let opt_string = |v: &Option<String>| match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let opt_ts = |v: Option<i64>| match v {
        Some(ms) => Value::Union(1, Box::new(Value::TimestampMillis(ms))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let record = Value::Record(vec![
        ("event_id".into(), Value::String(tp.event_id.clone())),
        (
            "type".into(),
            Value::Enum(
                tp.message_type.avro_index(),
                tp.message_type.as_str().into(),
            ),
        ),
        ("event".into(), opt_string(&tp.event)),
        ("anonymous_id".into(), opt_string(&tp.anonymous_id)),
        ("user_id".into(), opt_string(&tp.user_id)),
        ("previous_id".into(), opt_string(&tp.previous_id)),
        (
            "event_time".into(),
            Value::TimestampMillis(tp.event_time_ms),
        ),
        ("timestamp".into(), opt_ts(tp.timestamp_ms)),
        ("sent_at".into(), opt_ts(tp.sent_at_ms)),
        (
            "received_at".into(),
            Value::TimestampMillis(tp.received_at_ms),
        ),
        ("source".into(), Value::String(tp.source.clone())),
        ("channel".into(), Value::String(tp.channel.clone())),
        ("properties".into(), Value::String(tp.properties.clone())),
        ("traits".into(), Value::String(tp.traits.clone())),
        ("context".into(), Value::String(tp.context.clone())),
        ("ip".into(), opt_string(&tp.ip)),
        ("user_agent".into(), opt_string(&tp.user_agent)),
        ("extra".into(), Value::String(tp.extra.clone())),
    ]);
    let datum = GenericDatumWriter::builder(schema())
        .build()
        .unwrap()
        .write_value_to_vec(record)
        .unwrap();
    let mut out = SINGLE_OBJECT_MAGIC.to_vec();
    out.extend_from_slice(&fingerprint().to_le_bytes());
    out.extend_from_slice(&datum);
    out
}

#[test]
fn hand_written_encoder_matches_apache_avro_on_fixed_cases() {
    let mut cases = vec![full()];
    for t in MessageType::ALL {
        cases.push(Touchpoint {
            message_type: t,
            event: None,
            anonymous_id: None,
            user_id: None,
            previous_id: None,
            timestamp_ms: None,
            sent_at_ms: None,
            ip: None,
            user_agent: None,
            event_id: String::new(),
            source: String::new(),
            properties: "x".repeat(300),
            event_time_ms: i64::MIN,
            received_at_ms: i64::MAX,
            ..full()
        });
    }
    for tp in &cases {
        assert_eq!(encode(tp).unwrap(), apache_encode(tp), "{tp:?}");
        assert_eq!(&decode(&encode(tp).unwrap()).unwrap(), tp);
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Empty, ASCII, any Unicode (controls, astral planes), and long enough for
    /// multi-byte length varints.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z0-9 -]{1,20}",
            any::<String>(),
            "\\PC{100,400}",
        ]
    }

    fn long() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(0),
            Just(-1),
            Just(63),
            Just(64),
            Just(-64),
            Just(-65),
            any::<i64>(),
            -1_000_000_000_000_000i64..4_000_000_000_000_000,
        ]
    }

    fn touchpoint() -> impl Strategy<Value = Touchpoint> {
        let ids = (
            text(),
            proptest::sample::select(MessageType::ALL.to_vec()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
        );
        let times = (
            long(),
            proptest::option::of(long()),
            proptest::option::of(long()),
            long(),
        );
        let rest = (
            text(),
            text(),
            text(),
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            text(),
        );
        (ids, times, rest).prop_map(
            |(
                (event_id, message_type, event, anonymous_id, user_id, previous_id),
                (event_time_ms, timestamp_ms, sent_at_ms, received_at_ms),
                (source, channel, properties, traits, context, ip, user_agent, extra),
            )| Touchpoint {
                event_id,
                message_type,
                event,
                anonymous_id,
                user_id,
                previous_id,
                event_time_ms,
                timestamp_ms,
                sent_at_ms,
                received_at_ms,
                source,
                channel,
                properties,
                traits,
                context,
                ip,
                user_agent,
                extra,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Byte-identical to apache-avro's generic writer, and decodable back.
        #[test]
        fn encode_equals_apache_avro_and_round_trips(tp in touchpoint()) {
            let bytes = encode(&tp).unwrap();
            prop_assert_eq!(&bytes, &apache_encode(&tp));
            // Appending after other bytes writes the same value.
            let mut appended = b"prefix".to_vec();
            encode_ref(&TouchpointRef::from(&tp), &mut appended);
            prop_assert_eq!(&appended[6..], &bytes[..]);
            prop_assert_eq!(TouchpointRef::from(&tp).to_touchpoint(), tp.clone());
            prop_assert_eq!(decode(&bytes).unwrap(), tp);
        }

        /// The hand-written decoder accepts exactly what apache-avro's generic reader
        /// accepts, with the same value: on valid records and on damaged ones
        /// (truncated, a byte changed, bytes appended).
        #[test]
        fn decode_agrees_with_apache_avro_on_any_damage(
            tp in touchpoint(),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            how in 0..4u8,
        ) {
            let mut bytes = encode(&tp).unwrap();
            match how {
                0 => {}
                1 => bytes.truncate(cut.index(bytes.len())),
                2 => {
                    let i = flip.index(bytes.len() - HEADER_LEN) + HEADER_LEN;
                    bytes[i] = byte;
                }
                _ => bytes.push(byte),
            }
            let ours = decode(&bytes);
            let theirs = decode_generic(&bytes);
            prop_assert_eq!(ours.as_ref().ok(), theirs.as_ref().ok(), "{:?} / {:?}", ours, theirs);
        }
    }
}

#[test]
fn message_types_are_listed_in_avro_index_order() {
    for (i, t) in MessageType::ALL.iter().enumerate() {
        assert_eq!(t.avro_index() as usize, i);
    }
}

#[test]
fn decode_rejects_damaged_numbers_strings_and_branches() {
    let header = encode(&full()).unwrap()[..HEADER_LEN].to_vec();
    let with = |datum: &[u8]| [header.as_slice(), datum].concat();
    for (datum, why) in [
        (&[0x80u8; 11][..], "number longer than 10 bytes"),
        (&[0x80u8, 0x80][..], "datum ends inside a number"),
        (&[0x01u8][..], "string length -1"),
        (&[0x08u8, b'a'][..], "string length 4 with 1 bytes left"),
        (&[0x04u8, 0xff, 0xfe][..], "invalid utf-8"),
        (&[0x00u8, 0x0a][..], "type: enum index 5 out of range"),
        (
            &[0x00u8, 0x00, 0x04][..],
            "event: union branch 2 out of range",
        ),
    ] {
        let err = decode(&with(datum)).unwrap_err().to_string();
        assert!(err.contains(why), "{datum:?}: {err}");
        assert!(decode_generic(&with(datum)).is_err(), "{datum:?}");
    }
}

#[test]
fn fingerprint_matches_header() {
    let bytes = encode(&full()).unwrap();
    assert_eq!(
        u64::from_le_bytes(bytes[2..10].try_into().unwrap()),
        fingerprint()
    );
}
