"""``python -m qpu_k8s.emulator``: the same as ``qpu-k8s emulator``."""

import sys

from .cli import main

sys.exit(main())
