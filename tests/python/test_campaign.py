"""The campaign driver (python -m labelwise.campaign): outputs, resume, and bad input."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from labelwise import campaign  # noqa: E402

ARGS = ["--dataset", "breast_cancer", "--strategies", "random,bald,balentacq", "--seeds", "1", "--quick"]


def test_quick_campaign_writes_report_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "c")
    summary = campaign.main(ARGS + ["--out", out])
    for name in ("report.md", "results.json", "state.json", "curves_breast_cancer.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    res = json.load(open(os.path.join(out, "results.json")))
    runs = res["runs"]
    assert {r["strategy"] for r in runs} == {"random", "bald", "balentacq"}
    for r in runs:
        # labelled counts grow by at most one batch per round and accuracies are probabilities
        assert r["labeled"] == sorted(r["labeled"]) and len(set(r["labeled"])) == len(r["labeled"])
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"])
        assert r["labeled"][-1] - r["labeled"][0] == int(round(0.12 * r["pool_size"]))
        al = r["autolabel"]
        assert 0.0 <= al["coverage"] <= 1.0 and al["n_calibration"] > 0
        assert al["n_accepted"] == round(al["coverage"] * al["n_rest"])
        if al["certified"]:
            assert al["bound"] <= 0.05 and al["realised_error"] is not None
        else:
            assert al["n_accepted"] == 0 and al["reason"]
    report = open(os.path.join(out, "report.md")).read()
    assert "95 % of full-data accuracy" in report and "balentacq" in report
    assert "Certified auto-labelling" in report
    assert set(summary["breast_cancer"]) == {"random", "bald", "balentacq"}
    # Second call resumes from state.json and gives the same numbers without recomputing.
    capsys.readouterr()
    again = campaign.main(ARGS + ["--out", out])
    assert "resuming: 3 finished runs" in capsys.readouterr().out
    assert again == json.loads(json.dumps(summary))


def test_acquired_items_are_new_and_distinct():
    d = campaign.load_dataset("breast_cancer")
    cfg = campaign.build_config(campaign.parse_args(ARGS))
    for strategy in [s for s in campaign.available_strategies() if s not in ("random", "bald", "balentacq")]:
        r = campaign.run_one(d, strategy, 0, cfg)  # raises if a pick is labelled, a duplicate or calibration
        assert np.all(np.diff(r.labeled) > 0), strategy


def test_bad_inputs(tmp_path):
    one = tmp_path / "one.npz"
    np.savez(one, X=np.random.rand(50, 3), y=np.zeros(50, dtype=int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        campaign.main(["--data", str(one), "--strategies", "random", "--seeds", "1", "--quick", "--out", str(tmp_path / "o")])
    nan = tmp_path / "nan.npz"
    X = np.random.rand(50, 3)
    X[7, 1] = np.nan
    np.savez(nan, X=X, y=np.arange(50) % 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        campaign.main(["--data", str(nan), "--quick", "--out", str(tmp_path / "o2")])
    rare = tmp_path / "rare.npz"
    y = np.zeros(60, dtype=int)
    y[0] = 1  # a class with a single item cannot give the seed set 2 examples
    np.savez(rare, X=np.random.rand(60, 3), y=y)
    with pytest.raises(ValueError, match="seed set needs"):
        campaign.main(["--data", str(rare), "--strategies", "random", "--seeds", "1", "--quick", "--out", str(tmp_path / "o3")])
    with pytest.raises(SystemExit, match="budget"):
        campaign.main(["--dataset", "digits", "--budget", "1.5", "--out", str(tmp_path / "o4")])
    with pytest.raises(SystemExit, match="unknown or unavailable"):
        campaign.main(["--strategies", "oracle", "--out", str(tmp_path / "o5")])
    with pytest.raises(FileNotFoundError):
        campaign.main(["--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o6")])


def test_nan_model_output_is_an_error():
    model = campaign.make_model(3, 2, 8, 0.3, 0)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        campaign.mc_log_probs(model, np.random.rand(5, 3).astype(np.float32), 4, 0)
