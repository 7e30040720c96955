"""`python -m gateway`: see gateway/server.py."""

import sys

from gateway.server import main

sys.exit(main())
