"""The deployment files in tuning/ (the Kubernetes manifests, the Grafana
dashboard) are copied into clusters as they are, and nothing else here runs
them: a flag renamed in turbo, a probe on the app's port instead of the
supervisor's, a grace period shorter than the drain or a panel on a metric
turbo does not export would only show in production. This checks that they
agree with each other, with `turbo --help` and with turbo's metric names."""

import json
import re
import subprocess
from pathlib import Path

import yaml

from conftest import BIN

TUNING = Path(__file__).resolve().parent.parent / "tuning"
KUBE = TUNING / "kubernetes"
DASHBOARD = TUNING / "grafana" / "turbo-dashboard.json"

API_VERSIONS = {
    "Deployment": "apps/v1",
    "Service": "v1",
    "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
}

# The metric families `--metrics-bind`'s /metrics exports, with their labels.
FAMILIES = {
    "turbo_requests_total": {"shard", "method", "status"},
    "turbo_requests_refused_total": {"shard", "status"},
    "turbo_request_duration_seconds": {"shard"},
    "turbo_requests_in_flight": {"shard"},
    "turbo_connections": {"shard"},
    "turbo_connections_queued": {"shard"},
    "turbo_connections_moved_total": {"shard"},
    "turbo_threads_limit": {"shard"},
    "turbo_received_bytes_total": {"shard"},
    "turbo_sent_bytes_total": {"shard"},
    "turbo_websocket_connections": {"shard"},
    "turbo_websocket_connections_total": {"shard"},
    "turbo_gil_wait_seconds": {"shard"},
    "turbo_worker_restarts_total": {"reason"},
    "turbo_workers": set(),
    "turbo_shards": set(),
    "turbo_ready": set(),
}
HISTOGRAMS = {"turbo_request_duration_seconds", "turbo_gil_wait_seconds"}
# The series a query can name: a histogram has none under its family's name.
SERIES = {family: family for family in FAMILIES if family not in HISTOGRAMS}
SERIES.update({family + suffix: family for family in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")})
# The labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def documents():
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


DOCS = documents()


def the(kind):
    found = [doc for doc in DOCS if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} in {KUBE}"
    return found[0]


def pod_spec():
    return the("Deployment")["spec"]["template"]["spec"]


def turbo_container():
    found = [c for c in pod_spec()["containers"] if Path(c.get("command", [""])[0]).name == "turbo"]
    assert len(found) == 1, "one container runs the command turbo"
    return found[0]


def flags(args):
    """turbo's flags in `args`, each with its value (None for a switch):
    `--flag value` and `--flag=value` both."""
    out = {}
    for i, arg in enumerate(args):
        if not arg.startswith("-") or arg == "-":
            continue
        name, eq, value = arg.partition("=")
        if not eq:
            following = args[i + 1] if i + 1 < len(args) else None
            value = following if following is not None and (following == "-" or not following.startswith("-")) else None
        assert name not in out, f"{name} given twice"
        out[name] = value
    return out


def turbo_flags():
    args = turbo_container()["args"]
    assert all(isinstance(a, str) for a in args), "args are strings (quote numbers in YAML)"
    return flags(args)


def bind_port(bind):
    return int(bind.rsplit(":", 1)[1])


def container_port(container, port):
    """The number of a port given by number or by the name of a container port."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"no container port named {port!r}"
    return named[port]


def whole_cpus(quantity):
    text = str(quantity)
    cpus = int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    assert cpus == int(cpus) and cpus >= 1, f"CPU limit {quantity!r} is not a whole number of CPUs"
    return int(cpus)


def test_the_manifests_are_the_four_kinds_at_their_api_versions():
    kinds = sorted(doc["kind"] for doc in DOCS)
    assert kinds == sorted(API_VERSIONS), kinds
    for doc in DOCS:
        assert doc["apiVersion"] == API_VERSIONS[doc["kind"]], doc["kind"]


def test_every_selector_picks_the_pods():
    deployment = the("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels.get("app.kubernetes.io/name") == "turbo-app"
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": the("Service")["spec"]["selector"],
        "PodDisruptionBudget": the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector and selector.items() <= labels.items(), f"{kind} selects {selector}, pods have {labels}"
    for doc in DOCS:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "turbo-app", doc["kind"]
    target = the("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1", "Deployment", deployment["metadata"]["name"])


def test_the_ports_are_the_binds():
    container, given = turbo_container(), turbo_flags()
    http = bind_port(given["--bind"])
    metrics = bind_port(given["--metrics-bind"])
    assert http != metrics
    assert container_port(container, "http") == http
    assert container_port(container, "metrics") == metrics
    for port in the("Service")["spec"]["ports"]:
        assert container_port(container, port["targetPort"]) == http
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_probes_ask_the_supervisor_on_the_metrics_port():
    container = turbo_container()
    metrics = bind_port(turbo_flags()["--metrics-bind"])
    paths = {"readinessProbe": "/readyz", "livenessProbe": "/livez", "startupProbe": "/livez"}
    for probe, path in paths.items():
        if probe == "startupProbe" and probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == metrics, probe


def test_the_grace_period_outlasts_the_delay_and_the_drain():
    given = turbo_flags()
    delay = int(given.get("--shutdown-delay") or 0)
    drain = int(given.get("--graceful-timeout") or 30)
    assert delay > 0, "--shutdown-delay keeps serving while endpoints catch up"
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert grace >= delay + drain + 1, f"SIGKILL after {grace} s, turbo may take {delay} + {drain} s"
    # --shutdown-delay does what a preStop sleep would; both would add up.
    assert "preStop" not in turbo_container().get("lifecycle", {}), "--shutdown-delay is the preStop sleep"


def test_the_shards_follow_the_cpu_limit():
    container = turbo_container()
    resources = container["resources"]
    cpus = whole_cpus(resources["limits"]["cpu"])
    assert whole_cpus(resources["requests"]["cpu"]) == cpus, "requests equal limits: Guaranteed QoS"
    assert "memory" in resources["limits"]
    given = turbo_flags()
    assert not {"--cores", "--workers", "-w"} & given.keys(), "a shard count in args overrides WEB_CONCURRENCY"
    env = {e["name"]: e for e in container["env"]}
    field = env["WEB_CONCURRENCY"]["valueFrom"]["resourceFieldRef"]
    assert field["resource"] == "limits.cpu"
    assert str(field.get("divisor", "1")) == "1"


def test_what_turbo_writes_is_writable():
    spec, container = pod_spec(), turbo_container()
    security = container.get("securityContext", {})
    assert spec.get("securityContext", {}).get("runAsNonRoot") or security.get("runAsNonRoot")
    if security.get("readOnlyRootFilesystem"):
        spool = turbo_flags().get("--tmp-upload-dir") or "/tmp"
        empty = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert mounts.get(spool) in empty, f"{spool} is not an emptyDir under a read-only root"


def test_the_autoscaler_and_the_budget_let_a_node_drain():
    deployment, hpa = the("Deployment"), the("HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    spec = hpa["spec"]
    assert 2 <= spec["minReplicas"] <= spec["maxReplicas"]
    cpu = [m["resource"] for m in spec["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and cpu[0]["target"]["type"] == "Utilization"
    assert 0 < cpu[0]["target"]["averageUtilization"] < 100
    budget = the("PodDisruptionBudget")["spec"]
    assert len({"minAvailable", "maxUnavailable"} & budget.keys()) == 1
    if "maxUnavailable" in budget:
        assert budget["maxUnavailable"] == 1
    else:
        assert budget["minAvailable"] < spec["minReplicas"], "an eviction must be allowed"


def test_every_flag_is_one_turbo_knows():
    """The one check that needs turbo: its --help lists every flag the
    Deployment passes."""
    r = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    unknown = [f for f in turbo_flags() if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", r.stdout)]
    assert not unknown, f"not in turbo --help: {unknown}"


# The dashboard.

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "inf", "nan"}


def without_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def metric_names(expr):
    """The metric names a PromQL expression selects: the identifiers left
    once strings, label matchers, ranges, grouping clauses and Grafana
    variables are gone, other than function names and keywords."""
    e = without_strings(expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", e)
    names = set()
    for m in re.finditer(r"\d[\w.]*|[A-Za-z_:][\w:]*", e):
        word = m.group()
        if word[0].isdigit() or word.lower() in PROMQL_WORDS or e[m.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def grouping_labels(expr):
    return {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", without_strings(expr))
            for label in group.split(",") if label.strip()}


def test_metric_names_reads_promql():
    assert metric_names(
        'histogram_quantile(0.99, sum by (instance, le) (rate(turbo_request_duration_seconds_bucket'
        '{job=~"$job", status="5xx"}[$__rate_interval]))) / on (job) group_left count(up) > bool 1e3'
    ) == {"turbo_request_duration_seconds_bucket", "up"}
    assert grouping_labels('sum by (status) (x) / sum without (shard, le) (y{a="by (no)"})') == {
        "status", "shard", "le"}


def panels(items):
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard():
    return json.loads(DASHBOARD.read_text())


def exprs(dash):
    return [(p["title"], t["expr"]) for p in panels(dash["panels"]) for t in p.get("targets", [])]


def test_the_dashboard_queries_only_turbo_metrics():
    dash = dashboard()
    found = exprs(dash)
    assert len(found) >= 10
    used = set()
    for title, expr in found:
        assert expr.count("(") == expr.count(")"), title
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= SERIES.keys(), f"{title}: {names - SERIES.keys()} not exported by turbo"
        families = {SERIES[n] for n in names}
        used |= families
        labels = set().union(*(FAMILIES[f] for f in families)) | TARGET_LABELS
        if families & HISTOGRAMS:
            labels.add("le")
        assert grouping_labels(expr) <= labels, f"{title}: groups by {grouping_labels(expr) - labels}"
        if "histogram_quantile" in expr:
            assert "le" in grouping_labels(expr) and all(n.endswith("_bucket") for n in names), title
    assert used == FAMILIES.keys(), f"no panel for {FAMILIES.keys() - used}"


def test_the_dashboard_variables_and_data_source():
    dash = dashboard()
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name, var in variables.items():
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\s*\)", query)
        assert m, f"${name}: {query}"
        assert metric_names(m[1]) and metric_names(m[1]) <= SERIES.keys(), query
        assert m[2] in TARGET_LABELS | set().union(*FAMILIES.values()), query
    everything = [p for p in panels(dash["panels"]) if p["type"] != "row"]
    assert len({p["id"] for p in panels(dash["panels"])}) == len(list(panels(dash["panels"])))
    for panel in everything:
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
    # Every $variable a query uses is defined.
    for title, expr in exprs(dash):
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in variables or var.startswith("__"), f"{title}: ${var}"


def test_the_readme_lists_every_file():
    readme = (TUNING / "README.md").read_text()
    first = readme.split("\n## ", 1)[0]
    files = [p for p in TUNING.rglob("*") if p.is_file() and p.name != "README.md"]
    assert DASHBOARD in files and KUBE / "deployment.yaml" in files
    missing = [str(p.relative_to(TUNING)) for p in files if p.name not in first]
    assert not missing, f"not in tuning/README.md's first paragraph: {missing}"


def test_the_metric_families_here_are_the_ones_turbo_exports(turbo):
    """FAMILIES, which the dashboard's queries are checked against, is what a
    real /metrics holds, labels included."""
    from prometheus_client.parser import text_string_to_metric_families

    from conftest import free_port, ops_get
    port = free_port()
    turbo("hello:app", "--metrics-bind", f"127.0.0.1:{port}")
    status, text = ops_get(port, "/metrics")
    assert status == 200
    exported = {}
    for family in text_string_to_metric_families(text):
        # The parser names a counter's family without its _total.
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = set()
        for sample in family.samples:
            exported[name] |= set(sample.labels) - {"le"}
    assert set(exported) == set(FAMILIES)
    for name, labels in exported.items():
        assert labels <= FAMILIES[name], name
