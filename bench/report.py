"""Runs every benchmark in bench/ and writes one markdown table of side-by-side ratios.

  python -m bench.report [--out=out/bench] [--only=forward,generate]

Each script runs in its own process (as `python -m bench.<name> --json=...`, from the repository root), prints its detailed
lines as it goes, and appends one JSON row per figure; this script gathers the rows into
`<out>/report.md` (and `report.jsonl`) headed by the device kind, so a CPU run and a GPU run of the
same scripts compare directly. Every figure is a ratio measured in the same run: never a timing
against a fixed number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# In the order a reader follows the method: model, training, generation, RL, the paper's speed claim.
SCRIPTS = ("attention", "forward", "train_step", "generate", "grpo_step", "single_vs_agentic")


def markdown(rows: list[dict], header: str) -> str:
  lines = [header, "", "| bench | config | what | ours | reference | ratio | ratio is | check |",
           "| --- | --- | --- | --- | --- | ---: | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['bench']} | {r['case']} | {r['what']} | {r['ours']} | {r['reference']} | "
                 f"{r['ratio']:.2f}x | {r['meaning']} | {r['check']} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", default="out/bench")
  parser.add_argument("--only", default="", help="comma-separated subset of " + ",".join(SCRIPTS))
  args = parser.parse_args()
  names = [n for n in args.only.split(",") if n] or list(SCRIPTS)
  unknown = sorted(set(names) - set(SCRIPTS))
  if unknown:
    raise SystemExit(f"--only: unknown bench {unknown}; benches are {SCRIPTS}")
  os.makedirs(args.out, exist_ok=True)
  rows_path = os.path.join(args.out, "report.jsonl")
  if os.path.exists(rows_path):
    os.remove(rows_path)
  failed, started = [], time.time()
  for name in names:
    print(f"== bench/{name}.py", flush=True)
    rc = subprocess.call([sys.executable, "-m", f"bench.{name}", f"--json={os.path.abspath(rows_path)}"], cwd=ROOT)
    if rc:
      failed.append(name)  # keep going: one broken bench should not hide the others' figures
  rows = [json.loads(line) for line in open(rows_path)] if os.path.exists(rows_path) else []
  device = rows[0]["device"] if rows else "no rows"
  header = (f"# zwz-jax benchmarks\n\n`make bench` on {device}, {os.cpu_count()} cores "
            f"({platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d')}, "
            f"{(time.time() - started) / 60:.1f} min. Each ratio compares two sides measured in this run.")
  if failed:
    header += f"\n\nFAILED: {', '.join(failed)} (see the output above)"
  report = markdown(rows, header)
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write(report)
  print("\n" + report + f"\nwritten: {os.path.join(args.out, 'report.md')}", flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
