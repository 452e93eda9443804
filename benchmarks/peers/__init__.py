"""The peers `charjax-bench --peers` times beside charjax: the original recipe (LSTM(128) +
softmax Dense over windows of 60 chars every 3, batch 128, RMSprop 0.01) and a 400-char sampling
loop, each written as its framework's user writes them, each run in a process of its own.

`PEERS` names them; each module's `main` prints one JSON line (`recipe.report`). The harness
(`harness`) runs them interleaved and compares medians.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Peer:
    name: str  # as --peers takes it
    label: str  # as the table shows it
    module: str  # run as `python -m MODULE --steps N`
    env: dict = field(default_factory=dict)  # set for its process


PEERS = {
    peer.name: peer
    for peer in (
        Peer("charjax", "charjax", "benchmarks.peers.charjax_peer"),
        Peer("torch", "PyTorch nn.LSTM", "benchmarks.peers.torch_peer"),
        Peer("keras-tf", "Keras 3 on TensorFlow", "benchmarks.peers.keras_peer",
             {"KERAS_BACKEND": "tensorflow"}),
        Peer("keras-jax", "Keras 3 on JAX", "benchmarks.peers.keras_peer",
             {"KERAS_BACKEND": "jax"}),
    )
}  # fmt: skip
