"""`python -m exporter`: the same as the docker-netpolicy-exporter command."""

import sys

from exporter.cli import main

if __name__ == "__main__":
    sys.exit(main())
