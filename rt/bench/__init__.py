"""`rt bench`: the benchmark suite (issue 5). One module per subcommand; see common.py."""

SUBCOMMANDS = ("latency", "fanout", "connections", "storm", "ingest", "cluster")


def run(name: str, quick: bool, out) -> None:
    import importlib
    from pathlib import Path

    from rt.bench.common import DEFAULT_OUT

    module = importlib.import_module(f"rt.bench.{name}")
    module.main(quick, Path(out) if out else DEFAULT_OUT)
