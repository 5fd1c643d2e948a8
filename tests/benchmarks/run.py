"""run.py — `make bench`: run every tests/benchmarks/bench_*.py and summarise.

    .venv/bin/python tests/benchmarks/run.py [-k NAME] [-- ARGS passed to each bench]

Each bench_*.py found next to this file (sorted by name) runs as its own process with
this interpreter, its output streamed through.  A bench reports by printing, as its last
JSON line, an object with at least "bench" and "ok"; run.py collects those lines and
prints one summary line per bench plus the command that reproduces it.  A bench that
prints no such line is summarised by its exit status alone.

Before the first bench the project is byte-compiled (compileall): the benches run the
code as an unprivileged user who cannot write __pycache__, and a stale .pyc would make
every process pay for compiling.

Exit status: 0 when every bench exited 0, 1 otherwise.  Timings are never asserted in
the test suite; this is the only place they are judged (issue 3, "Performance").
"""

from __future__ import annotations

import argparse
import compileall
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def find_benches(name: str | None) -> list[Path]:
    return [p for p in sorted(HERE.glob("bench_*.py")) if name is None or name in p.stem]


def run_one(path: Path, extra: list[str]) -> tuple[int, dict | None, float]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(path), *extra], stdout=subprocess.PIPE,
                            cwd=REPO, text=True, bufsize=1)
    summary = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "bench" in obj:
                summary = obj
    return proc.wait(), summary, time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run every bench_*.py")
    ap.add_argument("-k", dest="name", help="only benches whose name contains NAME")
    ap.add_argument("extra", nargs="*", help="arguments for each bench (after --)")
    args = ap.parse_args(argv)
    for pkg in ("rules", "deliver", "mta"):
        compileall.compile_dir(str(REPO / pkg), quiet=1, workers=0)
    benches = find_benches(args.name)
    if not benches:
        print("run.py: no bench_*.py found", file=sys.stderr)
        return 1
    results = []
    for path in benches:
        print(f"=== {path.name}", flush=True)
        code, summary, secs = run_one(path, args.extra)
        results.append((path, code, summary, secs))
    print("\n=== summary")
    for path, code, summary, secs in results:
        verdict = "PASS" if code == 0 else "FAIL"
        line = f"{verdict} {path.name} (exit {code}, {secs:.0f} s)"
        if summary:
            line += " " + ", ".join(f"{k}={_short(v)}" for k, v in summary.items()
                                    if k not in ("bench", "ok", "command"))
            if "command" in summary:
                line += f"\n     reproduce: {summary['command']}"
        print(line)
    return 0 if all(code == 0 for _, code, _, _ in results) else 1


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        keys = [k for k in value if "ratio" in k or k.endswith(("_mb", "_ms", "_per_s"))]
        return "{" + ", ".join(f"{k}: {_short(value[k])}" for k in keys) + "}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
