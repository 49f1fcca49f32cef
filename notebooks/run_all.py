#!/usr/bin/env python3
"""Executes every notebook in this folder headless (nbclient) and fails if any cell fails.

The notebooks are run from this folder, their figures go to `notebooks/figures/`, and the
executed copies (with outputs) to `notebooks/executed/`; the committed notebooks stay clean.
Usage: python notebooks/run_all.py [NOTEBOOK ...]
"""
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def main(argv):
    books = [Path(a).resolve() for a in argv] or sorted(HERE.glob("*.ipynb"))
    if not books:
        print("no notebooks found", file=sys.stderr)
        return 1
    executed = HERE / "executed"
    executed.mkdir(exist_ok=True)
    failed = []
    for path in books:
        nb = nbformat.read(path, as_version=4)
        start = time.monotonic()
        client = NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
        )
        try:
            client.execute()
            status = "ok"
        except CellExecutionError as e:
            status = "FAILED"
            failed.append(path.name)
            print(str(e), file=sys.stderr)
        nbformat.write(nb, executed / path.name)
        print(f"{path.name}: {status} ({time.monotonic() - start:.1f} s)")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"{len(books)} notebooks executed; figures in {HERE / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
