"""The original recipe in PyTorch, as its users write it: `nn.LSTM` over one-hot windows, the
last step into `nn.Linear`, cross-entropy, `torch.optim.RMSprop` (alpha 0.9, eps 1e-7; PyTorch
adds eps outside the square root, Keras 3 inside: the same work), a plain training loop on all
of the host's cores. Sampling: 400 chars one at a time through `nn.LSTM` with its (h, c)
carried, under `torch.no_grad()`. `python -m benchmarks.peers.torch_peer --steps N`."""

from __future__ import annotations

from benchmarks.environment import versions
from benchmarks.peers import recipe as r


def main() -> None:
    args = r.arguments("torch_peer")
    import torch  # the [peers] extra
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(0)
    ids, vocab = r.corpus()

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(vocab, r.HIDDEN, batch_first=True)
            self.dense = nn.Linear(r.HIDDEN, vocab)

        def forward(self, x, state=None):
            out, state = self.lstm(x, state)
            return self.dense(out[:, -1]), state

    net = CharLSTM()
    opt = torch.optim.RMSprop(net.parameters(), lr=r.LEARNING_RATE, alpha=r.RHO, eps=r.EPSILON)
    data = [(torch.from_numpy(x).long(), torch.from_numpy(y).long())
            for x, y in r.batches(ids, r.WARMUP_STEPS + args.steps)]  # fmt: skip

    def train_step(x, y):
        logits, _ = net(F.one_hot(x, vocab).float())
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    t0 = r.clock()
    for x, y in data[: r.WARMUP_STEPS]:
        train_step(x, y)
    t1 = r.clock()
    for x, y in data[r.WARMUP_STEPS :]:
        train_step(x, y)
    t2 = r.clock()

    def sample_text():
        with torch.no_grad():
            x = F.one_hot(torch.from_numpy(r.prime(ids)).long(), vocab).float()[None]
            logits, state = net(x)
            out = []
            for _ in range(r.SAMPLE_CHARS):
                p = torch.softmax(logits / r.TEMPERATURE, -1)
                nxt = torch.multinomial(p, 1)
                out.append(int(nxt))
                logits, state = net(F.one_hot(nxt, vocab).float(), state)
            return out

    sample_text()  # the first call allocates
    t3 = r.clock()
    sample_text()
    sample_s = r.clock() - t3
    r.report(
        train_s=t2 - t1, steps=args.steps, first_s=t1 - t0, sample_s=sample_s,
        train="nn.LSTM + nn.Linear, one-hot input, a Python loop of optimizer steps "
        f"({torch.get_num_threads()} threads)",
        sample="nn.LSTM stepped one char at a time, (h, c) carried, torch.no_grad()",
        packages=versions("torch"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
