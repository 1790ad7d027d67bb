//! A message read through a `serde_json::Value` tree, as the collector read every message
//! before the one-pass scanner ([`super::scan`]).
//!
//! It stays for two reasons: the scanner hands it every message it declines (invalid
//! JSON, a non-object, serde_json's raw-value token), so that those answers — serde_json's
//! error text included — are exactly what they always were; and it is the reference the
//! scanner is tested against (a proptest compares the touchpoints or rejections the rules
//! make of both readings).

use std::borrow::Cow;

use serde_json::Value;

use super::reject::{reject, RejectReason, Rejection};
use super::seam::{
    ContextKey, Field, MessageFields, ObjectField, ScalarField, Shape, Slot, Texts, WRITE_KEY,
};

/// One message, read from its `Value` tree.
pub(crate) struct Dom {
    scalars: [Field<'static>; ScalarField::ALL.len()],
    /// Per [`ObjectField`], its value when present.
    objects: [Option<Value>; ObjectField::ALL.len()],
    texts: Texts,
}

impl Dom {
    /// Parse a message; `Malformed` unless it is a JSON object.
    pub(crate) fn parse(raw: &str) -> Result<Dom, Rejection> {
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| reject(RejectReason::Malformed, format!("invalid JSON: {e}")))?;
        let Value::Object(mut obj) = value else {
            return Err(reject(
                RejectReason::Malformed,
                "a message must be a JSON object",
            ));
        };
        let scalars = ScalarField::ALL.map(|f| match obj.remove(f.key()) {
            None => Field::Absent,
            Some(Value::Null) => Field::Null,
            Some(Value::String(s)) => Field::Str(Cow::Owned(s)),
            Some(Value::Number(n)) => Field::Num(n.to_string()),
            Some(_) => Field::Other,
        });
        let objects = ObjectField::ALL.map(|f| obj.remove(f.key()));
        obj.remove(WRITE_KEY);
        debug_assert!(obj.keys().all(|k| Slot::of(k) == Slot::Extra));
        let mut texts = Texts {
            extra: Value::Object(obj).to_string(),
            ..Texts::default()
        };
        for (text, value) in texts.objects.iter_mut().zip(&objects) {
            if let Some(v @ Value::Object(_)) = value {
                *text = v.to_string();
            }
        }
        if let Some(Value::Object(context)) = &objects[ObjectField::Context.index()] {
            texts.context_entries = context
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect();
        }
        Ok(Dom {
            scalars,
            objects,
            texts,
        })
    }
}

impl MessageFields for Dom {
    fn scalar(&self, field: ScalarField) -> &Field<'_> {
        &self.scalars[field.index()]
    }

    fn shape(&self, field: ObjectField) -> Shape {
        match &self.objects[field.index()] {
            None | Some(Value::Null) => Shape::None,
            Some(Value::Object(_)) => Shape::Object,
            Some(_) => Shape::Other,
        }
    }

    fn context_str(&self, key: ContextKey) -> Option<Option<&str>> {
        match &self.objects[ObjectField::Context.index()] {
            Some(Value::Object(context)) => context.get(key.key()).map(Value::as_str),
            _ => None,
        }
    }

    fn texts(&self) -> &Texts {
        &self.texts
    }
}
