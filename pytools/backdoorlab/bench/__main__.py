"""``python -m backdoorlab.bench NAME [args...]``: run one benchmark (same as ``backdoorlab bench``)."""

from __future__ import annotations

import sys

from backdoorlab.bench import available, dispatch


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m backdoorlab.bench NAME [args...]\n\nbenchmarks: " + ", ".join(available()))
        return 0 if argv else 2
    try:
        return dispatch(argv[0], argv[1:])
    except ValueError as exc:
        print(f"backdoorlab.bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
