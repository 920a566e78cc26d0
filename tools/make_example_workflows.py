# SPDX-License-Identifier: GPL-3.0-or-later
"""Write the example workflows in example_workflows/ from a ComfyUI server's /object_info, and their
thumbnails from the real frontend.

    python tools/make_example_workflows.py [--server URL] [--thumbnails] [--shots DIR] [--out DIR]

Without ``--server`` a headless server with the pack and its testkit is started for the run (as the
browser tests do). ``--thumbnails`` (needs tools/setup_browser.sh) runs each example in headless chromium,
on the testkit's tiny model in place of its checkpoint, and photographs the graph with its plans drawn
and no editor chrome: ``<title>.jpg`` beside each ``<title>.json``, the picture ComfyUI's template browser
shows. ``--shots DIR`` also keeps the template browser and the sampler's budget tooltips photographed.

The workflows themselves are described in ``hierdiff_dev/examples.py``; tests/comfy/test_browser.py
regenerates them from the test server and fails if the committed files differ.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

from hierdiff_dev import REPO_ROOT
from hierdiff_dev.examples import (
    THUMBNAIL_WIDTH,
    prepare_server_dir,
    run_templates_job,
    templates_job,
    write_all,
)

THUMBNAIL_QUALITY = 88


@contextlib.contextmanager
def server_url(url: str | None) -> Iterator[str]:
    """``url``, or a headless server started for the run (the pack and the testkit), stopped after."""
    if url:
        yield url.rstrip("/")
        return
    from hierdiff_dev.server import ComfyServer

    base = Path(tempfile.mkdtemp(prefix="hierdiff-examples-"))
    prepare_server_dir(base)
    server = ComfyServer(base).start()
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def save_thumbnail(png: Path, jpg: Path) -> None:
    """The photograph as the template's JPEG, THUMBNAIL_WIDTH wide."""
    from PIL import Image

    image = Image.open(png).convert("RGB")
    height = round(image.height * THUMBNAIL_WIDTH / image.width)
    image.resize((THUMBNAIL_WIDTH, height), Image.LANCZOS).save(jpg, quality=THUMBNAIL_QUALITY, optimize=True)


def main(argv: list[str] | None = None) -> int:
    """Write every example (and with ``--thumbnails`` its thumbnail) into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", help="a ComfyUI server with the pack (and, for thumbnails, its testkit)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "example_workflows")
    parser.add_argument("--thumbnails", action="store_true", help="photograph each example in the frontend")
    parser.add_argument("--shots", type=Path, help="keep the template browser and tooltip photographs here")
    args = parser.parse_args(argv)
    with server_url(args.server) as url:
        with urlopen(url + "/object_info", timeout=60) as response:
            object_info = json.load(response)
        for path in write_all(object_info, args.out):
            print(path)
        if not args.thumbnails:
            return 0
        work = Path(tempfile.mkdtemp(prefix="hierdiff-thumbnails-"))
        report = run_templates_job(templates_job(url, object_info, args.out, work), work)
    if report.get("fatal"):
        print(report["fatal"], file=sys.stderr)
        return 1
    for entry in report["templates"]:
        if entry.get("run", {}).get("status") != "execution_success" or not entry.get("thumbnail"):
            print(f"{entry['title']}: no thumbnail: {entry.get('run')}", file=sys.stderr)
            return 1
        jpg = args.out / f"{entry['title']}.jpg"
        save_thumbnail(Path(entry["thumbnail"]), jpg)
        print(jpg)
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
        for shot in [report["browser"]["file"], *(t["file"] for t in report["tooltips"] if t.get("file"))]:
            shutil.copy(shot, args.shots / Path(shot).name)
            print(args.shots / Path(shot).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
