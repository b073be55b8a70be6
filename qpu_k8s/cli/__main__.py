import sys

from qpu_k8s.cli.commands import main

sys.exit(main())
