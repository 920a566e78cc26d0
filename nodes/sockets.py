# SPDX-License-Identifier: GPL-3.0-or-later
"""The pack's socket types and the UI output keys the web extension (``web/``) reads: defined once here.

Socket values: PROMPT_TREE carries a :class:`.conditioning.PromptTreeSet`, HIER_LATENT a
:class:`.samplers.HierLatent`, HIER_PRIOR a loaded ``hierdiff_diffusers.prior.TextToImagePrior``.
"""

from __future__ import annotations

from comfy_api.latest import io

PROMPT_TREE = io.Custom("PROMPT_TREE")
HIER_LATENT = io.Custom("HIER_LATENT")
HIER_PRIOR = io.Custom("HIER_PRIOR")

PLAN_KEY = "hierdiff_plan"
"""The plan JSON (``Plan.to_json``) of a node's run: the widget draws it."""
SUMMARY_KEY = "hierdiff_summary"
"""'N images, E model evaluations instead of K x N, X % saved'."""
TREE_KEY = "hierdiff_tree"
"""The prompt tree JSON (``PromptTree.to_dict``) of a clustering node, drawn before any plan exists."""
MEASURED_KEY = "hierdiff_measured"
"""What the model really evaluated in a sampler node's run."""
