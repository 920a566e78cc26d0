# SPDX-License-Identifier: GPL-3.0-or-later
"""hierdiff outside ComfyUI, on diffusers pipelines: priors, the Kandinsky 2.2 decoder, ``hierdiff generate``.

The only package of hierdiff that imports diffusers and transformers (each module where it needs them;
importing this package itself loads neither). The planner and the engine it drives are
``hierdiff_core``'s.
"""
