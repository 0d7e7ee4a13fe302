"""Record a timed ``make demo`` as JSON: wall and user time, stage times, steps, the report's summary line.

Time the demo with empty caches (as on a fresh machine), alone on the machine, then record the log:

    (export INTERNALIZE_CACHE=$(mktemp -d); /usr/bin/time -v make demo) > demo.log 2>&1
    python experiments/demo/time_demo.py demo.log experiments/demo/results/demo_after.json "what was timed"
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

MAKE_DEMO = "(export INTERNALIZE_CACHE=$(mktemp -d); /usr/bin/time -v make demo)   # empty caches"


def record(text: str, what: str, commit: str, command: str = MAKE_DEMO) -> dict:
    stages = {m[1]: float(m[2]) for m in re.finditer(r"internalize\.run: (\w+) took ([0-9.]+) s", text)}
    clock = [float(x) for x in re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)[1].split(":")]
    wall = sum(x * 60**i for i, x in enumerate(reversed(clock)))
    flags = Path("/proc/cpuinfo").read_text().split("flags\t\t: ")[1].split("\n")[0].split()
    return {"command": command,
            "what": what, "commit": commit, "wall_s": round(wall, 1),
            "user_s": float(re.search(r"User time \(seconds\): ([0-9.]+)", text)[1]),
            "machine": "2 cores, torch 2.13.0+cpu",
            "cpu_flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")},
            "stage_s": stages, "steps": int(re.search(r"training steps 1-(\d+) of", text)[1]),
            "report": re.search(r"wrote \S+report\.md: (.*)", text)[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("what")
    parser.add_argument("--commit", default="", help="the commit timed (default: HEAD)")
    parser.add_argument("--command", default=MAKE_DEMO, help="the command timed (default: make demo, empty caches)")
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True).stdout.strip()
    rec = record(args.log.read_text(errors="replace"), args.what, commit, args.command)
    args.out.write_text(json.dumps(rec, indent=2) + "\n")
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
