"""`charjax-bench --peers`: the harness (order of the runs, a peer's line read from its own
process, medians, ratios, the table with the host) with stand-in peers; the real peers in the
slow tier where the [peers] extra is installed."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.peers import PEERS, Peer, harness
from charjax.errors import CharjaxError

TESTS = Path(__file__).resolve().parent


def standin(name: str, rate: float, ms: float, log: Path, **env) -> Peer:
    return Peer(name, f"{name} label", "standin_peer", {
        "PYTHONPATH": str(TESTS), "STANDIN_LOG": str(log), "STANDIN_NAME": name,
        "STANDIN_RATE": str(rate), "STANDIN_MS": str(ms), **env,
    })  # fmt: skip


def test_the_rounds_interleave_every_peer_and_charjax_leads():
    a, b, c = (Peer(n, n, "m") for n in "abc")
    assert harness.schedule([a, b, c], 2) == [(1, a), (1, b), (1, c), (2, a), (2, b), (2, c)]
    chosen = harness.peers_named("keras-tf, torch,torch")
    assert [p.name for p in chosen] == ["charjax", "keras-tf", "torch"]
    for wrong in ("pytorch", "", "charjax"):
        with pytest.raises(CharjaxError, match="--peers takes a comma list of torch, keras-tf"):
            harness.peers_named(wrong)


def test_medians_and_charjax_ratios():
    runs = {
        "charjax": [dict(train_windows_per_s=r, sample_ms=m, train_method="t", sample_method="s",
                         versions={}) for r, m in ((4000, 8), (4400, 10), (3000, 9))],
        "torch": [dict(train_windows_per_s=r, sample_ms=m, train_method="t", sample_method="s",
                       versions={}) for r, m in ((2000, 200), (2500, 250))],
    }  # fmt: skip
    s = harness.summarize(runs)
    assert s["charjax"]["train_windows_per_s"] == 4000 and s["charjax"]["sample_ms"] == 9
    assert s["torch"]["train_windows_per_s"] == 2250 and s["torch"]["sample_ms"] == 225
    assert s["torch"]["charjax_train_x"] == pytest.approx(4000 / 2250, rel=1e-12)
    assert s["torch"]["charjax_sample_x"] == pytest.approx(225 / 9, rel=1e-12)
    assert s["charjax"]["charjax_train_x"] == 1.0 and s["torch"]["train_rounds"] == [2000, 2500]


def test_the_harness_runs_each_peer_in_its_own_process_in_rounds(tmp_path, monkeypatch):
    log = tmp_path / "order.txt"
    ours = standin("charjax", 4000, 8, log)
    other = standin("other", 2000, 160, log)
    lines = []
    comparison = harness.compare([ours, other], 2, 30, log=lines.append)
    assert log.read_text().split() == ["charjax", "other", "charjax", "other"]
    assert comparison["steps"] == 30 and len(comparison["runs"]["other"]) == 2
    assert comparison["peers"]["other"]["charjax_train_x"] == 2.0
    assert comparison["peers"]["other"]["charjax_sample_x"] == 20.0
    assert lines[0].startswith("round 1/2 charjax label: 4,000 windows/s")
    table = lines[-1]
    machine = comparison["host"]
    assert machine["cores"] >= 1 and isinstance(machine["avx512"], bool)
    assert ("with AVX-512" if machine["avx512"] else "without AVX-512") in table
    assert "medians of 2 round(s), interleaved" in table
    row = next(ln for ln in table.splitlines() if ln.startswith("other label"))
    assert row.split()[2:6] == ["2,000", "2.00", "160.0", "20.0"]
    assert "other label: train a stand-in loop; sample a stand-in sampler" in table


def test_a_peer_that_fails_is_one_line_naming_it_and_the_install(tmp_path):
    broken = standin("torch", 1, 1, tmp_path / "log", STANDIN_FAIL="1")
    with pytest.raises(CharjaxError) as e:
        harness.run_peer(broken, 10)
    assert str(e.value) == (
        "peer torch failed (exit 1): ModuleNotFoundError: No module named 'torch' (install the "
        "peers: pip install -e '.[peers]')"
    )


def test_bench_is_a_command_of_the_common_kind(capsys):
    assert cli.main(["--peers", "torch,nope"]) == 2
    assert capsys.readouterr().err == (
        "charjax-bench: error: --peers takes a comma list of torch, keras-tf, keras-jax, got "
        "'torch,nope'\n"
    )
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--qui"])
    assert "did you mean --quick?" in capsys.readouterr().err
    assert cli.main(["--peers", "torch", "--rounds", "0"]) == 2
    assert "--rounds must be >= 1" in capsys.readouterr().err


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.slow
@pytest.mark.skipif(not _installed("torch", "keras", "tensorflow"),
                    reason="the [peers] extra is not installed")  # fmt: skip
def test_the_real_peers_train_and_sample_in_one_comparison(tmp_path):
    out = tmp_path / "peers.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "--peers", "torch,keras-tf,keras-jax",
         "--rounds", "1", "--steps", "10", "--json", str(out)],
        capture_output=True, text=True, cwd=harness.ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    comparison = json.loads(out.read_text())
    assert set(comparison["peers"]) == set(PEERS)
    for name, s in comparison["peers"].items():
        assert s["train_windows_per_s"] > 0 and s["sample_ms"] > 0, name
    assert "PyTorch nn.LSTM" in done.stdout and "Keras 3 on TensorFlow" in done.stdout
