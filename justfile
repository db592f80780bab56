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

# the benchmark suite (issue 5): every `rt bench` subcommand; results in bench/results/
bench *args: install
    {{venv}}/bin/rt bench latency {{args}}
    {{venv}}/bin/rt bench fanout {{args}}
    {{venv}}/bin/rt bench connections {{args}}
    {{venv}}/bin/rt bench storm {{args}}
    {{venv}}/bin/rt bench ingest {{args}}
