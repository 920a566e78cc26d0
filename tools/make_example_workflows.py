# SPDX-License-Identifier: GPL-3.0-or-later
"""Write the UI-format example workflows in example_workflows/ from a ComfyUI server's /object_info.

    python tools/make_example_workflows.py --server http://127.0.0.1:8188 [--out example_workflows]

The workflows themselves are described in ``hierdiff_dev/examples.py``; tests/comfy/test_browser.py
regenerates them from the test server and fails if the committed files differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.request import urlopen

from hierdiff_dev import REPO_ROOT
from hierdiff_dev.examples import write_all


def main(argv: list[str] | None = None) -> int:
    """Fetch /object_info from ``--server`` and write every example into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="URL of a ComfyUI server with the hierdiff pack")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "example_workflows")
    args = parser.parse_args(argv)
    with urlopen(args.server.rstrip("/") + "/object_info", timeout=60) as response:
        object_info = json.load(response)
    for path in write_all(object_info, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
