"""hierdiff_lab: a synthetic text-to-image domain with checkable content, used to measure fidelity.

``synthetic`` draws captioned pictures of coloured shapes, ``checker`` reads a picture back into
caption attributes, ``train`` fits a tiny SD1.5-architecture model on them.
"""
