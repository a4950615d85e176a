"""Run every benchmark script in bench/ (``make bench``), one after the other, with its defaults.

    .venv/bin/python bench/run_all.py [--only scorer,pipeline] [--list]

Each ``bench/bench_*.py`` runs in its own process with this interpreter; its output goes to the
terminal and its JSON to bench/results/. The scripts read only bundled data (models/training/data,
ingest/demo); those that need Kafka or Postgres use the FINPULSE_* settings of this shell (``make
bench`` starts the embedded stack first). A failing script does not stop the others; the exit
status is 1 if any failed, and a summary lists each script, its exit status and its wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def scripts() -> list[Path]:
    return sorted(BENCH.glob("bench_*.py"))


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every bench/bench_*.py with its defaults.")
    parser.add_argument("--only", default=None, help="Comma-separated names, e.g. scorer,pipeline (bench_ prefix optional).")
    parser.add_argument("--list", action="store_true", help="List the scripts and exit.")
    args = parser.parse_args()
    chosen = scripts()
    if args.only:
        wanted = {w.strip().removeprefix("bench_").removesuffix(".py") for w in args.only.split(",") if w.strip()}
        chosen = [s for s in chosen if s.stem.removeprefix("bench_") in wanted]
        missing = wanted - {s.stem.removeprefix("bench_") for s in chosen}
        if missing:
            parser.error(f"no bench script named {', '.join(sorted(missing))}")
    if args.list:
        print("\n".join(s.name for s in chosen))
        return 0
    summary = []
    for script in chosen:
        print(f"=== {script.name}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call([sys.executable, str(script)], cwd=BENCH.parent)
        summary.append((script.name, rc, time.monotonic() - t0))
    print("\n| script | exit | seconds |\n|---|---|---|")
    for name, rc, seconds in summary:
        print(f"| {name} | {rc} | {seconds:.0f} |")
    return 1 if any(rc for _, rc, _ in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
