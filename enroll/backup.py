"""Backup and restore of one installation: ``enroll backup`` and ``enroll restore``.

A backup is a tar file:

- ``manifest.json`` first: format, creation time, the config's name, the ledger, whether key
  files are included, and for every other member its SHA-256, size and mode;
- ``config/<path>``: the config file and every file it names (certificates, trust stores, keys,
  KEK files...) that lies under the config's directory, at its path relative to it;
- ``external/<absolute path>``: files the config names outside its directory;
- ``ledger/enroll.db``: a consistent snapshot of the SQLite ledger taken online with SQLite's
  backup API (one read transaction: writers go on, the copy is one point in time).

A PostgreSQL ledger is not in the archive (``pg_dump`` it; the manifest says so). With
``--no-keys`` private key files are left out (they are better kept by whoever keeps the keys).

Restore verifies every hash before it writes anything, refuses members it does not expect, and
writes into an empty directory; paths the config named outside its directory are rewritten to
the restored copies under ``external/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

FORMAT = "enroll-backup/1"
MANIFEST = "manifest.json"
LEDGER_MEMBER = "ledger/enroll.db"
#: Where a ledger that lived outside the config's directory is restored (and the URL rewritten).
RESTORED_LEDGER = "var/enroll.db"

Progress = Callable[[str], None]


class BackupError(Exception):
    """A backup cannot be made or an archive cannot be restored (the message says why)."""


@dataclass(frozen=True)
class Member:
    """One file of the archive."""

    name: str
    sha256: str
    size: int
    mode: int
    key: bool = False


def _quiet(_: str) -> None:
    pass


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _is_private_key(path: Path) -> bool:
    """PEM private keys (any kind, encrypted or not) and files named like keys."""
    if path.suffix.lower() in (".key", ".p8", ".pk8"):
        return True
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    return b"PRIVATE KEY-----" in head


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):].split("?", 1)[0])


def referenced_files(config_path: Path, raw: dict[str, Any], ledger: Path | None) -> dict[Path, list[str]]:
    """Every existing file the config names (relative names resolve against its directory),
    with the strings that name it; the ledger database and its WAL files excluded."""
    base = config_path.parent
    skip = {ledger, *(Path(f"{ledger}-{s}") for s in ("wal", "shm", "journal", "writer.lock"))} if ledger else set()
    out: dict[Path, list[str]] = {config_path.resolve(): []}
    for text in _strings(raw):
        if not text or "\n" in text or "://" in text or text.startswith("pkcs11:") or len(text) > 4096:
            continue
        path = (base / text).resolve() if not os.path.isabs(text) else Path(text).resolve()
        try:
            if not path.is_file() or path in skip:
                continue
        except OSError:
            continue
        out.setdefault(path, []).append(text)
    return out


def _archive_name(path: Path, base: Path) -> str:
    try:
        return "config/" + path.relative_to(base).as_posix()
    except ValueError:
        return "external/" + path.as_posix().lstrip("/")


def _snapshot_sqlite(db: Path, dest: Path) -> int:
    """A consistent copy of a live SQLite database (https://sqlite.org/backup.html): one step,
    so one read transaction; WAL writers are not blocked. Returns the page count."""
    src = sqlite3.connect(db, timeout=30)  # read/write open: a read-only one cannot join a WAL
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst, pages=-1)
        pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the archive
        check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise BackupError(f"the ledger copy fails SQLite's integrity check: {check}")
        return pages
    finally:
        dst.close()
        src.close()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(mtime)
    tar.addfile(info, io.BytesIO(data))


def backup(config_path: Path, out: Path, *, include_keys: bool = True, progress: Progress = _quiet) -> dict[str, Any]:
    """Write the backup archive of the installation ``config_path`` describes; returns its manifest."""
    config_path = config_path.resolve()
    base = config_path.parent
    raw = tomllib.loads(config_path.read_text())
    url = str(raw.get("ledger", {}).get("url", "sqlite:///var/enroll.db"))
    ledger = _sqlite_path(url)
    if ledger is not None and not ledger.is_absolute():
        ledger = (base / ledger).resolve()
    files = referenced_files(config_path, raw, ledger)
    members: list[tuple[Member, bytes]] = []
    refs: dict[str, list[str]] = {}
    skipped_keys: list[str] = []
    for i, (path, named_as) in enumerate(sorted(files.items()), 1):
        name = _archive_name(path, base)
        key = _is_private_key(path)
        if key and not include_keys:
            skipped_keys.append(name)
            continue
        data = path.read_bytes()
        members.append((Member(name, hashlib.sha256(data).hexdigest(), len(data), path.stat().st_mode & 0o777, key),
                        data))
        if name.startswith("external/"):
            refs[name] = sorted(set(named_as))
        progress(f"files {i}/{len(files)}: {name}")
    ledger_info: dict[str, Any]
    if ledger is None:
        ledger_info = {"kind": "postgresql" if url.startswith("postgres") else "other", "included": False,
                       "note": "back the database up with pg_dump (see the Deploying section of README.md)"}
    else:
        if not ledger.is_file():
            raise BackupError(f"the SQLite ledger {ledger} does not exist")
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "enroll.db"
            progress(f"ledger: snapshot of {ledger}")
            pages = _snapshot_sqlite(ledger, copy)
            data = copy.read_bytes()
        progress(f"ledger: {pages} pages, {len(data)} bytes")
        members.append((Member(LEDGER_MEMBER, hashlib.sha256(data).hexdigest(), len(data), 0o600), data))
        try:
            where = "config/" + ledger.relative_to(base).as_posix()
        except ValueError:
            where = None
        ledger_info = {"kind": "sqlite", "included": True, "url": url, "path_in_config_dir": where}
    now = time.time()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created": now,
        "config": _archive_name(config_path, base),
        "ledger": ledger_info,
        "keys_included": include_keys,
        "keys_left_out": skipped_keys,
        "external_refs": refs,
        "files": {m.name: {"sha256": m.sha256, "size": m.size, "mode": m.mode, "key": m.key} for m, _ in members},
    }
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".partial")
    fd = os.open(tmp_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold keys
    with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w") as tar:
        _add(tar, MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode(), 0o600, now)
        for m, data in members:
            _add(tar, m.name, data, m.mode, now)
    os.replace(tmp_out, out)
    progress(f"wrote {out} ({len(members)} files)")
    return manifest


def _safe_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] not in ("config", "external", "ledger"):
        raise BackupError(f"unexpected member {name!r} in the archive")
    return p


def read_verified(archive: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and every member, after checking each against the manifest's SHA-256
    (a member missing, extra, altered, or not a regular file refuses the whole archive)."""
    try:
        tar = tarfile.open(archive, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"{archive} is not a backup archive: {exc}") from None
    with tar:
        data: dict[str, bytes] = {}
        for info in tar.getmembers():
            if not info.isreg():
                raise BackupError(f"member {info.name!r} is not a regular file")
            if info.name in data:
                raise BackupError(f"member {info.name!r} appears twice")
            fh = tar.extractfile(info)
            assert fh is not None
            data[info.name] = fh.read()
    if MANIFEST not in data:
        raise BackupError("the archive has no manifest.json")
    try:
        manifest = json.loads(data.pop(MANIFEST))
    except ValueError as exc:
        raise BackupError(f"manifest.json is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"not an {FORMAT} archive")
    files = manifest.get("files", {})
    if set(files) != set(data):
        raise BackupError(f"members and manifest differ: missing {sorted(set(files) - set(data))}, "
                          f"unexpected {sorted(set(data) - set(files))}")
    for name, blob in data.items():
        _safe_name(name)
        if hashlib.sha256(blob).hexdigest() != files[name]["sha256"] or len(blob) != files[name]["size"]:
            raise BackupError(f"{name}: SHA-256 does not match the manifest (altered or damaged)")
    return manifest, data


def restore(archive: Path, directory: Path, *, progress: Progress = _quiet) -> Path:
    """Restore ``archive`` into the empty (or new) ``directory``; returns the config's path."""
    manifest, data = read_verified(archive)
    progress(f"verified {len(data)} files against the manifest")
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty")
    config_member = manifest["config"]
    if not config_member.startswith("config/"):
        raise BackupError("the manifest names no config file")
    config_rel = PurePosixPath(config_member).relative_to("config")
    text = data[config_member].decode()
    for name, named_as in manifest.get("external_refs", {}).items():
        for ref in named_as:
            text = text.replace(json.dumps(ref), json.dumps(name))  # TOML basic strings quote like JSON
    ledger = manifest.get("ledger", {})
    db_target: PurePosixPath | None = None
    if ledger.get("included"):
        inside = ledger.get("path_in_config_dir")
        if inside:
            db_target = PurePosixPath(inside).relative_to("config")
        else:
            db_target = PurePosixPath(RESTORED_LEDGER)
            text = text.replace(json.dumps(ledger["url"]), json.dumps("sqlite:///" + RESTORED_LEDGER))
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name, blob in data.items():
        if name == LEDGER_MEMBER:
            continue
        rel = PurePosixPath(name).relative_to("config") if name.startswith("config/") else PurePosixPath(name)
        _write(directory / rel, text.encode() if name == config_member else blob, manifest["files"][name]["mode"])
    if db_target is not None:
        _write(directory / db_target, data[LEDGER_MEMBER], 0o600)
        progress(f"ledger restored to {directory / db_target}")
    progress(f"restored into {directory}")
    return directory / config_rel


def _write(path: Path, blob: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o700 or 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(blob)
    os.chmod(path, mode & 0o777)
