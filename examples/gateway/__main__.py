"""``python -m examples.gateway``: the demo; see `examples.gateway.demo`."""

import sys

from .demo import main

sys.exit(main())
