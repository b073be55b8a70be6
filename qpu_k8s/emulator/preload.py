"""Imported once by the workers' fork server, before it forks any job process.

Everything a job needs that is slow to load (qiskit, qiskit-aer, qiskit-ibm-runtime, pulser,
pulser-simulation, the catalogue backends' targets and calibrations, the Pasqal device specs)
is loaded here, so a job process starts warm. Nothing here may start threads that a fork
would lose (no simulation runs here). Missing packages are skipped: the light image has no
simulators and must still start.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)


def _warm() -> None:
    with contextlib.suppress(ImportError):
        from . import calibration, catalog, sim_qiskit

        sim_qiskit.preload()
        for spec in catalog.by_vendor(catalog.Vendor.IBM):
            try:
                sim_qiskit.backend_target(spec.source)
                calibration.for_backend(spec.name)
            except Exception:  # a broken snapshot fails that backend's jobs, not the server
                log.debug("could not preload %s", spec.name, exc_info=True)
    with contextlib.suppress(ImportError):
        from . import catalog, sim_pulser

        sim_pulser.preload()
        for spec in catalog.by_vendor(catalog.Vendor.PASQAL):
            with contextlib.suppress(Exception):
                sim_pulser.device_specs(spec.source)


_warm()
