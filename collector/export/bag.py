"""A minimal BagIt (RFC 8493, version 1.0) writer and a strict checker.

The central team must be able to check a bundle with nothing but this module, so
reading a bag needs no database.  We write one canonical form (sha256 only, lines
``<64 lowercase hex><2 spaces><path>`` sorted by path, LF endings) and the checker
insists on exactly that form: any single changed byte in a manifest either breaks
the form or changes a hash or a path, so it is always reported.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

BAGIT_TXT = b"BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
MANIFEST = "manifest-sha256.txt"
TAGMANIFEST = "tagmanifest-sha256.txt"
BAG_INFO = "bag-info.txt"
TAG_FILES = ("bagit.txt", BAG_INFO, MANIFEST)
# Tag files a bag may carry beyond the tag manifest: the site signature covers both manifests itself.
OPTIONAL_TAG_FILES = ("site-signature.json",)
_LINE = re.compile(r"^([0-9a-f]{64})  (\S(?:.*\S)?)$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


class BagError(ValueError):
    """The bag cannot be read at all (not a folder or zip holding one bag)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_text(files: dict[str, bytes]) -> bytes:
    return "".join(f"{sha256(files[p])}  {p}\n" for p in sorted(files)).encode("utf-8")


def info_text(info: list[tuple[str, str]]) -> bytes:
    """bag-info.txt: ``Label: value`` lines in the given order (labels may repeat)."""
    lines = []
    for label, value in info:
        if not _LABEL.match(label) or "\n" in value or "\r" in value:
            raise ValueError(f"bag-info entry {label!r}: labels are letters/digits/'-' and values one line")
        lines.append(f"{label}: {value}\n")
    return "".join(lines).encode("utf-8")


def build_bag(payload: dict[str, bytes], info: list[tuple[str, str]]) -> dict[str, bytes]:
    """All files of a bag, keyed by their path inside the bag (payload keys are relative to data/)."""
    data = {f"data/{name}": content for name, content in payload.items()}
    oxum = f"{sum(len(v) for v in data.values())}.{len(data)}"
    files: dict[str, bytes] = dict(data)
    files["bagit.txt"] = BAGIT_TXT
    files[BAG_INFO] = info_text([*info, ("Payload-Oxum", oxum)])
    files[MANIFEST] = manifest_text(data)
    files[TAGMANIFEST] = manifest_text({k: files[k] for k in TAG_FILES})
    return files


def write_folder(files: dict[str, bytes], bag_dir: Path) -> None:
    if bag_dir.exists():
        raise FileExistsError(f"{bag_dir} already exists; choose another --out folder or remove it")
    for rel, content in files.items():
        path = bag_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def write_zip(files: dict[str, bytes], zip_path: Path, bag_name: str) -> None:
    """RFC 8493 serialisation: the archive unpacks to one folder named after the bag."""
    if zip_path.exists():
        raise FileExistsError(f"{zip_path} already exists; choose another --out folder or remove it")
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in sorted(files):
            info = zipfile.ZipInfo(f"{bag_name}/{rel}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[rel])


# ----------------------------------------------------------------------------- reading


@dataclass
class Bag:
    """Every file of a bag in memory, and the problems met while reading it."""

    name: str
    files: dict[str, bytes]
    problems: list[tuple[str, str]] = field(default_factory=list)


def read_bag(source: Path) -> Bag:
    source = Path(source)
    if source.is_dir():
        files = {}
        for p in sorted(source.rglob("*")):
            if p.is_file() or p.is_symlink():
                files[p.relative_to(source).as_posix()] = p.read_bytes()
        return Bag(source.name, files)
    if source.is_file():
        return _read_zip(source)
    raise BagError(f"{source} is neither a bundle folder nor a .zip; give the path of an exported bundle")


def _read_zip(path: Path) -> Bag:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BagError(f"{path.name}: not a readable zip archive ({exc})") from None
    problems: list[tuple[str, str]] = []
    files: dict[str, bytes] = {}
    with zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
        if len(tops) != 1:
            raise BagError(f"{path.name}: a bundle zip must hold exactly one top folder, found {sorted(tops)}")
        top = tops.pop()
        for info in zf.infolist():
            if info.is_dir():
                continue
            rel = info.filename[len(top) + 1:]
            try:
                files[rel] = zf.read(info)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, Exception) as exc:  # zlib.error too
                problems.append((rel, f"cannot be read from the zip ({type(exc).__name__}: {exc})"))
                files[rel] = b""
    return Bag(top, files, problems)


def _parse_manifest(name: str, text: bytes, problems: list[tuple[str, str]]) -> dict[str, str] | None:
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        problems.append((name, "is not UTF-8"))
        return None
    if s and not s.endswith("\n"):
        problems.append((name, "does not end with a newline (not in canonical form)"))
        return None
    entries: dict[str, str] = {}
    order: list[str] = []
    for n, line in enumerate(s.split("\n")[:-1], 1):
        m = _LINE.match(line)
        if not m:
            problems.append((name, f"line {n} is not '<sha256 in lowercase hex>  <path>'"))
            return None
        if m.group(2) in entries:
            problems.append((name, f"line {n} lists {m.group(2)} twice"))
            return None
        entries[m.group(2)] = m.group(1)
        order.append(m.group(2))
    if order != sorted(order):
        problems.append((name, "lines are not sorted by path (not in canonical form)"))
        return None
    return entries


def check_bag(bag: Bag) -> list[tuple[str, str]]:
    """Structure and fixity problems as (file, what is wrong); empty when the bag is intact."""
    problems = list(bag.problems)
    files = bag.files
    if files.get("bagit.txt") != BAGIT_TXT:
        problems.append(("bagit.txt", "missing or not exactly 'BagIt-Version: 1.0' / 'Tag-File-Character-Encoding: UTF-8'"))
    for required in (BAG_INFO, MANIFEST, TAGMANIFEST):
        if required not in files:
            problems.append((required, "is missing"))
    tag = _parse_manifest(TAGMANIFEST, files[TAGMANIFEST], problems) if TAGMANIFEST in files else None
    if tag is not None:
        for rel, digest in tag.items():
            if rel not in files:
                problems.append((rel, f"is listed in {TAGMANIFEST} but missing"))
            elif sha256(files[rel]) != digest:
                problems.append((rel, f"sha256 does not match {TAGMANIFEST} (file changed)"))
        for rel in TAG_FILES:
            if rel in files and rel not in tag:
                problems.append((rel, f"is not listed in {TAGMANIFEST}"))
    man = _parse_manifest(MANIFEST, files[MANIFEST], problems) if MANIFEST in files else None
    if man is not None:
        for rel, digest in man.items():
            if not rel.startswith("data/"):
                problems.append((MANIFEST, f"lists {rel}, which is outside data/"))
            elif rel not in files:
                problems.append((rel, f"is listed in {MANIFEST} but missing (file removed)"))
            elif sha256(files[rel]) != digest:
                problems.append((rel, f"sha256 does not match {MANIFEST} (file changed)"))
        for rel in files:
            if rel.startswith("data/") and rel not in man:
                problems.append((rel, f"is not listed in {MANIFEST} (file added)"))
    known = set(TAG_FILES) | {TAGMANIFEST} | set(OPTIONAL_TAG_FILES)
    for rel in files:
        if not rel.startswith("data/") and rel not in known:
            problems.append((rel, "unexpected file outside data/ (file added)"))
    if BAG_INFO in files and man is not None:
        oxum = parse_info(files[BAG_INFO]).get("Payload-Oxum", [None])[0]
        data = [v for k, v in files.items() if k.startswith("data/")]
        if oxum != f"{sum(len(v) for v in data)}.{len(data)}":
            problems.append((BAG_INFO, f"Payload-Oxum {oxum} does not match the payload ({sum(len(v) for v in data)} bytes in {len(data)} files)"))
    return problems


def parse_info(text: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.decode("utf-8", errors="replace").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out

