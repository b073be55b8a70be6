"""Test and development support: never shipped in the wheel, never imported by qpu_k8s.

The fake kubelet the demo also uses is product code (``qpu_k8s.fakekubelet``); what is
here serves only tests, benchmarks and the developer commands (tools, packaging, the
real-cluster fixture).
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The checkout's root (tests run child processes from it)."""
