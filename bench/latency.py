"""Kept for old habits: the round-trip benchmark is now `rt bench latency` (rt/bench/latency.py).

python bench/latency.py [--quick]   is   python -m rt bench latency [--quick]
"""

import sys

from rt.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "latency", *sys.argv[1:]]))
