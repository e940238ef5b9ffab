"""Runs examples/python/next_to_label.py on the real breast-cancer data and checks what it prints."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from labelwise import uncertainty as U  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "python" / "next_to_label.py"
FAST = ["--dataset", "breast_cancer", "--steps", "60", "--samples", "8", "--no-progress"]


@pytest.fixture(scope="module")
def ntl():
    spec = importlib.util.spec_from_file_location("next_to_label", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _parse_table(stdout):
    """The rows of the 'next to label' table as dicts keyed by the header's column names."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "row"])
    cols = lines[start].split()
    assert set(lines[start + 1]) == {"-"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        fields = line.split()
        assert len(fields) == len(cols), line
        rows.append(dict(zip(cols, fields)))
    return cols, rows


@pytest.mark.parametrize("metric,batch", [("balentacq", 7), ("bald", 12), ("variation_ratio", 9)])
def test_prints_requested_items_ranked_by_metric(ntl, capsys, tmp_path, metric, batch):
    out_dir = tmp_path / "out"
    argv = FAST + ["--metric", metric, "--batch", str(batch), "--seed", "3"]
    if metric == "balentacq":
        pytest.importorskip("matplotlib")
        argv += ["--out", str(out_dir)]
    res = ntl.main(argv)
    stdout = capsys.readouterr().out
    assert "Breast Cancer Wisconsin (Diagnostic)" in stdout
    assert "seed-model test accuracy" in stdout

    # The split: three disjoint sets of original row indices covering the data set.
    split = res["split"]
    n = len(split.y)
    parts = [set(split.seed_idx.tolist()), set(split.pool_idx.tolist()), set(split.test_idx.tolist())]
    assert sum(map(len, parts)) == n and set.union(*parts) == set(range(n))
    assert abs(len(parts[0]) - 0.1 * n) <= 1

    cols, rows = _parse_table(stdout)
    assert ntl.SHORT.get(metric, metric) in cols, "the ranking metric is one of the table's columns"
    assert len(rows) == batch
    assert [int(r["rank"]) for r in rows] == list(range(1, batch + 1))
    printed = [int(r["row"]) for r in rows]
    assert len(set(printed)) == batch, "items must be distinct"
    assert set(printed) <= parts[1], "items must come from the unlabelled pool"
    assert not set(printed) & (parts[0] | parts[2])

    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    assert [r["true"] for r in rows] == [str(data.target_names[data.target[i]]) for i in printed]

    # Recompute the scores from the script's MC-dropout log-probabilities, independently in float64 numpy.
    lp = res["log_probs"]
    assert isinstance(lp, torch.Tensor) and lp.shape == (len(split.pool_idx), 8, 2)
    assert all(isinstance(v, torch.Tensor) for v in res["scores"].values()), "scores stay in the caller's framework"
    ref = U.score(lp.double().numpy(), U.METRICS, input="log_probs")
    s = ref[metric]
    pos_of_row = {int(r): p for p, r in enumerate(split.pool_idx)}
    chosen = np.array([pos_of_row[r] for r in printed])
    tol = lambda v: 1e-3 * np.abs(v) + 1e-5  # noqa: E731  (float32 scores vs float64 recomputation)
    vals = s[chosen]
    assert np.all(vals[1:] <= vals[:-1] + tol(vals[:-1])), f"ranking not non-increasing in {metric}: {vals}"
    rest = np.delete(s, chosen)
    assert vals.min() >= rest.max() - tol(rest.max()), "an unprinted pool item scores higher than a printed one"

    # Printed metric columns agree with the recomputation to display precision.
    for m in U.METRICS:
        col = ntl.SHORT.get(m, m)
        if col in cols:
            shown = np.array([float(r[col]) for r in rows])
            np.testing.assert_allclose(shown, ref[m][chosen], rtol=2e-3, atol=1e-4, err_msg=m)

    assert "overlap of the top-%d sets" % batch in stdout
    if metric == "balentacq":
        csv_lines = (out_dir / "scores.csv").read_text().splitlines()
        assert csv_lines[0].split(",")[-len(U.METRICS) :] == list(U.METRICS)
        assert len(csv_lines) == 1 + len(split.pool_idx)
        assert [int(line.split(",")[1]) for line in csv_lines[1 : batch + 1]] == printed
        assert (out_dir / "bald_vs_balentacq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_deterministic_for_a_seed(ntl, capsys):
    ntl.main(FAST + ["--seed", "5"])
    first = capsys.readouterr().out
    ntl.main(FAST + ["--seed", "5"])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--metric", "entropy"], "invalid choice: 'entropy'"),
        (["--batch", "0"], "--batch: must be a positive integer, got 0"),
        (["--batch", "ten"], "--batch: expected an integer, got 'ten'"),
        (["--samples", "1"], "--samples: must be at least 2"),
        (["--batch", "100000"], "--batch 100000 is larger than the unlabelled pool"),
        (["--dataset", "mnist"], "invalid choice: 'mnist'"),
    ],
)
def test_bad_arguments_exit_with_a_clear_message(ntl, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        ntl.main(FAST + argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_script_entry_point_rejects_unknown_metric():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--metric", "bogus"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "invalid choice: 'bogus'" in proc.stderr and "balentacq" in proc.stderr
