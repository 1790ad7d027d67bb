"""A stock Avro library decodes our Kafka values from schemas/touchpoint.avsc alone.

tests/kafka_avro.rs (run first by tests/run.sh) produced a touchpoint to the real broker,
consumed it back and left the consumed bytes and the expected record in
target/test-artifacts/. Here fastavro — not our code — decodes those bytes following the
Avro single-object encoding (schemas/README.md).
"""
import io
import json
import os

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

ROOT = os.path.join(os.path.dirname(__file__), "../..")
ART = os.path.join(ROOT, "target/test-artifacts")


def load_schema():
    with open(os.path.join(ROOT, "schemas/touchpoint.avsc")) as f:
        return fastavro.parse_schema(json.load(f))


def decode_single_object(schema, data):
    assert data[:2] == b"\xc3\x01", "single-object marker"
    # fastavro's hex string is the fingerprint's 8 bytes in little-endian order, which is
    # exactly what the single-object header carries.
    expected = fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    assert data[2:10].hex() == expected, f"header fingerprint {data[2:10].hex()} != schema's {expected}"
    buf = io.BytesIO(data[10:])
    record = fastavro.schemaless_reader(buf, schema, schema)
    assert buf.read() == b"", "no trailing bytes"
    return record


def test_fastavro_decodes_bytes_consumed_from_kafka():
    with open(os.path.join(ART, "touchpoint_from_kafka.avro"), "rb") as f:
        data = f.read()
    with open(os.path.join(ART, "touchpoint_from_kafka.json")) as f:
        want = json.load(f)
    rec = decode_single_object(load_schema(), data)
    to_ms = lambda dt: None if dt is None else int(round(dt.timestamp() * 1000))
    assert rec["event_id"] == want["event_id"]
    assert rec["type"] == want["message_type"]
    for field in ("event", "anonymous_id", "user_id", "previous_id", "source", "channel",
                  "properties", "traits", "context", "ip", "user_agent", "extra"):
        assert rec[field] == want[field], field
    assert to_ms(rec["event_time"]) == want["event_time_ms"]
    assert to_ms(rec["received_at"]) == want["received_at_ms"]
    assert to_ms(rec["timestamp"]) == want["timestamp_ms"]
    assert to_ms(rec["sent_at"]) == want["sent_at_ms"]
    assert json.loads(rec["properties"])["sku"] == "SKU-1"


def test_fastavro_written_value_has_our_framing():
    """The other direction: a value framed by a third party is what our decoder expects."""
    schema = load_schema()
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {
        "event_id": "x", "type": "page", "event": "Home", "anonymous_id": "a", "user_id": None,
        "previous_id": None, "event_time": 1, "timestamp": None, "sent_at": None,
        "received_at": 2, "source": "web", "channel": "web", "properties": "{}",
        "traits": "{}", "context": "{}", "ip": None, "user_agent": None, "extra": "{}"})
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    framed = b"\xc3\x01" + fp + buf.getvalue()
    assert decode_single_object(schema, framed)["event"] == "Home"
