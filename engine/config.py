"""Configuration schema: one YAML file, secrets from the environment.

Each capability extends these models. ``load_config`` reports every problem with the file, the
key path and what is expected, never a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .metrics_config import PrometheusMetrics
from .versions import EXAMPLE, is_version, normalize


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Principal = Annotated[str, Field(pattern=r"^(\*|[UW][A-Z0-9]+|S[A-Z0-9]+|[a-z][a-z0-9._-]*)$")]
"""``*`` (anyone), a Slack user ID (``U…``/``W…``), a user group ID (``S…``) or a CLI user name."""


class Policy(Model):
    """Who may do what on a group."""

    start: list[Principal] = Field(default_factory=lambda: ["*"])
    approve: list[Principal] = Field(default_factory=lambda: ["*"])
    pause: list[Principal] = Field(default_factory=lambda: ["*"])
    resume: list[Principal] = Field(default_factory=lambda: ["*"])
    abort: list[Principal] = Field(default_factory=lambda: ["*"])
    rollback: list[Principal] = Field(default_factory=lambda: ["*"])
    override: list[Principal] = Field(default_factory=list)
    """CP version override, backup waiver, unhealthy instances, lock break-glass."""


class Approval(Model):
    """The approval gate after a group."""

    required: int = Field(1, ge=1, le=10, description="distinct approvals needed")
    allow_self_approval: bool = False
    expiry_s: float = Field(4 * 3600, gt=0)
    reminder_interval_s: float = Field(900, gt=0)
    escalate_after_reminders: int = Field(2, ge=1)
    escalation_mention: str | None = None


class Thresholds(Model):
    """Verdict rules for a group's metric summary (defaults from the runbook)."""

    max_5xx_ratio: float = Field(0.01, ge=0, le=1)
    max_5xx_ratio_factor: float = Field(2.0, ge=1)
    p99_factor: float = Field(1.5, ge=1)
    p99_slack_ms: float = Field(20.0, ge=0)
    min_requests: int = Field(200, ge=1)
    max_404_ratio: float = Field(0.02, ge=0, le=1)
    """404 ratio allowed after, or ``max_404_ratio_factor`` * the ratio before if higher: a
    gateway without its configuration answers ``404 Route Not Found`` to everything."""
    max_404_ratio_factor: float = Field(2.0, ge=1)
    max_4xx_ratio: float = Field(0.10, ge=0, le=1)
    """Ratio of 4xx other than 404 allowed after, or ``max_4xx_ratio_factor`` * the ratio
    before if higher."""
    max_4xx_ratio_factor: float = Field(2.0, ge=1)
    outlier_factor: float = Field(3.0, ge=1)
    """One instance is an outlier when its 5xx or 404 ratio exceeds both the group's limit and
    this factor * its peers' ratio, or its p99 exceeds ``p99_factor`` * its peers' + slack."""
    min_instance_requests: int = Field(50, ge=1)
    """Requests an instance needs in the window before it is compared with its peers."""


class Smoke(Model):
    """Smoke requests sent through each replaced instance."""

    enabled: bool = True
    """Off only where no route can be asked (the metric verdict is then the only check)."""
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"] = "GET"
    path: str = Field("/", pattern=r"^/")
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=lambda: [200]
    )
    count: int = Field(5, ge=1, le=1000)
    timeout_s: float = Field(5.0, gt=0)


class Observation(Model):
    window_s: float = Field(600, ge=0)
    checkin_interval_s: float = Field(120, gt=0)


class Rollout(Model):
    batch_size: int = Field(1, ge=1)
    ready_timeout_s: float = Field(300, gt=0)
    baseline_window_s: float = Field(30, gt=0)
    """How long to measure before the group's first replacement."""
    settle_s: float = Field(30, ge=0)
    """How long to measure after the group's last replacement before the verdict."""
    watch: bool = True
    """Judge the metrics since the first replacement after each batch, before the next one: a
    clear ``fail`` (on at least the thresholds' ``min_requests``) halts the group there."""
    watch_min_requests: int | None = Field(None, ge=1)
    """Requests a watch needs before it may fail the group (default: twice the thresholds'
    ``min_requests``): halting mid-group is for clear failures."""
    on_watch_fail: Literal["pause", "rollback"] = "pause"
    """What a failed watch does: pause the run (the on-call engineer resumes or rolls back) or
    roll back at once."""


class StatusReadiness(Model):
    """Ready when the instance's status API answers 200 on ``path``.

    APISIX serves ``GET /status/ready`` from 3.13 on its status listener (``apisix.status`` in
    config.yaml, default 127.0.0.1:7085: apache/apisix ``apisix/cli/config.lua`` and
    docs/en/latest/status-api.md); API7's gateway serves it only when ``status_endpoint`` is
    enabled. Older gateways answer 404, and the group never becomes ready.
    """

    mode: Literal["status"]
    path: str = Field("/status/ready", pattern=r"^/")


class TcpReadiness(Model):
    """Ready when the proxy port accepts a TCP connection. Weak: a gateway accepts connections
    before its workers have their routes, and answers ``404 Route Not Found`` meanwhile."""

    mode: Literal["tcp"]


class ProxyReadiness(Model):
    """Ready when a request through the new instance's proxy port is answered with an
    expected status: by default any status but 404 (no routes yet) and 5xx."""

    mode: Literal["proxy"]
    path: str = Field("/", pattern=r"^/")
    host: str | None = None
    """``Host`` header of the probe, for routes matched by host."""
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(None, min_length=1)


class HealthcheckReadiness(Model):
    """Ready when the container's own healthcheck reports healthy (Docker only)."""

    mode: Literal["healthcheck"]


ProcessReadiness = Annotated[
    StatusReadiness | TcpReadiness | ProxyReadiness, Field(discriminator="mode")
]
"""How a gateway process without a runtime healthcheck is judged ready."""
ContainerReadiness = Annotated[
    StatusReadiness | TcpReadiness | ProxyReadiness | HealthcheckReadiness,
    Field(discriminator="mode"),
]
Readiness = StatusReadiness | TcpReadiness | ProxyReadiness | HealthcheckReadiness


class LocalBackend(Model):
    type: Literal["local"]
    sandbox_url: str = Field(pattern=r"^https?://")
    readiness: ProcessReadiness = StatusReadiness(mode="status")
    stop_signal: Literal["SIGQUIT", "SIGTERM"] = "SIGQUIT"
    """SIGTERM cuts in-flight requests; it exists for the sandbox's negative control."""
    stop_timeout_s: float = Field(60, gt=0)


class DockerTls(Model):
    """Certificates for a Docker host reached over ``tcp://`` (``dockerd --tlsverify``)."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True


class RegistryAuth(Model):
    """Credentials for pulling from a private registry, from the environment. Without it the
    Docker config file (``~/.docker/config.json`` or ``$DOCKER_CONFIG``) is used."""

    username_env: str
    password_env: str
    registry: str | None = None


class DockerBackend(Model):
    """A group of containers on one Docker host (a compose project/service)."""

    type: Literal["docker"]
    base_url: str | None = None
    """``unix:///var/run/docker.sock`` or ``tcp://host:2376``; default ``DOCKER_HOST``, else
    the local socket."""
    tls: DockerTls | None = None
    labels: dict[str, str] = Field(min_length=1)
    """The group's containers, e.g. ``com.docker.compose.project`` and ``…service``."""
    stop_signal: str = Field("SIGQUIT", pattern=r"^SIG[A-Z0-9]+$")
    """SIGQUIT drains nginx-based gateways; SIGTERM drops in-flight requests."""
    stop_timeout_s: float = Field(60, gt=0)
    drain_s: float = Field(0, ge=0)
    """Wait after a replacement is ready before an instance is taken out (the old container's
    stop signal, or with stop-first the next slot's), so that the load balancer's health check
    has seen the new one."""
    proxy_port: int = Field(9080, ge=1, le=65535)
    status_port: int = Field(7085, ge=1, le=65535)
    metrics_port: int = Field(9091, ge=1, le=65535)
    """Container ports of the gateway's listeners (published host ports are found by the
    backend)."""
    registry_auth: RegistryAuth | None = None
    compose_file: str | None = None
    """The compose file of the group's service: updated on completion, restored on rollback."""
    compose_service: str | None = None
    """The service in ``compose_file`` (default: the ``com.docker.compose.service`` label)."""
    readiness: ContainerReadiness = StatusReadiness(mode="status")
    """How a new container is judged ready: its healthcheck, the status endpoint, a proxy
    request or (weak) a TCP connect."""
    api_timeout_s: float = Field(60, gt=0)


class HelmSettings(Model):
    """The ``helm`` strategy: upgrade the group's Helm release (engine/backends/kube_helm.py)."""

    release: str | None = None
    """Default: the Deployment's ``meta.helm.sh/release-name`` annotation."""
    values_key: str | None = None
    """The values key of the image tag; default ``image.tag`` for the APISIX chart,
    ``apisix.image.tag`` for API7's gateway chart."""
    chart: str | None = None
    """A chart (directory, ``.tgz`` or ``oci://`` reference) to upgrade with; default: the chart
    stored in the deployed release."""
    chart_version: str | None = None
    """With ``chart``: the chart version to upgrade to (shown in the plan)."""
    values_file: str | None = None
    """Extra values (YAML) applied in the same upgrade, shown in the plan as a diff against the
    deployed values (the runbook's "other configuration changes")."""

    @model_validator(mode="after")
    def _version_needs_chart(self) -> HelmSettings:
        if self.chart_version and not self.chart:
            raise ValueError("'chart_version' needs 'chart' (the stored chart has one version)")
        return self


class KubernetesBackend(Model):
    """A group that is one Deployment (see engine/backends/kubernetes.py and the README)."""

    type: Literal["kubernetes"]
    namespace: str = "default"
    deployment: str | None = None
    selector: dict[str, str] = Field(default_factory=dict)
    """Labels of the group's Deployment, e.g. ``app.kubernetes.io/instance: prod``."""
    container: str | None = None
    """The gateway container; default: the one whose image is the group's repository (the
    API7 gateway chart names it ``gateway``, the APISIX chart ``apisix``)."""
    kubeconfig: str | None = None
    """A kubeconfig file (default: ``KUBECONFIG``, then ``~/.kube/config``)."""
    context: str | None = None
    in_cluster: bool = False
    """Use the pod's ServiceAccount (the bot runs inside the cluster)."""
    strategy: Literal["helm", "patch"] | None = None
    """``helm``: upgrade the Helm release with only the image tag changed, roll back to the
    recorded revision. ``patch``: strategic-merge patch of the container image. Default:
    ``helm`` when the Deployment is Helm-managed, else ``patch``."""
    helm: HelmSettings = Field(default_factory=HelmSettings)
    poll_interval_s: float = Field(1.0, gt=0)
    """How often the rollout is read while it progresses."""

    @model_validator(mode="after")
    def _deployment_or_selector(self) -> KubernetesBackend:
        if not self.deployment and not self.selector:
            raise ValueError("set 'deployment' or 'selector' (labels of the group's Deployment)")
        if self.in_cluster and (self.kubeconfig or self.context):
            raise ValueError("'in_cluster' uses the pod's ServiceAccount: drop kubeconfig/context")
        return self


BackendConfig = Annotated[
    LocalBackend | DockerBackend | KubernetesBackend, Field(discriminator="type")
]


class Image(Model):
    """How a version maps to an image for this group (API7 and APISIX tags differ)."""

    repository: str = Field(min_length=1)
    tags: dict[str, str] = Field(default_factory=dict)
    """version → tag; a version not listed uses ``tag_template``."""
    tag_template: str = "{version}"

    @field_validator("tags")
    @classmethod
    def _versions_are_versions(cls, tags: dict[str, str]) -> dict[str, str]:
        for version in tags:
            if not is_version(str(version)):
                raise ValueError(f"'{version}' is not a version like {EXAMPLE}")
        return tags

    def for_version(self, version: str) -> str:
        version = normalize(version)
        tag = self.tags.get(version) or self.tag_template.format(version=version)
        return f"{self.repository}:{tag}"


class Group(Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    production: bool = False
    backend: BackendConfig
    image: Image
    gateway_group_id: str | None = None
    """The group's ID on the API7 control plane (its instances as the CP sees them)."""
    gateway_group: str | None = None
    """Alternatively, the group's name on the control plane, looked up by exact match."""
    policy: Policy | None = None
    approval: Approval | None = None
    thresholds: Thresholds | None = None
    smoke: Smoke | None = None
    rollout: Rollout | None = None


class ControlPlane(Model):
    url: str = Field(pattern=r"^https?://")
    api_key_env: str = "CP_API_KEY"
    """Name of the environment variable holding the dashboard API key (never the key itself)."""
    api_key_file: str | None = None
    """Alternatively, a file holding the key (a mounted secret); used when the variable is unset."""
    verify_tls: bool = True
    timeout_s: float = Field(5.0, gt=0)
    verify_timeout_s: float = Field(60.0, gt=0)
    """After a group's last replacement, how long the CP may take to list every new instance
    Healthy on the target version (instances heartbeat every 10 s; the CP calls one lost after
    30 s without)."""
    verify_interval_s: float = Field(5.0, gt=0)
    """How often the CP's instance list is read while waiting."""


class CommandHook(Model):
    type: Literal["command"]
    command: list[str] = Field(min_length=1)
    artifact: str
    """Path of the file the command produces (``{run_id}`` is replaced)."""
    timeout_s: float = Field(600, gt=0)


class HttpHook(Model):
    type: Literal["http"]
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "GET"] = "POST"
    artifact: str
    timeout_s: float = Field(600, gt=0)


BackupHook = Annotated[CommandHook | HttpHook, Field(discriminator="type")]


class Defaults(Model):
    policy: Policy = Field(default_factory=Policy)
    approval: Approval = Field(default_factory=Approval)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    smoke: Smoke = Field(default_factory=Smoke)
    rollout: Rollout = Field(default_factory=Rollout)
    observation: Observation = Field(default_factory=Observation)


class ScrapeMetrics(Model):
    """Evidence by scraping every instance's APISIX prometheus plugin (the default source)."""

    type: Literal["scrape"] = "scrape"
    prefix: str = Field("apisix_", pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    """The exporter's ``plugin_attr.prometheus.metric_prefix`` (apache/apisix
    apisix/cli/config.lua: default ``apisix_``)."""
    exporter_refresh_s: float = Field(15, ge=0)
    """How often the exporter renews what it serves: from APISIX 3.14 it serves a cached
    exposition refreshed every ``plugin_attr.prometheus.refresh_interval`` (15 s by default,
    apache/apisix apisix/plugins/prometheus/exporter.lua) and answers 500 "no data available"
    until its first refresh; 0 for gateways that render on every scrape. A window must last at
    least twice this long, and a "no data available" is waited out for as long."""

    def min_window_s(self) -> float:
        """The shortest window these metrics can resolve."""
        return 2 * self.exporter_refresh_s

    def describe_resolution(self) -> str:
        every = f"{self.exporter_refresh_s:g} s"
        return f"the exporter refreshes every {every} (metrics.exporter_refresh_s)"


# A source adds its model here (a union discriminated by ``type``) and its factory to
# ``engine.adapters.sources.SOURCES``.
def _metrics_type(value: Any) -> str:
    """The ``type`` of a ``metrics`` section; ``scrape`` when it is left out."""
    if isinstance(value, dict):
        return str(value.get("type", "scrape"))
    return str(getattr(value, "type", "scrape"))


MetricsSettings = Annotated[
    Annotated[ScrapeMetrics, Tag("scrape")] | Annotated[PrometheusMetrics, Tag("prometheus")],
    Discriminator(_metrics_type),
]


class Store(Model):
    key_prefix: str = "upgrade-bot"
    lease_ttl_s: float = Field(30, gt=0)
    audit_retention_days: float = Field(90, gt=0)


class Config(Model):
    """The whole file. Secrets are never here: only the names of environment variables."""

    identity: str | None = None
    """This bot's identity for run leases (default: the host name)."""
    groups: list[Group] = Field(min_length=1)
    defaults: Defaults = Field(default_factory=Defaults)
    control_plane: ControlPlane | None = None
    backup: BackupHook | None = None
    changelog: str | None = None
    """A local Markdown file or an http(s) URL, one ``## <version>`` heading per release."""
    store: Store = Field(default_factory=Store)
    metrics: MetricsSettings = Field(default_factory=ScrapeMetrics)
    """Where a group's evidence (the before / after windows) comes from."""
    slack: dict[str, Any] | None = None
    """Read by the Slack layer (see upgrade_bot.bot.settings)."""
    redis_url: str | None = None
    """Used by ``demo``/``sandbox`` only when REDIS_URL is not set; ``serve`` ignores it."""

    @model_validator(mode="after")
    def _unique_group_names(self) -> Config:
        seen: set[str] = set()
        for g in self.groups:
            if g.name in seen:
                raise ValueError(f"group name '{g.name}' appears twice")
            seen.add(g.name)
        return self

    @model_validator(mode="after")
    def _windows_the_metrics_can_resolve(self) -> Config:
        """A window shorter than the metrics' resolution measures nothing: refuse it."""
        minimum = self.metrics.min_window_s()
        problems = []
        for g in self.groups:
            rollout = self.rollout_for(g.name)
            where = "groups (" + g.name + ").rollout" if g.rollout else "defaults.rollout"
            for name in ("baseline_window_s", "settle_s"):
                value = getattr(rollout, name)
                if value < minimum:
                    problems.append(
                        f"{where}.{name}: {value:g} s is shorter than the metrics can resolve: "
                        f"{self.metrics.describe_resolution()}, so a window needs at least "
                        f"{minimum:g} s"
                    )
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))
        return self

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def policy_for(self, group: str) -> Policy:
        return self.group(group).policy or self.defaults.policy

    def approval_for(self, group: str) -> Approval:
        return self.group(group).approval or self.defaults.approval

    def thresholds_for(self, group: str) -> Thresholds:
        return self.group(group).thresholds or self.defaults.thresholds

    def smoke_for(self, group: str) -> Smoke:
        return self.group(group).smoke or self.defaults.smoke

    def rollout_for(self, group: str) -> Rollout:
        return self.group(group).rollout or self.defaults.rollout


_TAGS = ("local", "docker", "kubernetes", "command", "http", "scrape", "prometheus")


def _key_path(loc: tuple[Any, ...], data: Any) -> str:
    """``groups[0].backend.type`` → ``groups[0] (prod-eu).backend.type`` for readability."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label += f" ({node['name']})"
            else:
                node = None
            parts.append(label)
        else:
            # discriminated unions add the tag ('local', 'docker') as a loc element
            if isinstance(node, dict) and item not in node and item in _TAGS:
                continue
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def describe_validation_error(err: ValidationError, data: Any, section: str = "") -> list[str]:
    """One line per problem, naming the key as the file spells it (``section`` is where
    ``data`` sits in the file, e.g. ``slack``): the one wording of pydantic's errors."""
    problems = []
    for e in err.errors():
        key = _key_path(tuple(e["loc"]), data)
        if section:
            key = section if key == "(top level)" else f"{section}.{key}"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config.example.yaml)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif e["type"] == "union_tag_invalid":
            msg = f"expected one of {e['ctx']['expected_tags']}, got '{e['ctx']['tag']}'"
        problems.append(f"{key}: {msg}")
    return problems


def parse_config(text: str, path: str = "<config>") -> Config:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, [f"{where}not valid YAML ({problem})"]) from None
    if data is None:
        raise ConfigError(path, ["the file is empty; expected a mapping with at least 'groups'"])
    if not isinstance(data, dict):
        raise ConfigError(path, ["expected a mapping at the top level (keys such as 'groups')"])
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(path, describe_validation_error(err, data)) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(p), ["no such file"]) from None
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot be read ({exc.strerror})"]) from None
    return parse_config(text, str(p))
