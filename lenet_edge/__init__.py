"""lenet-edge: small CNNs from Paddle training to INT8 on CPUs and ARM boards, checked at every step.

The pipeline's stages live in the repository's top-level folders and are installed as subpackages
of this namespace (pyproject.toml maps lenet_edge.train -> train/, ...): `lenet_edge.train`,
`.export`, `.optimize`, `.quantize`, `.runtime` (what ships to a device), `.report`; the console
script `lenet-edge` is lenet_edge.cli.
"""

__version__ = "0.1.0"
