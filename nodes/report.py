# SPDX-License-Identifier: GPL-3.0-or-later
"""Hierarchy Preview: the plan of a hierarchical run as a picture in ComfyUI's output folder.

The web extension draws the same plan interactively; this node gives API users and headless runs the
dendrogram as a PNG file (listed in the node's `images` UI output like SaveImage's), and reports the
plan and the savings line under the UI keys the web extension reads.
"""

from __future__ import annotations

import json
import os

import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io
from PIL.PngImagePlugin import PngInfo

from hierdiff_core.report import render_dendrogram, summary_line
from hierdiff_core.schedule import Plan

from .sockets import PLAN_KEY, SUMMARY_KEY


def plan_ui(schedule: Plan) -> dict[str, list[str]]:
    """The UI output entries that let the web extension draw `schedule`."""
    return {PLAN_KEY: [schedule.to_json()], SUMMARY_KEY: [summary_line(schedule)]}


def parse_plan(plan_json: str) -> Plan:
    """A schedule from the plan JSON a sampler outputs; ValueError naming the input otherwise."""
    try:
        return Plan.from_json(plan_json)
    except ValueError as err:
        raise ValueError(f"plan_json: {err}") from None


class HierPlanPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPlanPreview",
            display_name="Hierarchy Preview",
            category="sampling/hierarchical",
            description="Draws which prompts share which steps (a dendrogram against the step axis) "
            "and saves the picture to the output folder.",
            is_output_node=True,
            inputs=[
                io.String.Input(
                    "plan_json",
                    force_input=True,
                    tooltip="The plan output of a hierarchical sampler node.",
                ),
                io.String.Input(
                    "filename_prefix",
                    default="hierdiff/plan",
                    tooltip="Where the dendrogram PNG goes, relative to the output folder.",
                ),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, plan_json: str, filename_prefix: str) -> io.NodeOutput:
        schedule = parse_plan(plan_json)
        picture = render_dendrogram(schedule)
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), picture.width, picture.height
        )
        file = f"{filename}_{counter:05}_.png"
        picture.save(os.path.join(folder, file), pnginfo=cls._workflow_metadata(), compress_level=4)
        ui = {"images": [{"filename": file, "subfolder": subfolder, "type": "output"}]}
        return io.NodeOutput(ui=ui | plan_ui(schedule))

    @classmethod
    def _workflow_metadata(cls) -> PngInfo | None:
        """The prompt and workflow, as SaveImage embeds them, so the PNG reopens the graph."""
        if args.disable_metadata:
            return None
        metadata = PngInfo()
        if cls.hidden.prompt is not None:
            metadata.add_text("prompt", json.dumps(cls.hidden.prompt))
        for key, value in (cls.hidden.extra_pnginfo or {}).items():
            metadata.add_text(key, json.dumps(value))
        return metadata


NODES: list[type[io.ComfyNode]] = [HierPlanPreview]
