"""``python -m examples.litellm_proxy``: the bug and its fix with curl; see `.demo`."""

import sys

from .demo import main

sys.exit(main())
