# SPDX-License-Identifier: GPL-3.0-or-later
"""Prompt sets from templates: a grid from ``{a|b}`` alternatives, and the cross of two lists.

Both output a list of strings (one prompt per item) that Prompt Set Cluster takes as its prompts.
The expansion itself is :mod:`hierdiff_core.prompts`'s.
"""

from __future__ import annotations

from comfy_api.latest import io

from hierdiff_core.prompts import cross_prompts, expand_template, prompts_from_input, text_prompts


class HierPromptTemplate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPromptTemplate",
            display_name="Prompt Grid from Template",
            category="sampling/hierarchical/prompts",
            description="Expands templates such as 'a {red|blue} {circle|square}' into every prompt they "
            "name (the grid), for Prompt Set Cluster.",
            inputs=[
                io.String.Input(
                    "template",
                    multiline=True,
                    default="a {red|blue|green} {circle|square} in the {top left|center}",
                    tooltip="One template per line. Each {a|b|c} takes each of its options in turn; the "
                    "first group varies slowest. An option may be empty: {|very }red.",
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="prompts",
                    is_output_list=True,
                    tooltip="Every prompt of the grid, line after line; connect to Prompt Set Cluster.",
                ),
            ],
        )

    @classmethod
    def execute(cls, template: str) -> io.NodeOutput:
        lines = text_prompts(template)
        if not lines:
            raise ValueError("template input is empty: write a prompt with {a|b} alternatives")
        return io.NodeOutput([prompt for line in lines for prompt in expand_template(line)])


class HierPromptCross(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierPromptCross",
            display_name="Prompt Cross (subjects x styles)",
            category="sampling/hierarchical/prompts",
            description="Every pairing of two prompt lists written into a pattern, e.g. each subject in "
            "each style, for Prompt Set Cluster.",
            is_input_list=True,
            inputs=[
                io.String.Input(
                    "first",
                    multiline=True,
                    default="a cat\na lighthouse",
                    tooltip="One item per line, or a list from another node (one item per list entry). "
                    "Varies slowest.",
                ),
                io.String.Input(
                    "second",
                    multiline=True,
                    default="oil painting\nwatercolor",
                    tooltip="One item per line, or a list from another node (one item per list entry).",
                ),
                io.String.Input(
                    "pattern",
                    default="{second} of {first}",
                    tooltip="Where each item goes: {first} and {second}, each at least once.",
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="prompts",
                    is_output_list=True,
                    tooltip="len(first) x len(second) prompts, first-list item by first-list item.",
                ),
            ],
        )

    @classmethod
    def execute(cls, first: list, second: list, pattern: list[str]) -> io.NodeOutput:
        firsts, seconds = prompts_from_input(first), prompts_from_input(second)
        for name, items in (("first", firsts), ("second", seconds)):
            if not items:
                raise ValueError(f"{name} input is empty: give one item per line")
        return io.NodeOutput(cross_prompts(firsts, seconds, pattern[0]))


NODES: list[type[io.ComfyNode]] = [HierPromptTemplate, HierPromptCross]
