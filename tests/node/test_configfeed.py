"""The node config through the apiserver: a change is seen at once, the file only until then.

A real HTTP apiserver fake (:mod:`testsupport.nodeapi`) and the real Kubernetes client; the
registry's reload interval is set to a minute, so only the feed's own wake-up can make a
change show within the tests' deadlines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from qpu_k8s.core.flags import namespaced_name
from qpu_k8s.core.kubeclient import api_client
from qpu_k8s.core.names import NODE_CONFIG_KEY
from qpu_k8s.node.configfeed import ConfigFeed
from qpu_k8s.node.registry import BackendRegistry
from testsupport.instant_client import InstantClient
from testsupport.nodeapi import NodeApi
from testsupport.waiting import wait_for

NS, NAME = "qpu-system", "qpu-k8s-node-config"
WARDEN = {"QRMI_WARDEN_URL": "http://127.0.0.1:1"}  # never called: the clients are instant
SLOW = 60.0  # the registry's own reload interval: longer than any wait below


def config(*names: str) -> str:
    docs: list[dict[str, Any]] = [
        {"name": n, "spec": {"resourceId": n, "type": "pasqal-local", "config": WARDEN}}
        for n in names
    ]
    return yaml.safe_dump({"backends": docs})


@pytest.fixture
def api() -> Iterator[NodeApi]:
    with NodeApi("n1") as fake:
        yield fake


def registry(tmp_path: Path, feed: ConfigFeed | None) -> BackendRegistry:
    return BackendRegistry(
        tmp_path / NODE_CONFIG_KEY,
        None,
        lambda backend, creds: InstantClient(backend),  # type: ignore[arg-type,return-value]
        reload_interval=SLOW,
        feed=feed,
    )


def names(reg: BackendRegistry) -> list[str]:
    return sorted(reg.snapshot())


def from_apiserver() -> float | None:
    """What an admin sees: which copy of the config the agent is using."""
    return REGISTRY.get_sample_value("qpu_k8s_config_from_apiserver")


def test_a_deleted_backend_is_dropped_at_once_and_the_file_is_not_read_again(
    api: NodeApi, tmp_path: Path
) -> None:
    (tmp_path / NODE_CONFIG_KEY).write_text(config("old-copy"))  # the volume, behind
    api.put_config_map(NS, NAME, {NODE_CONFIG_KEY: config("a", "b")})
    feed = ConfigFeed(api_client(api.kubeconfig(tmp_path / "kubeconfig")), NS, NAME)
    reg = registry(tmp_path, feed)
    reg.start()
    try:
        wait_for(lambda: names(reg) == ["a", "b"], 10, "the ConfigMap's backends")
        api.put_config_map(NS, NAME, {NODE_CONFIG_KEY: config("a")})
        wait_for(lambda: names(reg) == ["a"], 5, "the deleted backend dropped")
        # The volume catches up later, with an older copy: the apiserver's stays.
        (tmp_path / NODE_CONFIG_KEY).write_text(config("a", "b"))
        reg.reload()
        assert names(reg) == ["a"]
        # The ConfigMap itself deleted: no backends (as its optional volume would empty).
        api.delete_config_map(NS, NAME)
        wait_for(lambda: names(reg) == [], 5, "every backend dropped with the ConfigMap")
    finally:
        reg.stop()


def test_the_file_is_read_until_the_apiserver_answers_and_its_copy_outlives_it(
    tmp_path: Path,
) -> None:
    (tmp_path / NODE_CONFIG_KEY).write_text(config("from-file"))
    api = NodeApi("n1")
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    api.put_config_map(NS, NAME, {NODE_CONFIG_KEY: config("from-api")})
    # Not serving yet: the feed's first listing fails, and the mounted file is what counts.
    feed = ConfigFeed(api_client(kubeconfig), NS, NAME)
    reg = registry(tmp_path, feed)
    reg.start()
    try:
        assert names(reg) == ["from-file"]
        assert from_apiserver() == 0
        with api:
            wait_for(lambda: names(reg) == ["from-api"], 20, "the apiserver's copy")
        assert from_apiserver() == 1
        # The apiserver gone again: the last copy seen stays, the file is not read back.
        reg.reload()
        assert names(reg) == ["from-api"]
    finally:
        reg.stop()


def test_an_invalid_config_from_the_apiserver_keeps_the_last_good_one(
    api: NodeApi, tmp_path: Path
) -> None:
    api.put_config_map(NS, NAME, {NODE_CONFIG_KEY: config("a")})
    feed = ConfigFeed(api_client(api.kubeconfig(tmp_path / "kubeconfig")), NS, NAME)
    reg = registry(tmp_path, feed)
    reg.start()
    try:
        wait_for(lambda: names(reg) == ["a"], 10, "the ConfigMap's backend")
        api.put_config_map(NS, NAME, {NODE_CONFIG_KEY: "backends: [{name: 5}]"})
        error = wait_for(lambda: reg.config_error, 5, "the config error")
        assert f"ConfigMap {NS}/{NAME}" in error
        assert names(reg) == ["a"]
    finally:
        reg.stop()


@pytest.mark.parametrize("value", ["no-slash", "/name", "ns/", "a/b/c"])
def test_a_malformed_config_map_flag_names_the_flag_and_the_form(value: str) -> None:
    with pytest.raises(ValueError, match=r"--config-map: .*use NAMESPACE/NAME"):
        namespaced_name("--config-map", value)
    assert namespaced_name("--config-map", "") is None
    assert namespaced_name("--config-map", f"{NS}/{NAME}") == (NS, NAME)
