# SPDX-License-Identifier: GPL-3.0-or-later
"""The testkit's node, "Tiny Test Model Loader (hierdiff testkit, random weights)" (imports ComfyUI)."""

from comfy_api.latest import ComfyExtension, io

from .tiny_model import TINY_CHECKPOINT_NAME, load_tiny_model


class TinyTestModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierTestTinyModelLoader",
            display_name="Tiny Test Model Loader (hierdiff testkit, random weights)",
            category="testing/hierdiff",
            description=(
                "TEST MODEL for hierdiff's tests and demo: a tiny SD1.5-architecture model with random "
                f"weights (generated once as {TINY_CHECKPOINT_NAME} in the checkpoints folder). "
                "It makes noise, not pictures."
            ),
            inputs=[
                io.String.Input(
                    "checkpoint",
                    default="",
                    optional=True,
                    tooltip=(
                        "Empty: the generated random tiny model. Otherwise a file in the checkpoints folder "
                        "with the same tiny SD1.5 layout and metadata (for example a small trained model)."
                    ),
                ),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, checkpoint: str = "") -> io.NodeOutput:
        return io.NodeOutput(*load_tiny_model(checkpoint or None))


class HierdiffTestkitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyTestModelLoader]
