# SPDX-License-Identifier: GPL-3.0-or-later
"""The pack in a ComfyUI whose diffusers is missing or broken: it loads, every node but the prior nodes
runs whole workflows, and a prior node says what to install. Each case runs in a fresh interpreter whose
``import diffusers`` fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys, tempfile
    from pathlib import Path

    class FailingDiffusers(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] != "diffusers":
                return None
            if sys.argv[1] == "missing":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            raise RuntimeError("diffusers is broken in this environment")

    sys.meta_path.insert(0, FailingDiffusers())

    from hierdiff_dev import PACK_LINK_NAME
    from hierdiff_dev.host import InProcessHost, prepare_comfy_imports
    from hierdiff_dev.workflows import (
        decoded_and_saved, guider_workflow, hier_sampling_inputs, prompt_tree_workflow,
        trunk_and_branch_workflow,
    )

    prompts = ["a red cat", "a red cat on a chair", "a blue dog", "an old castle"]
    base = Path(tempfile.mkdtemp())
    prepare_comfy_imports(base)
    host = InProcessHost.start(base)  # raises, with the import error, when the pack does not load

    ksampler = prompt_tree_workflow(prompts)
    ksampler["sampler"] = {
        "class_type": "HierKSampler",
        "inputs": {"model": ["loader", 0], "prompt_tree": ["cluster", 0], "negative": ["negative", 0],
                   "latent_image": ["latent", 0], **hier_sampling_inputs(4)},
    }
    ksampler["preview"] = {"class_type": "HierPlanPreview",
                           "inputs": {"plan_json": ["sampler", 1], "filename_prefix": "plan"}}
    images = {}
    for name, graph in (("ksampler", decoded_and_saved(ksampler, ["sampler", 0])),
                        ("trunk_and_branch", trunk_and_branch_workflow(prompts)),
                        ("guider", guider_workflow(prompts))):
        images[name] = len(host.run(graph).outputs["save"]["images"])

    prior_nodes = sys.modules[host.loaded_modules[PACK_LINK_NAME] + ".nodes.prior"]
    try:
        prior_nodes.diffusers_priors()
        prior_error = None
    except RuntimeError as exc:
        prior_error = str(exc)
    print(json.dumps({
        "pack_nodes": sorted(host.node_ids_of(PACK_LINK_NAME)),
        "images": images,
        "prior_error": prior_error,
        "diffusers_loaded": any(m.split(".")[0] == "diffusers" for m in sys.modules),
    }))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["missing", "broken"])
def test_the_pack_works_without_diffusers_except_the_prior_nodes(failure, tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, failure], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"HierPromptSetCluster", "HierKSampler", "HierGuider", "HierPriorLoader", "HierPriorEmbed"} <= set(
        result["pack_nodes"]
    )
    assert result["images"] == {"ksampler": 4, "trunk_and_branch": 4, "guider": 4}
    assert not result["diffusers_loaded"]
    cause = "ModuleNotFoundError" if failure == "missing" else "RuntimeError: diffusers is broken"
    expected = f"the unCLIP prior nodes need diffusers, which cannot be imported here ({cause}"
    assert result["prior_error"].startswith(expected)
    assert "pip install 'diffusers>=0.30'" in result["prior_error"]
