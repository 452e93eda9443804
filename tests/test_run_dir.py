"""A run's folder: metrics.jsonl survives a torn line; the typed record reads and writes the
FORMAT 2 JSON; older formats are refused; the lock."""


def test_torn_metrics_line_is_closed_not_joined(tmp_path):
    from charjax.run_dir import append_metrics, read_metrics

    append_metrics(tmp_path, {"epoch": 1, "loss": 2.0})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')  # a crash mid-write
    append_metrics(tmp_path, {"epoch": 2, "loss": 1.5})
    assert read_metrics(tmp_path) == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
