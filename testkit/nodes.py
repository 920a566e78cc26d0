# SPDX-License-Identifier: GPL-3.0-or-later
"""The testkit's node, "Tiny Test Model Loader (hierdiff testkit, random weights)" (imports ComfyUI)."""

from comfy_api.latest import ComfyExtension, io

from . import tiny_video
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


class TinyWanModelLoader(io.ComfyNode):
    """Stands in for UNETLoader in the video example on the tiny models (tests substitute it)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierTestTinyWanModelLoader",
            display_name="Tiny Wan Model Loader (hierdiff testkit, random weights)",
            category="testing/hierdiff",
            description=(
                "TEST MODEL for hierdiff's tests: a tiny Wan text-to-video diffusion model, random weights, "
                "written once in the diffusion_models folder and loaded as UNETLoader loads a file. "
                "It makes noise, not videos."
            ),
            inputs=[io.Combo.Input("variant", options=list(tiny_video.VARIANTS), default="wan2.1_t2v")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, variant: str = "wan2.1_t2v") -> io.NodeOutput:
        return io.NodeOutput(tiny_video.load_wan_model(variant))


class TinyUMT5Loader(io.ComfyNode):
    """Stands in for CLIPLoader (type wan) in the video example on the tiny models."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierTestTinyUMT5Loader",
            display_name="Tiny umt5 Text Encoder Loader (hierdiff testkit, random weights)",
            category="testing/hierdiff",
            description=(
                "TEST MODEL for hierdiff's tests: a tiny umt5 text encoder (Wan's), random weights, behind "
                "ComfyUI's Wan tokenizer, written once in the text_encoders folder."
            ),
            inputs=[],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(tiny_video.load_text_encoder())


class TinyWanVAELoader(io.ComfyNode):
    """Stands in for VAELoader (the Wan 2.1 VAE) in the video example on the tiny models."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HierTestTinyWanVAELoader",
            display_name="Tiny Wan 2.1 VAE Loader (hierdiff testkit, random weights)",
            category="testing/hierdiff",
            description=(
                "TEST MODEL for hierdiff's tests: ComfyUI's 3-D causal Wan 2.1 VAE, 8 channels wide, with "
                "random weights, written once in the vae folder and loaded as VAELoader loads a file."
            ),
            inputs=[],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(tiny_video.load_vae())


class HierdiffTestkitExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [TinyTestModelLoader, TinyWanModelLoader, TinyUMT5Loader, TinyWanVAELoader]
