"""Disk space an extra of setup.py adds to an installation that has the runtime already (README figures).

Sums the files the extra's packages installed (their RECORD file lists), every package the extra pulls in
that the runtime does not, so the number is what ``pip install -e '.[EXTRA]'`` adds to ``pip install -e .``.
Needs the extra installed in the running environment.

    python benchmarks/install_size.py train sim bag
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement

PACKAGE = "dicnet_ros"


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[Requirement]) -> dict[str, md.Distribution]:
    """Installed distributions reached from ``requirements`` (markers and extras followed)."""
    found: dict[str, md.Distribution] = {}
    done: set[tuple[str, tuple[str, ...]]] = set()
    todo = list(requirements)
    while todo:
        req = todo.pop()
        if (_key(req.name), tuple(sorted(req.extras))) in done:
            continue
        done.add((_key(req.name), tuple(sorted(req.extras))))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        found[_key(req.name)] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(sub)
    return found


def installed_bytes(dist: md.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="+", help="extras of setup.py, e.g. train sim bag")
    args = parser.parse_args()
    requirements = [Requirement(r) for r in md.distribution(PACKAGE).requires or []]
    runtime = closure([r for r in requirements if r.marker is None])
    for extra in args.extras:
        wanted = [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": extra})]
        added = {k: d for k, d in closure(wanted).items() if k not in runtime}
        sizes = sorted(((installed_bytes(d), d.metadata["Name"], d.version) for d in added.values()), reverse=True)
        total = sum(s for s, _, _ in sizes)
        largest = ", ".join(f"{name} {version} {size / 1e9:.2f} GB" for size, name, version in sizes[:4])
        print(f"{extra}: {total / 1e9:.2f} GB in {len(sizes)} packages (largest: {largest})")


if __name__ == "__main__":
    main()
