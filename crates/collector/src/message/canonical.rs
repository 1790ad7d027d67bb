//! Canonical JSON text straight from the client's text, without a `serde_json::Value` tree.
//!
//! The collector stores `properties`, `traits`, `context` and `extra` as JSON text in the
//! form `serde_json::Value::to_string` gives after parsing: compact, object keys sorted
//! bytewise with the last of duplicate keys winning, strings re-escaped, numbers
//! re-printed (`1E2` → `100.0`, `-0` → `-0.0`). Downstream (the processor, ClickHouse
//! rows, tests) sees exactly that text, so this module reproduces it byte for byte while
//! the message is parsed, instead of building a B-tree DOM and serialising it again.
//!
//! It drives the same `serde_json` deserializer with `deserialize_any`, so what it accepts
//! (grammar, number range, surrogates, the 128-level nesting limit) is what
//! `serde_json::from_str::<Value>` accepts. The one `Value` behaviour it does not copy — an
//! object whose first key is serde_json's private raw-value token — makes it fail, and
//! the caller falls back to the `Value` path. A proptest below checks the output against
//! `Value` round trips.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// First key that makes `serde_json::Value` read an object's string value as nested JSON
/// (serde_json's `raw_value` feature, on in this workspace). Not reproduced here.
pub const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// One `"key":value` written into an object's output, kept until the object closes.
struct Entry<'de> {
    key: Cow<'de, str>,
    start: usize,
    end: usize,
}

/// Reusable working memory of the transcoder: open objects' entries (a stack shared by
/// nested objects) and a buffer for re-ordering an object's entries.
#[derive(Default)]
pub struct Scratch<'de> {
    entries: Vec<Entry<'de>>,
    tmp: String,
}

impl Scratch<'_> {
    /// Forget everything (after a parse that failed half-way), keeping capacity.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.tmp.clear();
    }
}

/// A map key, borrowed from the input when it has no escapes.
pub struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Append `s` as a JSON string literal, escaped exactly as `serde_json` escapes: `"`, `\`
/// and the C0 controls (`\b \t \n \f \r`, else `\u00xx` in lowercase hex); nothing else.
pub fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let mut run = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x09 => "\\t",
            0x0A => "\\n",
            0x0C => "\\f",
            0x0D => "\\r",
            0x00..=0x1F => "",
            _ => continue,
        };
        // `i` is an ASCII byte, so a char boundary.
        out.push_str(&s[run..i]);
        run = i + 1;
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        } else {
            out.push_str(short);
        }
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// Append a key or string value: a string serde_json lends from the input had no escape
/// in it, and JSON forbids raw `"`, `\` and control characters, so it needs none (the
/// common case: no byte scan).
// The variant is the information here (borrowed = had no escapes), so `&Cow` it is.
#[allow(clippy::ptr_arg)]
fn write_cow(out: &mut String, s: &Cow<'_, str>) {
    match s {
        Cow::Borrowed(s) => {
            out.reserve(s.len() + 2);
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Cow::Owned(s) => write_str(out, s),
    }
}

/// Append a float as `serde_json` prints one (shortest round-trip, `1e20`, `1.0`; `null`
/// for non-finite values, which parsing never yields).
fn write_f64<E: de::Error>(out: &mut String, v: f64) -> Result<(), E> {
    let mut buf = [0u8; 32];
    let mut w: &mut [u8] = &mut buf;
    serde_json::to_writer(&mut w, &v).map_err(E::custom)?;
    let n = 32 - w.len();
    out.push_str(std::str::from_utf8(&buf[..n]).map_err(E::custom)?);
    Ok(())
}

/// Writes the canonical text of one JSON value into `out`.
pub struct Canon<'a, 'de> {
    /// Where the text goes.
    pub out: &'a mut String,
    /// Working memory.
    pub scratch: &'a mut Scratch<'de>,
}

/// Deserializes any JSON value with the visitor it wraps (`deserialize_any`): the seed
/// of every visitor here and in the message scanner.
pub struct AnyValue<V>(pub V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for AnyValue<V> {
    type Value = V::Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        d.deserialize_any(self.0)
    }
}

impl<'de> Visitor<'de> for Canon<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        write!(self.out, "{v}").map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        write!(self.out, "{v}").map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        write_f64(self.out, v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        write_cow(self.out, &Cow::Borrowed(v));
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        write_str(self.out, v);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.out.push_str("null");
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push('[');
        let mut first = true;
        loop {
            let mark = self.out.len();
            if !first {
                self.out.push(',');
            }
            let seed = AnyValue(Canon {
                out: &mut *self.out,
                scratch: &mut *self.scratch,
            });
            if seq.next_element_seed(seed)?.is_none() {
                self.out.truncate(mark);
                break;
            }
            first = false;
        }
        self.out.push(']');
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        object(map, self.out, self.scratch, |_, _| {})
    }
}

/// Transcode the rest of an object (its `{` already consumed by the deserializer) into
/// `out`, calling `seen(key, value_text)` for each entry in input order (duplicates
/// included), then sort and de-duplicate its entries as `serde_json::Map` would.
pub fn object<'de, A: MapAccess<'de>>(
    mut map: A,
    out: &mut String,
    scratch: &mut Scratch<'de>,
    mut seen: impl FnMut(&str, &str),
) -> Result<(), A::Error> {
    let open = out.len();
    out.push('{');
    let base = scratch.entries.len();
    let mut sorted = true;
    while let Some(key) = map.next_key_seed(Key)? {
        if scratch.entries.len() == base && key == RAW_VALUE_TOKEN {
            return Err(de::Error::custom("raw value token"));
        }
        if let Some(prev) = scratch.entries.get(base..).and_then(<[_]>::last) {
            sorted &= prev.key < key;
            out.push(',');
        }
        let start = out.len();
        write_cow(out, &key);
        out.push(':');
        let value_start = out.len();
        map.next_value_seed(AnyValue(Canon {
            out: &mut *out,
            scratch: &mut *scratch,
        }))?;
        seen(&key, &out[value_start..]);
        scratch.entries.push(Entry {
            key,
            start,
            end: out.len(),
        });
    }
    close(out, scratch, open, base, sorted);
    Ok(())
}

/// An object whose entries are written by the caller (the message's `extra`).
pub struct Open {
    open: usize,
    base: usize,
    sorted: bool,
}

impl Open {
    /// Open an object at the end of `out`.
    pub fn new<'de>(out: &mut String, scratch: &Scratch<'de>) -> Self {
        let open = out.len();
        out.push('{');
        Open {
            open,
            base: scratch.entries.len(),
            sorted: true,
        }
    }

    /// Write one `"key":value` entry; the value comes from `value`.
    pub fn entry<'de, E>(
        &mut self,
        out: &mut String,
        scratch: &mut Scratch<'de>,
        key: Cow<'de, str>,
        value: impl FnOnce(Canon<'_, 'de>) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(prev) = scratch.entries.get(self.base..).and_then(<[_]>::last) {
            self.sorted &= prev.key < key;
            out.push(',');
        }
        let start = out.len();
        write_cow(out, &key);
        out.push(':');
        value(Canon {
            out: &mut *out,
            scratch: &mut *scratch,
        })?;
        scratch.entries.push(Entry {
            key,
            start,
            end: out.len(),
        });
        Ok(())
    }

    /// Sort, de-duplicate and close the object.
    pub fn close(self, out: &mut String, scratch: &mut Scratch<'_>) {
        close(out, scratch, self.open, self.base, self.sorted);
    }
}

/// Close the object opened at `out[open]` whose entries are `scratch.entries[base..]`:
/// when they are not strictly ascending, rewrite them sorted (stable, so the last of
/// equal keys is kept, as `Map::insert` keeps the last value).
fn close(out: &mut String, scratch: &mut Scratch<'_>, open: usize, base: usize, sorted: bool) {
    if !sorted {
        let body = open + 1;
        let Scratch { entries, tmp } = scratch;
        let entries = &mut entries[base..];
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        tmp.clear();
        tmp.push_str(&out[body..]);
        out.truncate(body);
        let mut first = true;
        for (i, e) in entries.iter().enumerate() {
            if entries.get(i + 1).is_some_and(|next| next.key == e.key) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&tmp[e.start - body..e.end - body]);
        }
    }
    out.push('}');
    scratch.entries.truncate(base);
}

#[cfg(test)]
/// The canonical text of a JSON document, or `None` where `serde_json::Value` would fail
/// or behave specially (the caller then uses `Value`).
pub fn canonical(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut scratch = Scratch::default();
    let mut de = serde_json::Deserializer::from_str(text);
    AnyValue(Canon {
        out: &mut out,
        scratch: &mut scratch,
    })
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn via_value(text: &str) -> Option<String> {
        serde_json::from_str::<Value>(text)
            .ok()
            .map(|v| v.to_string())
    }

    #[test]
    fn matches_value_on_fixed_cases() {
        for text in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2,"b":{"z":[1,{"y":2,"x":3}],"c":null}}"#,
            r#" { "a" : [ ] , "b" : { } } "#,
            r#"[1E2, -0, 0.1, 1e-7, 18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809, 1.7976931348623157e308]"#,
            r#""\u00e9\/\b\f\n\r\t\u0001\u001f\u007f\"\\ 😀 \ud83d\ude00""#,
            r#"{"\u0061":1,"a":2,"":3,"é":4,"z":5,"Z":6}"#,
            r#"{"$serde_json::private::RawValue":"[1]"}"#,
            r#"{"a":1,"$serde_json::private::RawValue":"[1]"}"#,
            r#"{"a":{"$serde_json::private::RawValue":"[1]"}}"#,
            "true",
            "null",
            r#"{"a":1e400}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":1} x"#,
            "{\"a\":\"\u{1}\"}",
        ] {
            let got = canonical(text);
            if let Some(got) = &got {
                assert_eq!(Some(got.clone()), via_value(text), "{text}");
            } else {
                // Falling back is allowed only where Value fails or does its special case.
                assert!(
                    via_value(text).is_none() || text.contains(RAW_VALUE_TOKEN),
                    "{text}"
                );
            }
        }
        let deep = format!("{}1{}", "[".repeat(127), "]".repeat(127));
        assert_eq!(canonical(&deep), via_value(&deep));
        let too_deep = format!("{}1{}", "[".repeat(128), "]".repeat(128));
        assert!(via_value(&too_deep).is_none());
        assert_eq!(canonical(&too_deep), None);
    }

    /// JSON text with what canonicalisation must get right: repeated and unsorted keys,
    /// escapes in keys and strings, every number form, whitespace, deep nesting.
    pub(crate) fn json_text() -> BoxedStrategy<String> {
        json_text_with(true)
    }

    /// [`json_text`], with or without leaves `Value` refuses (`01`, `1e400`, a lone
    /// surrogate, a raw control character, a bad escape).
    pub(crate) fn json_text_with(invalid: bool) -> BoxedStrategy<String> {
        let key = prop_oneof![
            prop::sample::select(vec!["a", "b", "A", "", "é", "a\\u0062", "\\u00e9", "aa"])
                .prop_map(String::from),
            "[a-c]{1,3}",
            any::<String>()
                .prop_map(|s| serde_json::to_string(&s).unwrap()[1..].to_string())
                .prop_map(|s| s[..s.len() - 1].to_string()),
        ];
        let valid = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            prop::sample::select(vec![
                "0",
                "-0",
                "1",
                "-1",
                "1.0",
                "1E2",
                "1e-7",
                "0.1",
                "-0.0",
                "123456789012345678901234",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775808",
                "-9223372036854775809",
                "2.5e-320",
                "1.7976931348623157e308",
            ])
            .prop_map(String::from),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
            prop::sample::select(vec![
                r#""\/""#,
                r#""\u0000""#,
                r#""\ud83d\ude00""#,
                "\"\u{7f}\"",
            ])
            .prop_map(String::from),
        ];
        let leaf = if invalid {
            prop_oneof![
                12 => valid,
                1 => prop::sample::select(vec![
                    "01", "1.", "1e400", r#""\ud800""#, r#""\uDFFF""#, "\"\t\"", r#""\x""#,
                ])
                .prop_map(String::from),
            ]
            .boxed()
        } else {
            valid.boxed()
        };
        leaf.prop_recursive(5, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key.clone(), inner, " ?"), 0..7).prop_map(|entries| {
                    let body: Vec<String> = entries
                        .into_iter()
                        .map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
            ]
        })
        .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Same text as a `Value` round trip whenever it answers; it declines only where
        /// `Value` fails or meets its raw-value token.
        #[test]
        fn canonical_equals_value_round_trip(text in json_text()) {
            match canonical(&text) {
                Some(got) => prop_assert_eq!(Some(got), via_value(&text)),
                None => prop_assert!(via_value(&text).is_none() || text.contains("RawValue")),
            }
        }
    }
}
