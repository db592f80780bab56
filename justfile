# One command per chore; CI runs the same test command (.ci/run).

venv := ".venv"

# install rt with its test extras into .venv
install:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -q -e '.[test]'

# the whole test suite
test: install
    {{venv}}/bin/pytest

# ruff over the package, tests and benchmarks
lint: install
    {{venv}}/bin/ruff check rt tests bench

# serve on 127.0.0.1:8000 with guests on and the demo flows
serve: install
    {{venv}}/bin/rt serve --guests --flow general --flow random

# round-trip latency over WebSocket and SSE against a raw TCP floor
bench: install
    {{venv}}/bin/python bench/latency.py
