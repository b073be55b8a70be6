"""The limit settings: flags, their QPU_K8S_EMULATOR_* env fallbacks, the chart's values."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from qpu_k8s.emulator import cli
from qpu_k8s.emulator.config import EmulatorConfig


def parse(argv: list[str]) -> EmulatorConfig:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.config_from_args(parser.parse_args(argv))


def test_defaults() -> None:
    config = parse([])
    assert config.max_sim_qubits == 0  # as many as the backend has
    assert config.max_exact_qubits == 10
    assert config.max_shots == 100_000
    assert config.max_job_seconds == 300.0
    assert config.max_queued_jobs == 100
    assert config.max_sim_atoms == 10
    assert config.max_workers == 2
    assert config.mps_max_bond == 16
    assert config.warm_workers


def test_flags_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QPU_K8S_EMULATOR_MAX_SHOTS", "5000")
    monkeypatch.setenv("QPU_K8S_EMULATOR_MAX_JOB_SECONDS", "12.5")
    monkeypatch.setenv("QPU_K8S_EMULATOR_WORKERS", "1")
    config = parse(["--max-shots", "7000", "--max-qubits=40", "--no-warm-workers"])
    assert config.max_shots == 7000  # the flag wins over the env
    assert config.max_job_seconds == 12.5  # the env wins over the default
    assert config.max_workers == 1
    assert config.max_sim_qubits == 40
    assert config.max_exact_qubits == 10  # neither: the default
    assert not config.warm_workers


def test_every_limit_flag_has_its_env_name() -> None:
    assert {cli.limit_env(flag) for flag in cli.LIMIT_FLAGS} == {
        "QPU_K8S_EMULATOR_MAX_QUBITS",
        "QPU_K8S_EMULATOR_MAX_EXACT_QUBITS",
        "QPU_K8S_EMULATOR_MAX_SHOTS",
        "QPU_K8S_EMULATOR_MAX_JOB_SECONDS",
        "QPU_K8S_EMULATOR_MAX_QUEUED_JOBS",
        "QPU_K8S_EMULATOR_MAX_ATOMS",
        "QPU_K8S_EMULATOR_WORKERS",
        "QPU_K8S_EMULATOR_MPS_MAX_BOND",
    }


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--max-shots", "many"], {}, "--max-shots: 'many' is not a valid int"),
        ([], {"QPU_K8S_EMULATOR_MAX_QUBITS": "1.5"}, "QPU_K8S_EMULATOR_MAX_QUBITS: '1.5'"),
        (["--workers", "0"], {}, "--workers must be >= 1"),
        (["--max-job-seconds", "0"], {}, "--max-job-seconds must be > 0"),
    ],
)
def test_bad_values_name_the_flag_or_env(
    argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        parse(argv)


def test_cli_exits_2_on_a_bad_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--max-atoms", "-3"]) == 2
    assert "--max-atoms must be >= 1" in capsys.readouterr().err


def _rendered_args(values: dict[str, Any]) -> list[str]:
    from testsupport import packaging, tools

    try:
        tools.helm()
    except (tools.ToolError, tools.UnsupportedPlatformError) as err:
        pytest.skip(f"helm is not installed ({err}); python -m testsupport.tools install")
    objs = packaging.objects(packaging.render(values))
    [deploy] = [
        o
        for o in objs
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "emulator"
    ]
    [container] = deploy["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def test_chart_limits_become_flags_the_emulator_parses(tmp_path: Path) -> None:
    limits = {
        "maxQubits": 0,
        "maxExactQubits": 8,
        "maxShots": 1_000_000,
        "maxJobSeconds": 90.5,
        "maxQueuedJobs": 0,
        "maxAtoms": 6,
        "workers": 1,
        "mpsMaxBond": 32,
    }
    command, *args = _rendered_args({"emulator": {"enabled": True, "limits": limits}})
    assert command == "emulator"
    config = parse(args)
    assert config.max_sim_qubits == 0
    assert config.max_exact_qubits == 8
    assert config.max_shots == 1_000_000
    assert config.max_job_seconds == 90.5
    assert config.max_queued_jobs == 0
    assert config.max_sim_atoms == 6
    assert config.max_workers == 1
    assert config.mps_max_bond == 32


def test_chart_defaults_leave_the_emulator_defaults() -> None:
    args = _rendered_args({"emulator": {"enabled": True}})
    assert not [a for a in args if a.startswith(tuple(cli.LIMIT_FLAGS))]
    rendered, default = parse(args[1:]), parse([])
    for field_name, _kind, _help in cli.LIMIT_FLAGS.values():
        assert getattr(rendered, field_name) == getattr(default, field_name), field_name
