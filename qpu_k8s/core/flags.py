"""Flags with environment fallbacks, shared by every sub-command.

Every path an agent touches is a flag whose default comes from ``QPU_K8S_<FLAG>`` and then
the real kubelet path, so tests point agents at a temp dir and Helm sets env vars.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def env_name(flag: str) -> str:
    return "QPU_K8S_" + flag.lstrip("-").upper().replace("-", "_")


def add_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    default: str | None,
    help: str,
    *,
    kind: type = str,
) -> None:
    """Add ``--flag`` defaulting to ``$QPU_K8S_FLAG`` then ``default``; help shows both."""
    env = env_name(flag)
    value = os.environ.get(env, default)
    parser.add_argument(
        flag,
        type=kind,
        default=kind(value) if value is not None and kind is not str else value,
        help=f"{help} (env {env}; default: {default})",
    )


def add_common(parser: argparse.ArgumentParser) -> None:
    """Logging flags every long-running agent takes."""
    add_flag(parser, "--log-level", "info", "log level: debug, info, warning, error")
    add_flag(parser, "--log-format", "json", "log format: json (one object a line) or text")


def path_or_none(value: str | None) -> Path | None:
    return Path(value) if value else None


def add_config_map_flag(parser: argparse.ArgumentParser) -> None:
    """``--config-map``: the node agents' way to the operator's ConfigMap (both agents)."""
    add_flag(
        parser,
        "--config-map",
        "",
        "the operator's ConfigMap as NAMESPACE/NAME, followed through the apiserver so a "
        "change is seen at once; --config is read until it is listed ('' reads only --config)",
    )


def namespaced_name(flag: str, value: str | None) -> tuple[str, str] | None:
    """``NAMESPACE/NAME`` as a pair; None when empty. A malformed value names the flag."""
    if not value:
        return None
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"{flag}: {value!r}; use NAMESPACE/NAME (or '' for none)")
    return namespace, name
