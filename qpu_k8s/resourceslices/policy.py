"""Which devices a backend publishes, and how: one rule for the node driver and the operator.

The device model (``--device-model``):

* ``lanes`` (default): one device per lane, ``<backend>-lane-<n>``, all with the same
  attributes but ``lane``; a claim gets one lane. Works on every DRA release from 1.34.
* ``capacity``: one device per QPU, named after the backend, with its lanes as consumable
  capacity ``lanes`` (``allowMultipleAllocations``, KEP-5075: beta and on from 1.36; with
  the ``DRAConsumableCapacity`` gate off the apiserver drops both fields and the device
  becomes one exclusive device). A claim takes one lane by default (shared QPU) or asks
  ``capacity.requests.lanes`` up to all of them (exclusive). Consumable capacity rather
  than partitionable counters: a partition is a device of its own, so "all lanes" would
  be one more published device overlapping the per-lane ones, and a claim would choose
  among partition names instead of saying how much it needs.

A backend publishes its devices as schedulable only when it can keep what the attributes
promise: it is usable (configured, credentials complete, its last probe answered online) and its
attributes come from a ``target()`` answer (qubits and quality figures, which CEL
selectors like ``device.attributes[...].qubits >= 100`` evaluate). Otherwise:

* ``withdraw`` (default): its devices are left out of the slice; every DRA version honours
  it, and a claim is never allocated a device it cannot use;
* ``taint``: its devices stay, with a ``NoSchedule`` DeviceTaint
  ``<driver>/unhealthy=<why>`` that shows the reason (GA in 1.37; with the DRADeviceTaints
  feature off the apiserver drops the field, leaving the device allocatable). A backend the
  vendor reports *paused* (maintenance, calibration: it comes back by itself) gets
  ``<driver>/paused=<the vendor's reason>`` instead, the reason as a label value (at most
  63 characters, the taint value's limit); the full reason is in the health stream's
  message and the QuantumBackend's ``BackendPaused`` condition.

Either way a claim already prepared keeps its acquisition: health gates new allocations.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from qpu_k8s.core.model import QuantumBackend, device_id
from qpu_k8s.core.values import AttributeValue
from qpu_k8s.resourceslices.build import Device, DeviceTaint, SharedCapacity

CAPACITY_LANES = "lanes"


class DeviceModel(StrEnum):
    LANES = "lanes"
    CAPACITY = "capacity"


class UnhealthyMode(StrEnum):
    WITHDRAW = "withdraw"
    TAINT = "taint"


def label_value(text: str) -> str:
    """``text`` as a label value (a taint value must be one): other characters become
    ``-``, cut to 63 characters, starting and ending alphanumeric; may be empty."""
    value = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in text)
    return value[:63].strip("-_.")


def unhealthy_taint(driver: str, why: str, reason: str = "") -> DeviceTaint:
    """The taint an unpublishable device carries in ``taint`` mode: ``<driver>/paused=
    <reason>`` when the vendor paused the backend, else ``<driver>/unhealthy=<why>``."""
    if why == "paused":
        return DeviceTaint(f"{driver}/paused", label_value(reason) or "paused", "NoSchedule")
    return DeviceTaint(f"{driver}/unhealthy", label_value(why) or "unknown", "NoSchedule")


def binding_conditions(driver: str) -> tuple[str, str]:
    """Acquire before bind: the device condition the scheduler waits for before it binds
    the pod, and the one that makes it drop the allocation and place the claim again."""
    return f"{driver}/acquired", f"{driver}/acquire-failed"


def lane_devices(
    backend: QuantumBackend,
    attributes: Mapping[str, AttributeValue] | None,
    *,
    usable: bool,
    why: str,
    driver: str,
    mode: UnhealthyMode,
    model: DeviceModel = DeviceModel.LANES,
    acquire_before_bind: bool = False,
    reason: str = "",
) -> list[Device]:
    """The devices of ``backend``: ``attributes`` (any lane's; None: no ``target()`` answer
    yet), ``usable`` and, when not, ``why`` (the probe state) and ``reason`` (the vendor's
    words) decide per the policy; ``model`` says whether a lane is a device or a unit of the
    QPU device's capacity; with ``acquire_before_bind`` they carry the binding conditions."""
    if attributes is None:
        usable, why = False, why if not usable else "not-calibrated"
    if not usable and mode is UnhealthyMode.WITHDRAW:
        return []
    taints = () if usable else (unhealthy_taint(driver, why, reason),)
    base = {k: v for k, v in (attributes or {}).items() if k != "lane"}
    acquired, failed = binding_conditions(driver)
    waits: tuple[str, ...] = (acquired,) if acquire_before_bind else ()
    fails: tuple[str, ...] = (failed,) if acquire_before_bind else ()
    if model is DeviceModel.CAPACITY:
        lanes = {CAPACITY_LANES: SharedCapacity(backend.spec.lanes)}
        return [Device(backend.name, base, taints, lanes, waits, fails)]
    return [
        Device(
            device_id(backend.name, lane),
            {**base, "lane": lane},
            taints,
            binding_conditions=waits,
            binding_failure_conditions=fails,
        )
        for lane in range(backend.spec.lanes)
    ]
