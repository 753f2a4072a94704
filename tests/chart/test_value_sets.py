"""What each install gives a user: the objects, how the bot is started, where its secrets, its
config and its Redis come from, and that a config change rolls the pods."""

from __future__ import annotations

import base64
import tomllib
from typing import Any

import yaml

from upgrade_bot.engine.config import parse_config

from .rendering import (
    BOT_CONFIG,
    BOT_TOKEN,
    NAMESPACE,
    RELEASE,
    ROOT,
    SIGNING_SECRET,
    VALUE_SETS,
    Rendered,
    merged,
    render,
)


def secret_ref(env: dict[str, Any], name: str) -> tuple[str, str]:
    ref = env[name]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def config_text(rendered: Rendered) -> str:
    return rendered.one("ConfigMap")["data"]["config.yaml"]


def test_defaults_render_a_socket_mode_bot_that_says_what_is_missing() -> None:
    r = render(VALUE_SETS["defaults"])
    assert r.kinds() == [
        "ConfigMap/bot-upgrade-bot",
        "Deployment/bot-upgrade-bot",
        "ServiceAccount/bot-upgrade-bot",
    ]
    project_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((ROOT / "helm/upgrade-bot/Chart.yaml").read_text())
    assert chart["appVersion"] == project_version
    assert r.bot["image"] == f"ghcr.io/upgrade-bot/upgrade-bot:{project_version}"
    assert r.bot["args"] == ["serve"]
    assert r.deployment["spec"]["replicas"] == 1
    env = r.env()
    assert env["UPGRADE_BOT_IDENTITY"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["UPGRADE_BOT_CONFIG"]["value"] == "/etc/upgrade-bot/config.yaml"
    assert env["UPGRADE_BOT_LOG_FORMAT"]["value"] == "json"
    assert r.pod["terminationGracePeriodSeconds"] == 30
    assert env["UPGRADE_BOT_SHUTDOWN_GRACE_S"]["value"] == "25"
    # the tokens from the Secret the user creates, the two Socket Mode needs
    assert secret_ref(env, "SLACK_BOT_TOKEN") == ("upgrade-bot-slack", "SLACK_BOT_TOKEN")
    assert secret_ref(env, "SLACK_APP_TOKEN") == ("upgrade-bot-slack", "SLACK_APP_TOKEN")
    assert "SLACK_SIGNING_SECRET" not in env
    # no Redis given: no REDIS_URL, and both gaps are named where the user looks
    assert "REDIS_URL" not in env
    assert "REDIS_URL is not set" in r.notes
    assert "groups: required key is missing" in r.notes
    assert parse_attempt(config_text(r)) == "groups: required key is missing"
    assert "kubectl -n upgrade-bot create secret generic upgrade-bot-slack" in r.notes
    assert "/readyz" in r.notes and "logs deployment/bot-upgrade-bot" in r.notes


def parse_attempt(text: str) -> str:
    try:
        parse_config(text, "config.yaml")
    except Exception as exc:  # the engine's ConfigError: what `serve` prints at start
        return str(exc).split(": ", 1)[1]
    return "ok"


def test_probes_and_mounts_follow_the_contract() -> None:
    r = render(VALUE_SETS["defaults"])
    assert r.bot["ports"] == [{"name": "ops", "containerPort": 8080, "protocol": "TCP"}]
    assert r.bot["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert r.bot["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert r.bot["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    mounts = {m["mountPath"]: m for m in r.bot["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert volumes[mounts["/etc/upgrade-bot"]["name"]]["configMap"]["name"] == "bot-upgrade-bot"
    assert mounts["/etc/upgrade-bot"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_http_mode_serves_port_3000_behind_a_service_with_the_signing_secret() -> None:
    r = render(VALUE_SETS["http-mode"])
    assert r.bot["args"] == ["serve", "--http", "--port", "3000"]
    assert {"name": "http", "containerPort": 3000, "protocol": "TCP"} in r.bot["ports"]
    service = r.one("Service")
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("http", 3000, "http"),
        ("ops", 8080, "ops"),
    }
    assert selects(
        service["spec"]["selector"], r.deployment["spec"]["template"]["metadata"]["labels"]
    )
    env = r.env()
    assert secret_ref(env, "SLACK_SIGNING_SECRET") == (
        "bot-upgrade-bot-slack",
        "SLACK_SIGNING_SECRET",
    )
    assert secret_ref(env, "SLACK_BOT_TOKEN") == ("bot-upgrade-bot-slack", "SLACK_BOT_TOKEN")
    assert "SLACK_APP_TOKEN" not in env
    secret = r.one("Secret")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    }
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/slack-secret" in annotations
    assert env["REDIS_URL"]["value"] == "redis://redis.databases.svc:6379/0"
    assert "Socket Mode" not in r.notes.splitlines()[1] and "/slack/events" in r.notes


def test_socket_mode_without_ops_exposed_has_no_service() -> None:
    r = render(VALUE_SETS["socket-chart-secret"])
    assert r.of_kind("Service") == []
    assert set(r.one("Secret")["data"]) == {"SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"}


def test_in_chart_redis_is_append_only_on_a_claim_and_the_bot_points_at_it() -> None:
    r = render(VALUE_SETS["internal-redis"])
    sts = r.one("StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    script = " ".join(redis["command"] + redis["args"])
    assert "--appendonly yes" in script and "--dir /data" in script
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in redis["volumeMounts"]
    assert redis["readinessProbe"]["exec"] and redis["livenessProbe"]["tcpSocket"]
    # the bot's REDIS_URL names the ClusterIP Service, which selects the Redis pod
    url = r.env()["REDIS_URL"]["value"]
    assert url == f"redis://{RELEASE}-upgrade-bot-redis.{NAMESPACE}.svc:6379/0"
    service = r.one("Service", f"{RELEASE}-upgrade-bot-redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    redis_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], redis_labels)
    headless = r.one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # one password, from the same Secret, for the server and the bot
    assert secret_ref({e["name"]: e for e in redis["env"]}, "REDIS_PASSWORD") == (
        "redis-auth",
        "REDIS_PASSWORD",
    )
    assert secret_ref(r.env(), "REDIS_PASSWORD") == ("redis-auth", "REDIS_PASSWORD")
    # only the bot's pods may connect
    policy = r.one("NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], redis_labels)
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    bot_labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(peer["podSelector"]["matchLabels"], bot_labels)
    assert not selects(peer["podSelector"]["matchLabels"], redis_labels)


def test_an_existing_secret_is_referenced_and_no_secret_is_made() -> None:
    r = render(VALUE_SETS["existing-secret"])
    assert r.of_kind("Secret") == []
    env = r.env()
    assert secret_ref(env, "SLACK_BOT_TOKEN") == ("team-slack", "bot")
    assert secret_ref(env, "SLACK_APP_TOKEN") == ("team-slack", "app")
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/slack-secret" not in annotations
    assert env["REDIS_USERNAME"]["value"] == "upgrade-bot"
    assert secret_ref(env, "REDIS_PASSWORD") == ("redis-auth", "REDIS_PASSWORD")
    assert secret_ref(env, "REDIS_SENTINEL_PASSWORD") == ("redis-auth", "sentinel")
    assert secret_ref(env, "CP_API_KEY") == ("api7-cp", "CP_API_KEY")
    # the TLS files the env names are there, from the right Secrets
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    files = {}
    for m in r.bot["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        for item in (secret or {}).get("items", []):
            files[f"{m['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    assert files[env["REDIS_TLS_CA_FILE"]["value"]] == ("redis-ca", "ca.crt")
    assert files[env["REDIS_TLS_CERT_FILE"]["value"]] == ("redis-client", "tls.crt")
    assert files[env["REDIS_TLS_KEY_FILE"]["value"]] == ("redis-client", "tls.key")
    assert "REDIS_TLS_INSECURE_SKIP_VERIFY" not in env


def test_redis_url_from_a_secret() -> None:
    env = render(VALUE_SETS["kubernetes-two-namespaces"]).env()
    assert secret_ref(env, "REDIS_URL") == ("redis-url", "REDIS_URL")


def test_three_replicas_get_a_disruption_budget_keeping_one() -> None:
    r = render(VALUE_SETS["three-replicas"])
    assert r.deployment["spec"]["replicas"] == 3
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
    # the scheduling and pod settings given pass through as they are
    values = VALUE_SETS["three-replicas"]
    for key in (
        "topologySpreadConstraints",
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "imagePullSecrets",
    ):
        assert r.pod[key] == values[key], key
    annotations = r.deployment["spec"]["template"]["metadata"]["annotations"]
    assert values["podAnnotations"].items() <= annotations.items()
    assert "checksum/config" in annotations
    assert r.env()["HTTPS_PROXY"] == values["extraEnv"][0]
    # the optional init container validates the mounted config with the bot's own command
    (init,) = r.pod["initContainers"]
    assert init["args"] == ["validate", "--config", "/etc/upgrade-bot/config.yaml"]
    assert init["image"] == r.bot["image"]
    for name in ("defaults", "http-mode", "internal-redis"):
        assert render(VALUE_SETS[name]).of_kind("PodDisruptionBudget") == []


def checksum(values: dict[str, Any]) -> str:
    return render(values).deployment["spec"]["template"]["metadata"]["annotations"][
        "checksum/config"
    ]


def test_a_config_change_changes_the_pod_template_and_nothing_else_does() -> None:
    base = VALUE_SETS["http-mode"]
    changed_config = merged(base, {"config": {"slack": {"channel": "C0OTHER"}}})
    changed_file = merged(base, {"configFiles": {"CHANGELOG.md": "## 3.8.1\n- fixes\n"}})
    changed_replicas = merged(base, {"replicaCount": 2})
    assert checksum(base) == checksum(base)
    assert checksum(changed_config) != checksum(base)
    assert checksum(changed_file) != checksum(base)
    assert checksum(changed_replicas) == checksum(base)

    # a token change rolls the pods too when the chart keeps the tokens
    def secret_sum(values: dict[str, Any]) -> str:
        meta = render(values).deployment["spec"]["template"]["metadata"]
        return meta["annotations"]["checksum/slack-secret"]

    assert secret_sum(merged(base, {"slack": {"botToken": "xoxb-rotated"}})) != secret_sum(base)


def test_the_config_reaches_the_bot_as_given() -> None:
    r = render(VALUE_SETS["http-mode"])
    config = parse_config(config_text(r), "config.yaml")
    assert [g.name for g in config.groups] == ["prod-eu"]
    assert yaml.safe_load(config_text(r)) == BOT_CONFIG
    # a file given whole (`--set-file config=bot.yaml`) is kept byte for byte, comments too
    text = "# ours\n" + yaml.safe_dump(BOT_CONFIG)
    assert config_text(render(merged(VALUE_SETS["http-mode"], {"config": text}))) == text
    # and files beside it, where the config's relative paths point
    with_file = render(
        merged(VALUE_SETS["http-mode"], {"configFiles": {"CHANGELOG.md": "## 3.8.1"}})
    )
    assert with_file.one("ConfigMap")["data"]["CHANGELOG.md"] == "## 3.8.1\n"


def test_the_shutdown_grace_follows_the_termination_grace() -> None:
    r = render(merged(VALUE_SETS["http-mode"], {"terminationGracePeriodSeconds": 60}))
    assert r.pod["terminationGracePeriodSeconds"] == 60
    assert r.env()["UPGRADE_BOT_SHUTDOWN_GRACE_S"]["value"] == "55"
