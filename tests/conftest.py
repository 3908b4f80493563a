import sys
from pathlib import Path

# Helper modules that live beside the tests (e.g. third_party_pool) import by name.
sys.path.insert(0, str(Path(__file__).parent))
