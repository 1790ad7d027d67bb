"""The Grafana dashboard is well formed and only queries what exists: metrics the README
documents, recording rules defined in deploy/prometheus/rules/, through the datasource
the provisioning files create."""
import json
import os
import re

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
DASHBOARD = "deploy/grafana/dashboards/touchstream.json"
DATASOURCES = "deploy/grafana/provisioning/datasources/prometheus.yml"
PROVIDERS = "deploy/grafana/provisioning/dashboards/touchstream.yml"


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(read(DASHBOARD))


def all_panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        # Collapsed rows carry their panels inside.
        yield from panel.get("panels", [])


def graph_panels(dashboard):
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def expressions(dashboard):
    exprs = [t["expr"] for p in graph_panels(dashboard) for t in p["targets"]]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        exprs.append(query["query"] if isinstance(query, dict) else query or "")
    for ann in dashboard.get("annotations", {}).get("list", []):
        exprs.append(ann.get("expr", ""))
    return exprs


def test_dashboard_header(dashboard):
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "touchstream"
    assert dashboard["title"]


def test_panel_ids_are_unique(dashboard):
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), ids


def test_every_panel_has_a_title_and_a_query(dashboard):
    for panel in all_panels(dashboard):
        assert panel.get("title", "").strip(), panel
    for panel in graph_panels(dashboard):
        targets = panel.get("targets", [])
        assert targets, f"panel {panel['title']!r} has no target"
        for target in targets:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: empty expr"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_panels_do_not_overlap(dashboard):
    taken = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells


def test_required_panels_exist(dashboard):
    exprs = "\n".join(expressions(dashboard))
    for needed in [
        "touchstream:funnel_step_reached:increase10m",
        "touchstream:funnel_step_dropped:increase10m",
        "touchstream:funnel_step_dropoff:ratio10m",
        "touchstream_processor_funnel_converted_total",
        "touchstream:complaints:rate10m",
        "touchstream:funnel_step_delay_seconds:p50_1h",
        "touchstream:funnel_step_delay_seconds:p90_1h",
        "touchstream:funnel_open_attempts_overdue:sum",
        "sum by (stage) (rate(touchstream_processor_touchpoints_total",
        "sum by (channel) (rate(touchstream_processor_touchpoints_total",
        "touchstream_collector_events_total",
        'touchstream_collector_requests_total{status=~"4..|5.."}',
        "histogram_quantile(0.99, sum by (le) (rate(touchstream_collector_produce_duration_seconds_bucket",
        "touchstream:consumer_lag:sum_by_stage",
        "touchstream_processor_clickhouse_insert_duration_seconds_bucket",
        "touchstream_processor_clickhouse_insert_failures_total",
        "touchstream_processor_late_events_total",
        "touchstream:late_events_share:ratio10m",
        "touchstream:late_events_share:threshold",
        "touchstream_processor_identity_conflicts_total",
    ]:
        assert needed in exprs, f"no panel queries {needed}"


def test_every_metric_is_documented_in_the_readme(dashboard):
    readme = read("README.md")
    names = {
        re.sub(r"_(bucket|sum|count)$", "", n)
        for e in expressions(dashboard)
        for n in re.findall(r"\btouchstream_[a-z_]+", e)
    }
    assert names
    missing = sorted(n for n in names if f"`{n}`" not in readme)
    assert not missing, f"dashboard queries metrics the README does not list: {missing}"


def test_every_recording_rule_is_defined(dashboard):
    rules = yaml.safe_load(read("deploy/prometheus/rules/touchstream.yml"))
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    used = {n for e in expressions(dashboard) for n in re.findall(r"touchstream:[a-z0-9_:]+", e)}
    assert used, "the dashboard uses no recording rule"
    missing = sorted(used - recorded)
    assert not missing, f"dashboard queries undefined recording rules: {missing}"


def test_datasource_matches_provisioning(dashboard):
    provisioned = yaml.safe_load(read(DATASOURCES))["datasources"]
    assert len(provisioned) == 1
    ds = provisioned[0]
    assert ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    uid = ds["uid"]
    refs = [p["datasource"] for p in graph_panels(dashboard)]
    refs += [t["datasource"] for p in graph_panels(dashboard) for t in p["targets"] if "datasource" in t]
    refs += [v["datasource"] for v in dashboard["templating"]["list"] if "datasource" in v]
    refs += [a["datasource"] for a in dashboard["annotations"]["list"] if a["datasource"]["type"] != "grafana"]
    assert refs
    for ref in refs:
        assert ref == {"type": "prometheus", "uid": uid}, ref


def test_dashboard_provider_reads_the_folder_compose_mounts():
    provider = yaml.safe_load(read(PROVIDERS))["providers"][0]
    path = provider["options"]["path"]
    compose = yaml.safe_load(read("docker-compose.yml"))
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts, (path, mounts)
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{os.path.basename(DASHBOARD)}"
