"""This tree's figures of ``ratios.py`` against another commit's, side by side in one run.

    python benchmarks/against_ref.py main                        # stateless and wordcount, 5 each
    python benchmarks/against_ref.py main --only stateless --repeat 7

The commit is exported with ``git archive`` into a temporary folder, and each measurement runs
in a fresh interpreter of this venv, the commit's and this tree's taking turns; the commit's
code comes first on ``PYTHONPATH``. A figure is ``ratios.py``'s engine against a plain loop in
the same interpreter (``ratio``), so a slow minute of the machine hits both of a pair. Shows
per tree the median and range, and this tree's median over the commit's: what a change costs
when nothing of it is turned on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as blob:
        blob.write(archive)
        blob.seek(0)
        with tarfile.open(fileobj=blob) as tar:
            tar.extractall(into, filter="data")
    return into


def measure(root: Path, name: str, own: bool) -> float:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if not own:
        env["PYTHONPATH"] = str(root / "worker")
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "ratios.py"), "--measure", name],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["ratio"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", help="the commit to compare with (main, a hash...)")
    parser.add_argument("--only", nargs="*", default=["stateless", "wordcount"], choices=["stateless", "wordcount"])
    parser.add_argument("--repeat", type=int, default=5, help="runs per tree and figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        other = export(args.ref, Path(folder))
        trees = {args.ref: (other, False), "this tree": (ROOT, True)}
        figures: dict[tuple[str, str], list[float]] = {(tree, name): [] for tree in trees for name in args.only}
        for _ in range(args.repeat):
            for name in args.only:
                for tree, (root, own) in trees.items():
                    figures[(tree, name)].append(measure(root, name, own))
    for name in args.only:
        theirs, ours = figures[(args.ref, name)], figures[("this tree", name)]
        print(
            f"{name}: {args.ref} {statistics.median(theirs):.3f} ({min(theirs):.3f}–{max(theirs):.3f}), "
            f"this tree {statistics.median(ours):.3f} ({min(ours):.3f}–{max(ours):.3f}), "
            f"this tree / {args.ref} {statistics.median(ours) / statistics.median(theirs):.3f}"
        )


if __name__ == "__main__":
    main()
