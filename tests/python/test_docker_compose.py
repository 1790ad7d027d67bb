"""docker-compose.yml hangs together without running Docker: the services exist with
the ports they serve on, every mounted host path and the Dockerfile's inputs exist,
and the configs baked into or mounted by the containers name compose services."""
import os
import tomllib
from urllib.parse import urlparse

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))

SERVICES = ["kafka", "clickhouse", "setup", "collector", "processor", "prometheus",
            "alertmanager", "grafana"]
PUBLISHED = {"collector": 8080, "processor": 9464, "prometheus": 9090,
             "alertmanager": 9093, "grafana": 3000, "clickhouse": 8123}


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load(read("docker-compose.yml"))["services"]


def container_ports(service):
    """Container ports a service publishes ("8080:8080", "127.0.0.1:80:8080", 8080, long form)."""
    ports = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            ports.add(int(p["target"]))
        else:
            ports.add(int(str(p).split(":")[-1].split("/")[0]))
    return ports


def dockerfile_copies():
    """Source paths of the Dockerfile's COPY instructions from the build context."""
    sources = []
    for line in read("Dockerfile").splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in words[1:]):
            continue
        sources += args[:-1]
    return sources


def test_services_exist(services):
    missing = [s for s in SERVICES if s not in services]
    assert not missing, missing


def test_kafka_runs_kraft(services):
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert not any("ZOOKEEPER" in k for k in env), "KRaft needs no ZooKeeper"


def test_kafka_is_three_replicated_brokers(services):
    brokers = [n for n in services if n == "kafka" or n.startswith("kafka-")]
    assert len(brokers) == 3, brokers
    envs = [services[b]["environment"] for b in brokers]
    assert len({e["KAFKA_NODE_ID"] for e in envs}) == 3, "distinct node ids"
    assert len({e["CLUSTER_ID"] for e in envs}) == 1, "one cluster"
    for b, e in zip(brokers, envs):
        voters = e["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert sorted(v.split("@")[1].split(":")[0] for v in voters) == sorted(brokers), voters
        assert e["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{b}:9092"
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == "2" and e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
    config = tomllib.loads(read("deploy/docker/touchstream.toml"))
    assert config["kafka"]["replication_factor"] == 3 and config["kafka"]["min_insync_replicas"] == 2
    assert sorted(h.split(":")[0] for h in config["kafka"]["brokers"].split(",")) == sorted(brokers)


def test_published_ports(services):
    for name, port in PUBLISHED.items():
        assert port in container_ports(services[name]), f"{name} does not publish {port}"


def test_mounted_host_paths_exist(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("./"):
                assert os.path.exists(os.path.join(ROOT, source)), f"{name}: {source} missing"


def test_built_services_have_a_dockerfile_and_its_inputs(services):
    built = [n for n, s in services.items() if "build" in s]
    assert set(built) >= {"setup", "collector", "processor"}
    for name in built:
        assert services[name]["build"] == ".", name
    assert os.path.isfile(os.path.join(ROOT, "Dockerfile"))
    copies = dockerfile_copies()
    assert "deploy/docker/touchstream.toml" in copies
    for source in copies:
        if source != ".":
            assert os.path.exists(os.path.join(ROOT, source)), f"Dockerfile copies missing {source}"


def test_container_config_points_at_compose_services(services):
    config = tomllib.loads(read("deploy/docker/touchstream.toml"))
    for broker in config["kafka"]["brokers"].split(","):
        host, port = broker.strip().rsplit(":", 1)
        assert host in services, f"broker {broker} is not a compose service"
        assert f"PLAINTEXT://{host}:{port}" in services[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    url = urlparse(config["clickhouse"]["url"])
    assert url.hostname == "clickhouse" and url.port == 8123, config["clickhouse"]["url"]
    # The services listen where compose publishes them.
    assert int(config["collector"]["listen"].rsplit(":", 1)[1]) in container_ports(services["collector"])
    assert int(config["processor"]["metrics_listen"].rsplit(":", 1)[1]) in container_ports(services["processor"])
    # Paths the config names exist in the image (copied by the Dockerfile).
    dockerfile = read("Dockerfile")
    for key in ("funnels_path", "catalog_path"):
        path = config["processor"][key]
        assert os.path.dirname(path) + "/" in dockerfile and os.path.basename(path) in dockerfile, path


def test_prometheus_scrapes_and_alerts_by_service_name(services):
    prom = yaml.safe_load(read("deploy/prometheus/prometheus.docker.yml"))
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    targets += [t for am in prom["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in services, f"{target} is not a compose service"
        assert int(port) in container_ports(services[host]), target
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in mounts
    assert any(rf.startswith("/etc/prometheus/rules/") for rf in prom["rule_files"])


def test_grafana(services):
    grafana = services["grafana"]
    assert grafana["image"] == "grafana/grafana:11.1.0"
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = grafana["volumes"]
    assert all(m.endswith(":ro") for m in mounts), mounts
    assert any(m.startswith("./deploy/grafana/provisioning") for m in mounts)
    assert any(m.startswith("./deploy/grafana/dashboards:") for m in mounts)
    ds = yaml.safe_load(read("deploy/grafana/provisioning/datasources/prometheus.yml"))
    url = urlparse(ds["datasources"][0]["url"])
    assert url.hostname in services and url.port in container_ports(services[url.hostname])

