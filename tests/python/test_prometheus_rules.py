"""The Prometheus rules are valid, their promtool unit tests pass, they only use metrics
the README documents, their labels stay bounded, and every alert links a runbook
section that exists in docs/ops.md."""
import glob
import os
import re
import shutil
import subprocess

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
RULES = os.path.join(ROOT, "deploy/prometheus/rules/touchstream.yml")

# Labels a rule may aggregate by or an alert may carry: configuration-bounded values only.
BOUNDED_LABELS = {
    "funnel", "step", "stage", "topic", "partition", "table", "kind", "le",
    "outcome", "reason", "event", "channel", "endpoint", "status", "cause",
    # processor.open_attempt_overdue_shares: at most 8 values.
    "share",
    # Catalog events (or `other`), the answer scales and measures: bounded by the catalog.
    "touchpoint", "scale", "measure",
    # A funnel's allow-listed breakdown values or `other`, at most 20 per funnel
    # (MAX_BREAKDOWN_SERIES, checked when funnels.toml loads); `all` without breakdown.
    "breakdown",
}
ALERTS = {
    "FunnelStepDropoffSpike", "ComplaintSpike", "FollowUpSlaBreach",
    "ComplaintsNotFollowedUp", "ComplaintsAwaitingFollowUp", "ConsumerLagGrowing", "CollectorSilent",
    "CollectorHighRejectionShare", "CollectorBrokerErrors", "ClickHouseInsertFailures",
    "LateEventsShareHigh", "ClickHouseRowsRejected", "ProcessorStageRestarting",
    "TouchpointBelowFloor",
}


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def promtool(*args):
    exe = shutil.which("promtool")
    assert exe, "promtool not found (Debian: apt-get install prometheus)"
    proc = subprocess.run(
        [exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    output = f"$ promtool {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    print(output)
    assert proc.returncode == 0, output
    return output


def rules():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_rules():
    files = sorted(glob.glob(os.path.join(ROOT, "deploy/prometheus/rules/*.yml")))
    assert files
    promtool("check", "rules", *[os.path.relpath(f, ROOT) for f in files])


def test_promtool_unit_tests():
    files = sorted(glob.glob(os.path.join(ROOT, "deploy/prometheus/tests/*.yml")))
    assert files
    promtool("test", "rules", *[os.path.relpath(f, ROOT) for f in files])


def test_every_metric_in_the_rules_is_documented_in_the_readme():
    readme = read("README.md")
    names = set()
    # Everything but comments (which name files such as the tests).
    text = re.sub(r"(?m)^\s*#.*$", "", read("deploy/prometheus/rules/touchstream.yml"))
    for name in re.findall(r"touchstream_[a-z_]+", text):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert names, "no metric found in the rules"
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"rules use metrics the README does not list: {missing}"


def test_every_alert_is_tested_and_complete():
    tests = read("deploy/prometheus/tests/touchstream_test.yml")
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{name} lacks {key}"
        # Firing and quiet cases both exist in the promtool tests.
        assert f"alertname: {name}\n" in tests, f"{name} has no promtool test"


def test_alerts_read_windows_from_recording_rules_only():
    for rule in rules():
        if "alert" in rule:
            assert not re.search(r"\[[0-9]+[smhdw]\]", rule["expr"]), (
                f"{rule['alert']} selects a range; move the window into a recording rule"
            )


def test_labels_stay_bounded():
    for rule in rules():
        for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", rule["expr"]):
            labels = {l.strip() for l in clause.split(",") if l.strip()}
            assert labels <= BOUNDED_LABELS, (rule.get("record") or rule.get("alert"), labels)
        # An alert adds only its severity; a recording rule may name a constant series by
        # a bounded label (the per-stage lag thresholds).
        allowed = {"severity"} | (BOUNDED_LABELS if "record" in rule else set())
        extra = set(rule.get("labels", {})) - allowed
        assert not extra, (rule.get("alert") or rule.get("record"), extra)


def github_anchor(heading):
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def test_runbooks_point_at_existing_sections_of_docs_ops_md():
    ops = read("docs/ops.md")
    anchors = {github_anchor(h) for h in re.findall(r"(?m)^#+\s+(.*)$", ops)}
    for rule in rules():
        if "alert" not in rule:
            continue
        runbook = rule["annotations"]["runbook"]
        path, _, anchor = runbook.partition("#")
        assert path == "docs/ops.md", runbook
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/ops.md"
