import sys

from kvspec.conformance.cli import main

sys.exit(main())
