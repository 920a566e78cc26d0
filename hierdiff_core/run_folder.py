# SPDX-License-Identifier: GPL-3.0-or-later
"""A generation run's output folder: its lock, its settings, its manifest, atomic writes and resume.

Layout::

    OUT/00000.png ...            one image per prompt, in prompt order
    OUT/manifest.jsonl           one JSON line per COMPLETED image: index, file, prompt, and whatever
                                 else the run records (seed, ...)
    OUT/.hierdiff-run.json       the run's settings; a restart with other settings is refused
    OUT/.hierdiff-state.pt       the model run's checkpoint (whatever it saves), replaced atomically
    OUT/.hierdiff-lock           held (flock) by the one process running in the folder; names it

Guarantees, whatever is interrupted or tampered with:

* One process at a time: :meth:`RunFolder.open` takes the lock before it reads or writes anything
  else and holds it until :meth:`RunFolder.close`; a second process is refused at once with the
  holder's pid, host and start time. The kernel drops the lock when its holder dies, so a killed run
  never leaves a stale lock behind.
* Every file is written under a per-process temporary name, flushed, synced and renamed, so no
  file is ever seen half-written (temporary files a killed run left behind are removed on open).
* An image is recorded only after it is completely written, and every record is one whole line
  (write, flush, fsync; a failed append is cut back). On open the manifest is checked: a partial
  last line, a line that is not a record of this run (missing keys, wrong types, index out of
  range, another prompt or file name, a field that disagrees with the settings), a second record
  of an image, or a record whose image does not fully decode at the run's size is dropped, and
  the manifest is rewritten atomically with the valid records alone. Those images are redone,
  so each image has exactly one record.
* A folder whose settings file is missing but which holds run files, or whose settings file is not
  valid JSON, is refused (its images could not be paired with their settings).

Any model run (Kandinsky today, other pipelines later) keeps its folder through this one class.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

if sys.platform == "win32":  # pragma: no cover - exercised only on Windows
    import msvcrt

    fcntl = None
else:
    import fcntl

MANIFEST = "manifest.jsonl"
RUN_FILE = ".hierdiff-run.json"
STATE_FILE = ".hierdiff-state.pt"
LOCK_FILE = ".hierdiff-lock"
RECORD_KEYS = ("index", "file", "prompt")
"""The fields every manifest record has; the folder writes them itself."""

_IMAGE_NAME = re.compile(r"^\d{5,}\.png$")
_TMP_PREFIX = ".tmp-"
# Windows locks byte ranges and forbids reading a locked range, so the lock byte lies past the
# holder's description.
_WINDOWS_LOCK_OFFSET = 1 << 20


class RunFolderError(ValueError):
    """A one-line, user-facing reason why a folder cannot be used for this run."""


def image_name(index: int) -> str:
    """File name of prompt ``index``'s image."""
    return f"{index:05d}.png"


class RunFolder:
    """The output folder of one run, opened (created, locked, checked) by :meth:`open`.

    Use it as a context manager, or call :meth:`close`, to release the lock.
    """

    def __init__(
        self,
        path: Path,
        settings: dict[str, Any],
        prompts: tuple[str, ...],
        image_size: tuple[int, int],
        lock_fd: int,
    ):
        self.path = path
        self.settings = settings
        self.prompts = prompts
        self.image_size = image_size
        self._lock_fd: int | None = lock_fd
        self._done: dict[int, dict] = {}

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        settings: dict[str, Any],
        prompts: Sequence[str],
        image_size: tuple[int, int],
    ) -> RunFolder:
        """Create or reopen the folder for a run of ``prompts`` at ``image_size`` (width, height).

        Takes the folder's lock, checks (or writes) the settings, removes stale temporary files and
        checks the manifest and every recorded image (see the module docstring). Raises
        :class:`RunFolderError` (one line) when the folder cannot be used: a file, not writable,
        in use by another process, holding another run, or holding run files without settings.
        """
        root = Path(path)
        settings = _json_round_trip(settings)  # before the lock: a TypeError here must not leave it held
        if root.exists() and not root.is_dir():
            raise RunFolderError(f"output folder {str(root)!r} is a file, not a folder; choose another one")
        try:
            root.mkdir(parents=True, exist_ok=True)
            # A folder may be listed but not writable (read-only mount, permissions): find out now,
            # before anything is written, rather than at the first image.
            probe = root / f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-probe"
            probe.open("xb").close()
            probe.unlink(missing_ok=True)
            lock_fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunFolderError(
                f"output folder {str(root)!r} cannot be written ({exc.strerror or exc}); choose another one"
            ) from None
        try:
            locked = _try_lock(lock_fd)
        except OSError as exc:  # a file system without locks (some network mounts)
            os.close(lock_fd)
            raise RunFolderError(
                f"output folder {str(root)!r} cannot be locked ({exc.strerror or exc}); "
                "choose a folder on a local disk"
            ) from None
        if not locked:
            holder = _read_holder(lock_fd)
            os.close(lock_fd)
            raise RunFolderError(
                f"output folder {str(root)!r} is in use by another hierdiff run ({holder}); "
                "wait for it to finish or choose another output folder"
            )
        folder = cls(root, settings, tuple(prompts), tuple(image_size), lock_fd)
        try:
            _write_holder(lock_fd)
            folder._check_settings()
            folder._remove_stale_temporaries()
            folder._done = folder._load_manifest()
        except BaseException:
            folder.close()
            raise
        return folder

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock_fd is None:
            return
        try:
            os.ftruncate(self._lock_fd, 0)  # nobody holds it now: do not name a past holder
        except OSError:
            pass
        os.close(self._lock_fd)  # closing releases the flock
        self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finished(self) -> dict[int, dict]:
        """Completed, verified images: {prompt index: manifest record}."""
        return dict(self._done)

    def pending(self) -> list[int]:
        """Prompt indices whose image is still to be made, in order."""
        return [i for i in range(len(self.prompts)) if i not in self._done]

    def load_state(self) -> Any | None:
        """The model run's last checkpoint, or None when there is none or it cannot be read.

        A checkpoint that cannot be read (cut short, corrupt, not written by torch) is discarded:
        the run starts again from its beginning, which gives the same images. Only tensors and
        plain containers are loaded (``weights_only``), so a planted file cannot run code.
        """
        import torch

        path = self.path / STATE_FILE
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # any damage: the checkpoint is only a shortcut, the run can redo it
            path.unlink(missing_ok=True)
            return None

    def save_state(self, state: Any) -> None:
        """Replace the checkpoint atomically."""
        import torch

        self._require_lock()
        write_atomically(self.path / STATE_FILE, lambda f: torch.save(state, f))

    def add_image(
        self, index: int, image: Any, record: dict[str, Any], text: Mapping[str, str] | None = None
    ) -> None:
        """Write prompt ``index``'s PIL image (with ``text`` as PNG text chunks), then append its
        manifest record.

        The record gets ``index``, ``file`` and ``prompt`` from the folder (``record`` must not
        hold them). ValueError when the image is already recorded or has another size than the run's.
        """
        self._require_lock()
        if not (isinstance(index, int) and 0 <= index < len(self.prompts)):
            raise ValueError(f"image index must be in 0..{len(self.prompts) - 1}, got {index!r}")
        if index in self._done:
            raise ValueError(f"image {index} is already recorded in {str(self.path / MANIFEST)!r}")
        if tuple(image.size) != self.image_size:
            raise ValueError(f"image {index} is {image.size[0]} x {image.size[1]}, the run's size is "
                             f"{self.image_size[0]} x {self.image_size[1]}")  # fmt: skip
        reserved = sorted(set(record) & set(RECORD_KEYS))
        if reserved:
            raise ValueError(f"a record must not set {', '.join(reserved)}: the run folder writes them")
        name = image_name(index)
        entry = {"index": index, "file": name, "prompt": self.prompts[index], **record}
        line = (json.dumps(entry) + "\n").encode("utf-8")
        options = {"pnginfo": _png_text(text)} if text else {}
        write_atomically(self.path / name, lambda f: image.save(f, format="PNG", **options))
        with (self.path / MANIFEST).open("ab") as manifest:
            end = manifest.seek(0, os.SEEK_END)
            try:
                manifest.write(line)
                manifest.flush()
                os.fsync(manifest.fileno())
            except BaseException:
                # Never leave a partial line for the next record to be glued onto.
                manifest.truncate(end)
                raise
        self._done[index] = _json_round_trip(entry)

    # -- opening ---------------------------------------------------------------------------------

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise ValueError(f"run folder {str(self.path)!r} is closed")

    def _check_settings(self) -> None:
        stored_path = self.path / RUN_FILE
        if not stored_path.exists():
            found = self._run_files()
            if found:
                raise RunFolderError(
                    f"output folder {str(self.path)!r} holds a run's files ({', '.join(found)}) but no "
                    f"settings file {RUN_FILE}, so its images cannot be paired with their settings; "
                    "choose another output folder, or delete those files to start over"
                )
            text = json.dumps(self.settings, indent=1)
            write_atomically(stored_path, lambda f: f.write(text.encode("utf-8")))
            return
        try:
            stored = json.loads(stored_path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
            raise RunFolderError(
                f"run settings file {str(stored_path)!r} cannot be read ({reason}), so the folder's images "
                "cannot be paired with their settings; choose another output folder, or empty this one "
                "to start over"
            ) from None
        if not isinstance(stored, dict):
            raise RunFolderError(
                f"run settings file {str(stored_path)!r} is not a JSON object; choose another output "
                "folder, or empty this one to start over"
            )
        differing = sorted(
            k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k)
        )
        if differing:
            raise RunFolderError(
                f"output folder {str(self.path)!r} holds a run with other settings "
                f"({', '.join(differing)} differ); use another --out or the same settings to resume"
            )

    def _run_files(self) -> list[str]:
        """What in the folder belongs to a run: the manifest, the checkpoint, a count of images."""
        found = [name for name in (MANIFEST, STATE_FILE) if (self.path / name).exists()]
        images = sum(1 for p in self.path.iterdir() if _IMAGE_NAME.match(p.name))
        if images:
            found.append(f"{images} image{'s' if images > 1 else ''} named like 00000.png")
        return found

    def _remove_stale_temporaries(self) -> None:
        # Only a killed run leaves these (the lock says no one else is writing now).
        for p in self.path.iterdir():
            if p.name.startswith(_TMP_PREFIX) and p.is_file():
                p.unlink(missing_ok=True)

    def _load_manifest(self) -> dict[int, dict]:
        """The valid records {index: record}; rewrites the manifest when anything had to be dropped."""
        path = self.path / MANIFEST
        if not path.is_file():
            return {}
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        clean = raw.endswith(b"\n") or not raw  # otherwise the last line was cut short: drop it
        lines = lines[:-1]
        done: dict[int, dict] = {}
        for line in lines:
            record = self._valid_record(line)
            if record is None or record["index"] in done or not self._image_ok(record["file"]):
                clean = False
                continue
            done[record["index"]] = record
        if not clean:
            text = "".join(json.dumps(r) + "\n" for r in done.values())
            write_atomically(path, lambda f: f.write(text.encode("utf-8")))
        return done

    def _valid_record(self, line: bytes) -> dict | None:
        """The record a manifest line holds, or None when it is not a record of this run."""
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict):
            return None
        index = record.get("index")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.prompts):
            return None
        if record.get("file") != image_name(index) or record.get("prompt") != self.prompts[index]:
            return None
        # A field named like a setting (seed, steps, ...) must say what the settings say.
        if any(key in self.settings and value != self.settings[key] for key, value in record.items()):
            return None
        return record

    def _image_ok(self, name: str) -> bool:
        """Whether the image fully decodes at the run's size (a cut or damaged file does not)."""
        from PIL import Image

        path = self.path / name
        try:
            with Image.open(path) as image:
                image.verify()  # chunk structure and checksums
            with Image.open(path) as image:
                image.load()  # every pixel decodes
                return tuple(image.size) == self.image_size
        except Exception:  # PIL raises many types for damaged files; any of them means "redo it"
            return False


def _json_round_trip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so comparisons are like for like."""
    return json.loads(json.dumps(value))


def _png_text(text: Mapping[str, str]) -> Any:
    """PIL's PNG text chunks for ``text`` (iTXt where a value is not Latin-1)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    return info


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` whole or not at all: ``write(file)`` fills a temporary name unique to this process,
    which is synced and renamed into place."""
    tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    try:
        with tmp.open("xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename durable before anything that relies on it (a manifest record) is written."""
    if sys.platform == "win32":  # pragma: no cover - no directory handles to sync there
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        raise
    return True


def _write_holder(fd: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))


def _read_holder(fd: int) -> str:
    """'pid 123 on host, started ...' from the lock file, waiting briefly for a holder that has the
    lock but has not written its name yet."""
    for _ in range(20):
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            holder = json.loads(os.read(fd, 4096).decode("utf-8"))
            return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
        except (ValueError, KeyError, TypeError, OSError):
            time.sleep(0.05)
    return "holder unknown"
