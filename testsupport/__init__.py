"""Test and development support: never shipped in the wheel, never imported by qpu_k8s.

The fake kubelet the demo also uses is product code (``qpu_k8s.fakekubelet``); what is
here serves only tests, benchmarks and the developer commands. One home per concern:

- ``fixtures``: the pytest fixtures several test folders use (``tests/conftest.py`` loads
  it): the agents' emulator, a short temporary root, the device-plugin layout and node,
  the fake kubelet parts, the agents in-process or as real processes;
- ``names``: the resource, driver and node-label names the tests expect;
- ``waiting``: ``wait_for`` (and the async ``until``) for what can only be polled;
- ``emulator``: the test credentials, backends on the emulator, what its sessions saw,
  clients and circuits for the emulator's own tests;
- ``processes``: an agent as a real child process (logs, metrics, signals);
- ``deviceplugin``: the plugin's file layout, fast settings, the plugin as a process;
- ``dra``: backends as models, vendor targets, schema validation, claims (the in-memory
  ``StaticClaims`` and the file-backed ``FileClaims``), the simulated ``DraNode``, the
  driver as a process; ``dra_child``: that process (``python -m testsupport.dra_child``);
- ``faults``: the fault suite's backends and measured results; ``netproxy``: a TCP proxy
  the fault tests cut;
- ``operator``: CRD schema and CEL evaluation, an in-memory API, fake vendor clients;
- ``tinyplugins``: tiny device and DRA plugins that exercise the fake kubelet;
- ``cluster``, ``release``: the local 1.37 cluster (hack/local-cluster) as a session
  fixture, the chart installed on it;
- ``nodeapi``: a fake apiserver for one node's agents (pods, Node, slices), over real HTTP;
- ``grpc_floor``, ``instant_client``: what the benchmarks measure against;
- ``tools``, ``packaging``, ``example_workloads``: pinned helm/kubectl, the chart and the
  files derived from it.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The checkout's root (tests run child processes from it)."""
