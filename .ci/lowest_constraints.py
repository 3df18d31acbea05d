"""Write pip constraints that pin every dependency of pyproject.toml to its lower bound.

CI installs the project a second time with these constraints, so that every lower bound
the project declares is one a CI run actually installed and tested (developers' guide).

    python .ci/lowest_constraints.py [pyproject.toml] [--extra test] > lowest.txt
    pip install -c lowest.txt -e '.[test]'

Runtime dependencies are always included; each `--extra NAME` adds that optional group.
`>=X` and `~=X` become `==X`; an existing `==X` stays. Environment markers are kept on the
pin, so a Windows-only dependency stays Windows-only. Extras are dropped from the pin
(pip refuses constraints with extras); the extra is still requested by the install itself.
A dependency with no usable lower bound (none, or only `>X`) is an error: CI cannot claim
to have run a bound that is not there. Needs Python 3.11+ and `packaging`.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOWER = (">=", "~=", "==")


def lower_pin(text: str) -> str:
    """One constraint line `name==lower[; marker]` for one requirement string."""
    req = Requirement(text)
    if req.url:
        raise ValueError(f"{text!r}: a direct URL has no version bound to pin")
    bounds = {spec.version for spec in req.specifier if spec.operator in LOWER}
    if not bounds:
        raise ValueError(f"{text!r}: no lower bound (>=, ~= or ==) to pin; add one")
    if len(bounds) > 1:
        raise ValueError(f"{text!r}: more than one lower bound ({', '.join(sorted(bounds))})")
    (version,) = bounds
    if not req.specifier.contains(version, prereleases=True):
        raise ValueError(f"{text!r}: its own lower bound {version} is excluded by the specifier")
    line = f"{canonicalize_name(req.name)}=={version}"
    if req.marker is not None:
        line += f"; {req.marker}"
    return line


def constraints(pyproject: Path, extras: list[str]) -> list[str]:
    """The constraint lines for the runtime dependencies plus the named extras, in file order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    texts = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise ValueError(f"no optional dependency group [{extra}] in {pyproject}")
        texts.extend(optional[extra])
    lines: list[str] = []
    seen: dict[str, str] = {}
    for text in texts:
        line = lower_pin(text)
        name = line.split("==", 1)[0]
        if name in seen and seen[name] != line:
            raise ValueError(f"{name} is listed twice with different lower bounds")
        if name not in seen:
            seen[name] = line
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", nargs="?", default="pyproject.toml", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional group to include")
    args = parser.parse_args(argv)
    try:
        lines = constraints(args.pyproject, args.extra)
    except (OSError, KeyError, ValueError) as exc:
        print(f"lowest_constraints: {exc}", file=sys.stderr)
        return 2
    print(f"# lower bounds of {args.pyproject.name}, written by .ci/lowest_constraints.py")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
