# SPDX-License-Identifier: GPL-3.0-or-later
"""Every node of the pack has a help page the frontend shows (``web/docs/<node id>.md``), served by the
real server under the pack's web directory."""

from __future__ import annotations

import requests

from hierdiff_dev import PACK_LINK_NAME, REPO_ROOT


def test_every_node_has_a_help_page_that_the_server_serves(comfy_host, comfy_server):
    node_ids = comfy_host.node_ids_of(PACK_LINK_NAME)
    pages = {path.stem for path in (REPO_ROOT / "web" / "docs").glob("*.md")}
    assert pages == node_ids
    for node_id in sorted(node_ids):
        url = f"{comfy_server.url}/extensions/{PACK_LINK_NAME}/docs/{node_id}.md"
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, node_id
        display_name = comfy_host.node_classes[node_id].GET_SCHEMA().display_name
        assert response.text.startswith(f"# {display_name}\n"), node_id
