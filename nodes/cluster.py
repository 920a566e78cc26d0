# SPDX-License-Identifier: GPL-3.0-or-later
"""Prompt Set Cluster: prompts + CLIP -> PROMPT_TREE (tree, per-prompt conditioning, texts)."""

from __future__ import annotations

import json

from comfy_api.latest import io

from hierdiff_core.embed import encode_prompts
from hierdiff_core.prompts import prompts_from_input
from hierdiff_core.tree import METHODS, build_tree

from .conditioning import PromptTreeSet, clustering_embeddings, stack_conditionings
from .sockets import PROMPT_TREE, TREE_KEY

EMBEDDING_SOURCES = ("clip_pooled", "sentence")


def encode_each(clip, prompts: list[str]) -> list:
    """One CONDITIONING row per prompt, each encoded alone exactly as CLIPTextEncode would."""
    if clip is None:
        raise ValueError("clip input is invalid: None (is the checkpoint's text encoder missing?)")
    per_prompt = [clip.encode_from_tokens_scheduled(clip.tokenize(p)) for p in prompts]
    return stack_conditionings(per_prompt)


class HierPromptSetCluster(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPromptSetCluster",
            display_name="Prompt Set Cluster",
            category="sampling/hierarchical",
            description="Encodes every prompt and builds the hierarchy that the hierarchical samplers share.",
            is_input_list=True,
            inputs=[
                io.Clip.Input("clip"),
                io.String.Input(
                    "prompts",
                    multiline=True,
                    default="",
                    tooltip="One prompt per line; a list of strings from other nodes works too.",
                ),
                io.Combo.Input(
                    "linkage",
                    options=list(METHODS),
                    default="ward",
                    tooltip="Agglomerative linkage over cosine distances (published default: ward).",
                ),
                io.Combo.Input(
                    "embedding",
                    options=list(EMBEDDING_SOURCES),
                    default="clip_pooled",
                    tooltip="Cluster on CLIP's pooled output, or on the offline sentence encoder.",
                ),
            ],
            outputs=[
                PROMPT_TREE.Output(display_name="prompt_tree"),
                io.String.Output(display_name="prompts", is_output_list=True),
            ],
        )

    @classmethod
    def execute(cls, clip, prompts, linkage, embedding) -> io.NodeOutput:
        clip, linkage, embedding = clip[0], linkage[0], embedding[0]
        texts = prompts_from_input(prompts)
        if not texts:
            raise ValueError("prompts input is empty: give one prompt per line")
        conditioning = encode_each(clip, texts)
        vectors = encode_prompts(texts) if embedding == "sentence" else clustering_embeddings(conditioning)
        tree = build_tree(vectors, method=linkage, metric="cosine", prompts=texts)
        prompt_set = PromptTreeSet(tree, tuple(texts), conditioning, embedding)
        return io.NodeOutput(prompt_set, texts, ui={TREE_KEY: [json.dumps(tree.to_dict())]})


NODES = [HierPromptSetCluster]
