# SPDX-License-Identifier: GPL-3.0-or-later
"""The run folder alone (no models): one process at a time, whole manifest records, one record per
image, verified images on resume, and folders whose settings are missing or damaged refused by name."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from hierdiff_core.run_folder import (
    LOCK_FILE,
    MANIFEST,
    RUN_FILE,
    STATE_FILE,
    RunFolder,
    RunFolderError,
    image_name,
)

PROMPTS = ("a cat", "a dog", "the sea")
SIZE = (24, 16)  # width, height
SETTINGS = {"prompts": list(PROMPTS), "seed": 7, "steps": 4}
RECORD = {"seed": 7, "steps": 4}


def open_folder(path, settings=SETTINGS):
    return RunFolder.open(path, settings, PROMPTS, SIZE)


def picture(index: int, size=SIZE) -> Image.Image:
    """A noisy image (so its PNG is long enough to cut in the middle of its pixel data)."""
    generator = torch.Generator().manual_seed(index)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def fill(path, indices) -> None:
    with open_folder(path) as folder:
        for i in indices:
            folder.add_image(i, picture(i), RECORD)


def manifest_lines(path) -> list[str]:
    return (path / MANIFEST).read_text(encoding="utf-8").splitlines()


def expected_record(index: int) -> dict:
    return {"index": index, "file": image_name(index), "prompt": PROMPTS[index], **RECORD}


def test_records_are_whole_lines_in_writing_order_and_a_reopened_folder_knows_them(tmp_path):
    fill(tmp_path, [2, 0])
    assert [json.loads(line) for line in manifest_lines(tmp_path)] == [expected_record(2), expected_record(0)]
    assert (tmp_path / MANIFEST).read_bytes().endswith(b"\n")
    assert json.loads((tmp_path / RUN_FILE).read_text(encoding="utf-8")) == SETTINGS
    with open_folder(tmp_path) as folder:
        assert folder.finished() == {2: expected_record(2), 0: expected_record(0)}
        assert folder.pending() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        LOCK_FILE,
        RUN_FILE,
        "00000.png",
        "00002.png",
        MANIFEST,
    ]


def test_an_image_is_recorded_once_and_only_at_the_runs_size(tmp_path):
    with open_folder(tmp_path) as folder:
        folder.add_image(0, picture(0), RECORD)
        with pytest.raises(ValueError, match="image 0 is already recorded"):
            folder.add_image(0, picture(0), RECORD)
        with pytest.raises(ValueError, match="image 1 is 16 x 16, the run's size is 24 x 16"):
            folder.add_image(1, picture(1, (16, 16)), RECORD)
        with pytest.raises(ValueError, match="image index must be in 0..2, got 3"):
            folder.add_image(3, picture(3), RECORD)
        with pytest.raises(ValueError, match="must not set prompt"):
            folder.add_image(1, picture(1), {"prompt": "a dig"})
    assert manifest_lines(tmp_path) == [json.dumps(expected_record(0))]
    assert not (tmp_path / "00001.png").exists()


def test_a_record_that_cannot_be_written_writes_neither_image_nor_line(tmp_path):
    with open_folder(tmp_path) as folder, pytest.raises(TypeError):
        folder.add_image(0, picture(0), {"seed": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, RUN_FILE]


def test_an_image_that_fails_while_saving_leaves_no_file_behind(tmp_path):
    class FailsHalfway:
        size = SIZE

        def save(self, f, format):
            f.write(b"\x89PNG\r\n")
            raise OSError("disk full")

    with open_folder(tmp_path) as folder, pytest.raises(OSError, match="disk full"):
        folder.add_image(0, FailsHalfway(), RECORD)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE, RUN_FILE]


HOLD = """
import sys
from hierdiff_core.run_folder import RunFolder
folder = RunFolder.open(sys.argv[1], {settings!r}, {prompts!r}, {size!r})
print("held", flush=True)
sys.stdin.readline()
folder.close()
"""


def hold_in_another_process(path) -> subprocess.Popen:
    script = HOLD.format(settings=SETTINGS, prompts=PROMPTS, size=SIZE)
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_process_is_refused_at_once_naming_the_holder_then_admitted_after_it(tmp_path):
    holder = hold_in_another_process(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(RunFolderError) as refused:
            open_folder(tmp_path)
        assert time.monotonic() - started < 1.0
        message = str(refused.value)
        assert (
            f"is in use by another hierdiff run (pid {holder.pid} on {socket.gethostname()}, started "
            in message
        )
        assert message.endswith("wait for it to finish or choose another output folder")
        assert "\n" not in message
    finally:
        holder.communicate("done\n", timeout=30)
    assert holder.returncode == 0
    with open_folder(tmp_path) as folder:
        assert folder.pending() == [0, 1, 2]


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    holder = hold_in_another_process(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert str(holder.pid) in (tmp_path / LOCK_FILE).read_text()  # its name is still there, its lock is not
    with open_folder(tmp_path) as folder:
        folder.add_image(0, picture(0), RECORD)
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_FILE).read_text()


def test_the_same_process_cannot_open_a_folder_twice_and_a_closed_folder_writes_nothing(tmp_path):
    folder = open_folder(tmp_path)
    with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"):
        open_folder(tmp_path)
    folder.close()
    with pytest.raises(ValueError, match="is closed"):
        folder.add_image(0, picture(0), RECORD)
    open_folder(tmp_path).close()


def test_a_cut_last_line_is_dropped_and_the_next_record_starts_on_a_line_of_its_own(tmp_path):
    fill(tmp_path, [0, 1])
    whole = (tmp_path / MANIFEST).read_bytes()
    (tmp_path / MANIFEST).write_bytes(whole[: len(whole) - 9])  # the second record loses its end
    with open_folder(tmp_path) as folder:
        assert list(folder.finished()) == [0]
        assert folder.pending() == [1, 2]
        assert manifest_lines(tmp_path) == [json.dumps(expected_record(0))]
        folder.add_image(1, picture(1), RECORD)
    assert [json.loads(line) for line in manifest_lines(tmp_path)] == [expected_record(0), expected_record(1)]


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"\xff\xfe not utf-8",
        b"",
        b"[1, 2]",
        b'{"file": "00001.png", "prompt": "a dog", "seed": 7, "steps": 4}',  # no index
        b'{"index": "1", "file": "00001.png", "prompt": "a dog"}',
        b'{"index": 1.0, "file": "00001.png", "prompt": "a dog"}',
        b'{"index": true, "file": "00001.png", "prompt": "a dog"}',
        b'{"index": 3, "file": "00003.png", "prompt": "a dog"}',  # out of range
        b'{"index": -2, "file": "00001.png", "prompt": "a dog"}',
        b'{"index": 1, "file": "00001.png"}',  # no prompt
        b'{"index": 1, "file": "00001.png", "prompt": "a dig"}',  # not the run's prompt 1
        b'{"index": 1, "file": "00002.png", "prompt": "a dog"}',  # another image's file
        b'{"index": 1, "file": "../00001.png", "prompt": "a dog"}',
        b'{"index": 1, "file": "00001.png", "prompt": "a dog", "seed": 8}',  # not the run's seed
    ],
)
def test_a_line_that_is_not_a_record_of_this_run_is_dropped_and_its_image_redone(tmp_path, line):
    fill(tmp_path, [0, 1])
    lines = manifest_lines(tmp_path)
    (tmp_path / MANIFEST).write_bytes(lines[0].encode() + b"\n" + line + b"\n")
    with open_folder(tmp_path) as folder:
        assert list(folder.finished()) == [0]
        assert folder.pending() == [1, 2]
        assert manifest_lines(tmp_path) == [lines[0]]  # rewritten with the valid record alone
        folder.add_image(1, picture(1), RECORD)
    assert manifest_lines(tmp_path) == lines


def test_a_second_record_of_an_image_is_dropped(tmp_path):
    fill(tmp_path, [0, 1])
    lines = manifest_lines(tmp_path)
    (tmp_path / MANIFEST).write_text("\n".join([lines[0], lines[1], lines[0]]) + "\n", encoding="utf-8")
    with open_folder(tmp_path) as folder:
        assert list(folder.finished()) == [0, 1]
    assert manifest_lines(tmp_path) == lines


def test_a_manifest_needing_no_repair_is_left_untouched(tmp_path):
    fill(tmp_path, [0])
    before = (tmp_path / MANIFEST).stat()
    open_folder(tmp_path).close()
    after = (tmp_path / MANIFEST).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_recorded_images_that_are_cut_damaged_resized_or_gone_are_redone_and_recorded_once(tmp_path):
    fill(tmp_path, [0, 1, 2])
    cut = (tmp_path / "00000.png").read_bytes()
    (tmp_path / "00000.png").write_bytes(cut[: len(cut) // 2])
    damaged = bytearray((tmp_path / "00001.png").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte inside the pixel data
    (tmp_path / "00001.png").write_bytes(bytes(damaged))
    picture(2, (16, 16)).save(tmp_path / "00002.png")
    with open_folder(tmp_path) as folder:
        assert folder.finished() == {}
        assert folder.pending() == [0, 1, 2]
        assert (tmp_path / MANIFEST).read_bytes() == b""
        (tmp_path / "00001.png").unlink()  # a deleted image is redone the same way
        for i in (0, 1, 2):
            folder.add_image(i, picture(i), RECORD)
    assert [json.loads(line)["index"] for line in manifest_lines(tmp_path)] == [0, 1, 2]
    with open_folder(tmp_path) as folder:
        assert list(folder.finished()) == [0, 1, 2]


@pytest.mark.parametrize(
    "leave, named",
    [
        ({MANIFEST, "00000.png"}, "(manifest.jsonl, 1 image named like 00000.png)"),
        ({"00000.png", "00001.png"}, "(2 images named like 00000.png)"),
        ({STATE_FILE}, f"({STATE_FILE})"),
    ],
)
def test_run_files_without_a_settings_file_are_refused_naming_it(tmp_path, leave, named):
    fill(tmp_path, [0, 1])
    with open_folder(tmp_path) as folder:
        folder.save_state({"step": 1})
    for p in tmp_path.iterdir():
        if p.name not in leave | {LOCK_FILE}:
            p.unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(RunFolderError) as refused:
        open_folder(tmp_path, {**SETTINGS, "seed": 8})
    assert str(refused.value) == (
        f"output folder {str(tmp_path)!r} holds a run's files {named} but no settings file {RUN_FILE}, "
        "so its images cannot be paired with their settings; choose another output folder, or delete "
        "those files to start over"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_folder_holding_only_other_files_is_used(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    (tmp_path / "0001.png").write_bytes(b"not ours: four digits")
    fill(tmp_path, [0])
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize(
    "text, reason",
    [("", "cannot be read (not valid JSON)"), ('{"seed": 7', "cannot be read (not valid JSON)"),
     ("[7]", "is not a JSON object")],
)  # fmt: skip
def test_a_damaged_settings_file_is_named(tmp_path, text, reason):
    fill(tmp_path, [0])
    (tmp_path / RUN_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(RunFolderError) as refused:
        open_folder(tmp_path)
    message = str(refused.value)
    assert message.startswith(f"run settings file {str(tmp_path / RUN_FILE)!r} {reason}")
    assert "choose another output folder, or empty this one to start over" in message
    assert (tmp_path / RUN_FILE).read_text(encoding="utf-8") == text


def test_other_settings_are_refused_naming_them(tmp_path):
    fill(tmp_path, [0])
    with pytest.raises(RunFolderError, match=r"holds a run with other settings \(seed, steps differ\)"):
        open_folder(tmp_path, {**SETTINGS, "seed": 8, "steps": 5})
    with pytest.raises(RunFolderError, match=r"\(extra differ\)"):
        open_folder(tmp_path, {**SETTINGS, "extra": 1})


def test_an_output_path_that_is_a_file_or_lies_under_one_is_refused(tmp_path):
    path = tmp_path / "out"
    path.write_text("x", encoding="utf-8")
    with pytest.raises(
        RunFolderError, match="output folder '.*/out' is a file, not a folder; choose another one"
    ):
        open_folder(path)
    with pytest.raises(
        RunFolderError, match=r"output folder '.*/out/sub' cannot be written \(Not a directory\)"
    ):
        open_folder(path / "sub")
    assert path.read_text(encoding="utf-8") == "x"


def make_read_only(path):
    """Make ``path`` read-only even for root (immutable attribute); returns the undo."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return lambda: path.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without chattr +i: a folder cannot be made read-only for root")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_read_only_folder_is_refused_before_anything_is_written(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    undo = make_read_only(folder)
    try:
        with pytest.raises(RunFolderError) as refused:
            open_folder(folder)
    finally:
        undo()
    assert re.fullmatch(
        f"output folder {re.escape(repr(str(folder)))} cannot be written "
        r"\((Permission denied|Operation not permitted)\); choose another one",
        str(refused.value),
    )
    assert list(folder.iterdir()) == []


def test_temporary_files_of_a_killed_run_are_removed_and_writes_leave_none(tmp_path):
    fill(tmp_path, [0])
    (tmp_path / ".tmp-99999-0a1b2c3d-00001.png").write_bytes(b"half")
    (tmp_path / ".tmp-99999-0a1b2c3d-.hierdiff-state.pt").write_bytes(b"half")
    with open_folder(tmp_path) as folder:
        folder.add_image(1, picture(1), RECORD)
        folder.save_state({"step": 3})
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_checkpoint_round_trips_and_a_damaged_one_is_discarded(tmp_path):
    state = {
        "step": 2,
        "latents": torch.arange(6.0).reshape(2, 3),
        "generators": {4: torch.Generator().get_state()},
    }
    with open_folder(tmp_path) as folder:
        assert folder.load_state() is None
        folder.save_state(state)
        loaded = folder.load_state()
        assert loaded["step"] == 2 and torch.equal(loaded["latents"], state["latents"])
        assert torch.equal(loaded["generators"][4], state["generators"][4])
        whole = (tmp_path / STATE_FILE).read_bytes()
        (tmp_path / STATE_FILE).write_bytes(whole[: len(whole) // 2])
        assert folder.load_state() is None
        assert not (tmp_path / STATE_FILE).exists()
        # Arbitrary pickled objects are not loaded (a planted file cannot run code).
        torch.save({"step": 2, "thing": Image.new("RGB", (1, 1))}, tmp_path / STATE_FILE)
        assert folder.load_state() is None
