"""The campaign driver (python -m labelwise.campaign): outputs, resume, and bad input."""

import json
import os
import sys

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
    assert "ddof = 0" in report and "not independent trials" in report
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
    with pytest.raises(campaign.CampaignError, match="budget"):
        campaign.main(["--dataset", "digits", "--budget", "1.5", "--out", str(tmp_path / "o4")])
    with pytest.raises(campaign.CampaignError, match="unknown or unavailable"):
        campaign.main(["--strategies", "oracle", "--out", str(tmp_path / "o5")])
    with pytest.raises(FileNotFoundError):
        campaign.main(["--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o6")])
    # every data set's batch and split are checked before the first run: digits' runs do not go first
    with pytest.raises(ValueError, match="breast_cancer: batch size 60 must be in"):
        campaign.main(["--dataset", "digits", "--dataset", "breast_cancer", "--batch", "60", "--quick", "--strategies",
                       "random", "--out", str(tmp_path / "o7")])
    assert not (tmp_path / "o7").exists()
    for bad, msg in (("--seeds", "--seeds must be in"), ("--samples", "--samples must be in"),
                     ("--batch", "--batch must be in")):
        with pytest.raises(campaign.CampaignError, match=msg):
            campaign.main([bad, str(2**63), "--out", str(tmp_path / "o8")])
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        campaign.main(["--data", str(text), "--out", str(tmp_path / "o9")])
    ynan = tmp_path / "ynan.npz"
    np.savez(ynan, X=np.random.rand(40, 2), y=np.r_[np.zeros(20), np.ones(19), np.nan])
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        campaign.main(["--data", str(ynan), "--quick", "--out", str(tmp_path / "o10")])


def test_cli_messages_settings_and_resume_safety(tmp_path, capsys):
    # plausible mistakes: a one-line message and exit status 2, not a traceback
    assert campaign.cli(["--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "labelwise-campaign: error: --data: no such file" in capsys.readouterr().err
    with pytest.raises(campaign.CampaignError, match="--dataset: unknown"):
        campaign.main(["--dataset", "mnist", "--out", str(tmp_path / "o")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(campaign.CampaignError, match="not a folder"):
        campaign.main(ARGS + ["--out", str(tmp_path / "file")])
    # --quick keeps what is given explicitly; repeated strategies run once
    cfg = campaign.build_config(campaign.parse_args(["--quick", "--seeds", "3", "--samples", "30"]))
    assert cfg.seeds == [0, 1, 2] and cfg.samples == 30 and cfg.budget_fraction == 0.12
    assert campaign.build_config(campaign.parse_args(["--strategies", "random,random,bald"])).strategies == ["random", "bald"]
    with pytest.raises(campaign.CampaignError, match="named alike"):
        campaign.build_config(campaign.parse_args(["--dataset", "digits", "--data", str(tmp_path / "digits.npz")]))
    # a folder of finished runs is never silently discarded: other settings, or other data under the same
    # file name, are refused until --fresh
    data = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (60, 4)), rng.normal(2, 1, (60, 4))])
    np.savez(data, X=X, y=np.repeat([0, 1], 60))
    out = str(tmp_path / "runs")
    base = ["--data", str(data), "--strategies", "random", "--quick", "--out", out]
    campaign.main(base)
    with pytest.raises(campaign.CampaignError, match="finished runs of other settings"):
        campaign.main(base[:-2] + ["--budget", "0.2", "--out", out])
    np.savez(data, X=X + 1.0, y=np.repeat([0, 1], 60))  # same name, other contents
    with pytest.raises(campaign.CampaignError, match="--fresh"):
        campaign.main(base)
    campaign.main(base + ["--fresh"])
    assert "random" in open(os.path.join(out, "report.md")).read()
    # runs made by another build of the library (or of numpy / torch / scikit-learn) are not mixed in
    state_file = os.path.join(out, "state.json")
    state = json.load(open(state_file))
    assert state["code"] == campaign.code_fingerprint()
    state["code"] = "0" * 64
    with open(state_file, "w") as f:
        json.dump(state, f)
    with pytest.raises(campaign.CampaignError, match="another build of labelwise.*--fresh"):
        campaign.main(base)
    del state["code"]  # saved before fingerprints were recorded
    with open(state_file, "w") as f:
        json.dump(state, f)
    with pytest.raises(campaign.CampaignError, match="saved before code fingerprints were recorded.*--fresh"):
        campaign.main(base)
    campaign.main(base + ["--fresh"])
    # argument errors are one line with exit status 2 too (they exited 1 with a bare message)
    capsys.readouterr()  # the progress output so far
    for bad in (["--seeds", "0"], ["--budget", "1.5"], ["--strategies", "nope"], ["--dataset", "nope"]):
        assert campaign.cli(bad + ["--out", str(tmp_path / "o7")]) == 2, bad
        assert capsys.readouterr().err.startswith("labelwise-campaign: error: "), bad
    assert not os.path.exists(tmp_path / "o7")  # nothing is created for a refused invocation
    # a budget that rounds to no item is named as such, with a budget that works (round() halves to even:
    # the former suggestion 0.5 / n could round to 0 again)
    with pytest.raises(campaign.CampaignError, match="--budget 0.001 of a .*-item pool is no item") as e:
        campaign.main(["--data", str(data), "--strategies", "random", "--quick", "--budget", "0.001",
                       "--out", str(tmp_path / "o8")])
    msg = str(e.value)
    n = int(msg.split("of a ")[1].split("-item")[0])
    suggested = float(msg.split("pass at least ")[1].split(" ")[0])
    assert int(round(suggested * n)) >= 1
    for n in (7, 1078, 145152):
        text = str(pytest.raises(campaign.CampaignError, campaign.SEG.budget_count, "d", 0.1 / n, n, "item").value)
        assert int(round(float(text.split("pass at least ")[1].split(" ")[0]) * n)) == 1, text
    # the default batch never exceeds a small budget (digits: default batch 21, budget 16 at 0.015)
    digits = campaign.load_dataset("digits")
    b, budget = campaign.plan(digits, campaign.build_config(campaign.parse_args(["--budget", "0.015"])), 0)[-2:]
    assert b == budget == 16
    with pytest.raises(campaign.CampaignError, match="--data mine.csv: expected a .npz file"):
        campaign.build_config(campaign.parse_args(["--data", "mine.csv"]))
    # a state file that is not a campaign's: named, with the way out
    bad_state = tmp_path / "o9"
    bad_state.mkdir()
    for text in ("[]", "{not json"):
        (bad_state / "state.json").write_text(text)
        with pytest.raises(campaign.CampaignError, match="state.json .*--fresh"):
            campaign.main(base[:-1] + [str(bad_state)])
    # --quick caps segmentation at 2 rounds only when --budget is not given
    assert campaign.build_config(campaign.parse_args(["--quick"])).seg_max_rounds == 2
    assert campaign.build_config(campaign.parse_args(["--quick", "--budget", "0.5"])).seg_max_rounds == 0


def test_labels_against_random_as_printed():
    # means over seeds of the same fractions, summed in another order, differ in their last bits
    f = (0.1 + 0.2 + 0.3) / 3
    g = (0.3 + 0.2 + 0.1) / 3
    assert f != g and campaign.versus_random(f, g) == "as many labels as random"
    assert campaign.versus_random(0.118, 0.165) == "28 % fewer labels than random"
    assert campaign.versus_random(0.035, 0.031) == "13 % more labels than random"
    assert campaign.versus_random(0.1004, 0.1) == "as many labels as random"


def test_summary_of_seeds_with_different_round_counts():
    """A segmentation pool's size depends on its seed's split, so seeds can run different numbers of
    rounds: the curves cover the rounds every seed reached (the summary raised 'inhomogeneous shape'
    after all the runs, and no report could ever be written)."""
    runs = [campaign.RunResult("d", "bald", s, labeled=list(range(10, 10 + 5 * n, 5)), accuracy=[0.5 + 0.1 * i
            for i in range(n)], full_accuracy=0.9, pool_size=100, seconds=1.0) for s, n in ((0, 3), (1, 4))]
    s = campaign.summarise(runs)["d"]["bald"]
    assert len(s["accuracy_mean"]) == len(s["labeled_fraction"]) == len(s["labeled"]) == 3
    np.testing.assert_allclose(s["accuracy_mean"], [0.5, 0.6, 0.7])
    assert s["fraction_to_95_per_seed"] == [None, None]
    # "final" is each seed's own last round, not the last round they all reached
    assert s["final_accuracy_mean"] == pytest.approx(0.75) and s["rounds"] == [2, 3]
    # the area under the curve over the common rounds, and its spread over the seeds
    assert s["accuracy_mean_over_rounds"] == pytest.approx(0.6) and s["accuracy_mean_over_rounds_std"] == 0.0
    runs = [campaign.RunResult("d", "bald", sd, labeled=[10, 20], accuracy=acc, full_accuracy=0.9, pool_size=100,
                               seconds=1.0) for sd, acc in ((0, [0.5, 0.7]), (1, [0.6, 1.0]))]
    s = campaign.summarise(runs)["d"]["bald"]
    assert s["accuracy_mean_over_rounds"] == pytest.approx(0.7)
    # the std over seeds of each seed's mean (0.6, 0.8), not over rounds or of the per-round stds (0.15)
    assert s["accuracy_mean_over_rounds_std"] == pytest.approx(0.1)


def test_progress_without_tqdm_every_seed_checked_and_failures_after_the_runs(tmp_path, capsys, monkeypatch):
    base = ["--dataset", "breast_cancer", "--strategies", "random", "--quick"]
    # every seed's split is checked before the first run (not only the first seed's)
    real_plan = campaign.plan

    def plan(d, cfg, seed):
        if seed == 1:
            raise ValueError("seed 1 cannot be split")
        return real_plan(d, cfg, seed)

    monkeypatch.setattr(campaign, "plan", plan)
    with pytest.raises(ValueError, match="seed 1 cannot be split"):
        campaign.main(base + ["--seeds", "2", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()
    monkeypatch.setattr(campaign, "plan", real_plan)
    # without tqdm, a line per finished run
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    out = str(tmp_path / "a")
    campaign.main(base + ["--seeds", "1", "--out", out])
    assert "[campaign] run 1/1: breast_cancer/random/0" in capsys.readouterr().out
    # a failure once the runs started keeps its traceback: not the one-line usage error (exit status 2)
    monkeypatch.setattr(campaign, "summarise", lambda results: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(RuntimeError, match="failed after its runs started: ValueError: boom"):
        campaign.main(base + ["--seeds", "1", "--out", out])
    with pytest.raises(RuntimeError):
        campaign.cli(base + ["--seeds", "1", "--out", out])


def test_nan_model_output_is_an_error():
    model = campaign.make_model(3, 2, 8, 0.3, 0)
    with torch.no_grad():
        model[0].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        campaign.mc_log_probs(model, np.random.rand(5, 3).astype(np.float32), 4, 0)


# ---- segmentation: Colin27 slices as the pool, region acquisition -------------------------------------------

SEG_ARGS = ["--dataset", "colin27", "--strategies", "random,bald,bald_regions", "--seeds", "1", "--quick"]


def _need_colin27():
    pytest.importorskip("nibabel")
    from labelwise.data import MRICRON_TEMPLATES

    if not os.path.exists(os.path.join(MRICRON_TEMPLATES, "ch2.nii.gz")):
        pytest.skip("mricron-data is not installed")


def test_colin27_quick_campaign_writes_report_and_resumes(tmp_path, capsys):
    _need_colin27()
    out = str(tmp_path / "seg")
    summary = campaign.main(SEG_ARGS + ["--out", out])
    for name in ("report.md", "results.json", "state.json", "curves_colin27.png", "overlay_colin27.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000, name
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["overlays"] == {"colin27": "overlay_colin27.png"}
    by = res["summary"]["colin27"]
    assert set(by) == {"random", "bald", "bald_regions"}
    for st, s in by.items():
        assert s["metric"] == "dice"
        for key in ("dice_mean", "dice_std", "full_dice_mean", "fraction_to_95", "runs_reaching_95", "labeled_fraction",
                    "autolabel", "autolabel_10", "dice_per_class_final_mean", "setup", "pool_size"):
            assert key in s, (st, key)
        assert all(0.0 <= v <= 1.0 for v in s["dice_mean"]) and 0.0 <= s["full_dice_mean"] <= 1.0
        assert len(s["dice_per_class_final_mean"]) == 8  # the 8 lobes; background is not scored
    for r in res["runs"]:
        ex = r["extra"]
        H, W = ex["slice_shape"]
        assert r["metric"] == "dice" and r["pool_size"] == ex["pool_slices"] * H * W
        # voxels: the seed slices, then one batch of slices' worth of voxels per round (2 rounds in quick mode)
        assert r["labeled"][0] == ex["seed_slices"] * H * W
        assert np.all(np.diff(r["labeled"]) == ex["batch_slices"] * H * W)
        assert len(r["labeled"]) == 3
        for al in (r["autolabel"], r["autolabel_10"]):
            assert al["unit"] == "voxel" and 0.0 <= al["coverage"] <= 1.0 and al["n_calibration"] > 0
        # the calibration clicks (at most 5 %) are unlabelled pool voxels off the padding, and are not
        # auto-labelled themselves
        for al, labelled in ((r["autolabel"], r["labeled"][-1]),
                             (r["autolabel_10"], round(r["autolabel_10"]["labeled_fraction"] * r["pool_size"]))):
            assert al["n_rest"] + al["n_calibration"] == al["n_unlabelled"] <= r["pool_size"] - labelled
            assert al["n_calibration"] <= al["n_unlabelled"] // 20
            pc = al["per_class"]
            assert pc["n_calibration"] == al["n_calibration"] and pc["n_rest"] == al["n_rest"]
            assert 0 <= pc["classes_certified"] <= len(r["extra"]["class_names"])
            assert pc["certified"] == (pc["classes_certified"] > 0)
        for al in (r["autolabel"], r["autolabel_10"]):
            assert al["n_accepted"] == round(al["coverage"] * al["n_rest"])
            if al["certified"]:
                assert al["bound"] <= 0.05 and al["realised_error"] is not None
        if r["strategy"] == "bald_regions":  # partial slice labels: touches at least as many slices as it fills
            assert ex["slices_touched"][-1] >= ex["seed_slices"] + ex["budget_slices"]
        else:
            assert ex["slices_touched"][-1] == ex["seed_slices"] + ex["budget_slices"]
    report = open(os.path.join(out, "report.md")).read()
    for text in ("95 % of full-data mean Dice", "overlay_colin27.png", "Certified auto-labelling", "per voxel",
                 "bald_regions", "Final Dice per class"):
        assert text in report, text
    capsys.readouterr()
    again = campaign.main(SEG_ARGS + ["--out", out])
    assert "resuming: 3 finished runs" in capsys.readouterr().out
    assert again == json.loads(json.dumps(summary))


def test_dice_matches_a_numpy_reference(rng):
    from labelwise.segcampaign import dice_per_class, mean_dice

    C = 6
    truth = rng.integers(0, C - 1, size=(5, 13, 11))  # class C-1 never in the truth
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(0, C, size=truth.shape))
    ref = []
    for c in range(1, C):
        t, p = (truth == c).astype(np.float64), (pred == c).astype(np.float64)
        ref.append(np.nan if t.sum() == 0 else 2 * (t * p).sum() / (t.sum() + p.sum()))
    got = dice_per_class(pred, truth, C)
    np.testing.assert_allclose(got, ref, rtol=1e-12, equal_nan=True)
    assert np.isnan(got[-1])
    assert mean_dice(pred, truth, C) == pytest.approx(np.nanmean(ref), rel=1e-12)
    assert mean_dice(truth, truth, C) == 1.0
    assert dice_per_class(np.zeros_like(truth), truth, C)[0] == 0.0


def _volume(S=12, H=16, W=16, seed=0):
    r = np.random.default_rng(seed)
    lab = np.zeros((S, H, W), dtype=np.int64)
    lab[:, 3:9, 3:9] = 1
    lab[2:10, 9:14, 8:14] = 2
    img = lab * 1.5 + r.normal(0, 0.3, size=lab.shape)
    return img, lab


def _seg_cfg(**kw):
    cfg = campaign.build_config(campaign.parse_args(["--dataset", "colin27", "--quick"]))
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_region_acquisition_labels_only_the_chosen_patches(tmp_path):
    from labelwise import segcampaign as SEG

    img, lab = _volume()
    path = tmp_path / "vol.npz"
    np.savez(path, image=img, labels=lab)
    cfg = _seg_cfg()
    d = campaign.load_dataset(str(path), cfg)
    assert d.kind == "segmentation" and d.image.shape == (12, 16, 16)
    torch.manual_seed(0)
    model = SEG.train(d, SEG.inputs(d, np.arange(3)), lab[:3], cfg, 0)
    x = SEG.inputs(d, np.arange(12))
    p = cfg.seg_patch
    labmask = np.zeros((12, 16, 16), dtype=bool)
    labmask[0] = True
    labmask[5, 4:8, 8:12] = True  # one tile already labelled
    before = labmask.copy()
    touched, regions = SEG.acquire("bald_regions", model, x, labmask, 1, cfg, 0, 0, p)
    tiles = (16 // p) ** 2
    assert len(regions) == tiles  # one slice's worth of voxels
    new = labmask & ~before
    want = np.zeros_like(labmask)
    for s, r, c in regions:
        assert r % p == 0 and c % p == 0  # grid-aligned, so never a partial overlap with labelled tiles
        assert not before[s, r:r + p, c:c + p].any()
        want[s, r:r + p, c:c + p] = True
    assert np.array_equal(new, want) and new.sum() == 16 * 16
    assert set(touched) == {s for s, _, _ in regions}
    # the same tiles as an independent reduction: mean BALD per tile, labelled tiles excluded, best first
    bald = SEG.mc_maps(model, x, cfg.samples, ["bald"], SEG.stream_seed(0, "mc", 0))["bald"].double().numpy()
    g = bald.reshape(12, 16 // p, p, 16 // p, p).mean(axis=(2, 4))
    g[before.reshape(12, 16 // p, p, 16 // p, p).any(axis=(2, 4))] = -np.inf
    best = np.sort(g.ravel())[::-1][:tiles]
    got = np.sort([g[s, r // p, c // p] for s, r, c in regions])[::-1]
    np.testing.assert_allclose(got, best, rtol=1e-9)  # the best tiles (up to ties in the last digits)
    # random regions: also whole unlabelled tiles only
    labmask2 = before.copy()
    _, rr = SEG.acquire("random_regions", model, x, labmask2, 2, cfg, 1, 0, p)
    assert len(rr) == 2 * tiles and len(set(rr)) == len(rr)
    assert (labmask2 & ~before).sum() == 2 * 16 * 16


def test_segmentation_campaign_on_a_user_volume(tmp_path):
    img, lab = _volume()
    path = tmp_path / "vol.npz"
    np.savez(path, image=img, labels=lab)
    out = str(tmp_path / "o")
    summary = campaign.main(["--data", str(path), "--strategies", "random,entropy,coreset,balentacq_regions,badge",
                             "--seeds", "1", "--quick", "--out", out])
    assert set(summary["vol"]) == {"random", "entropy", "coreset", "balentacq_regions"}  # badge does not apply
    report = open(os.path.join(out, "report.md")).read()
    assert "Not run on this data set: `badge`" in report


def test_segmentation_bad_inputs(tmp_path):
    from labelwise import segcampaign as SEG

    def run(name, img, lab, *extra, quick=True):
        path = tmp_path / f"{name}.npz"
        np.savez(path, image=img, labels=lab)
        return campaign.main(["--data", str(path), "--strategies", "random", "--seeds", "1", "--out",
                              str(tmp_path / name), *extra] + (["--quick"] if quick else []))

    img, lab = _volume()
    with pytest.raises(ValueError, match="at least 2 classes"):
        run("one", img, np.zeros_like(lab))
    bad = img.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        run("nan", bad, lab)
    rare = lab.copy()
    rare[2:10, 9:14, 8:14] = 0
    rare[6, 10:12, 10:12] = 2  # class 2 only in one slice: the seed set and the test set cannot both have it
    with pytest.raises(ValueError, match="appears in only 1 slice"):
        run("rare", img, rare)
    with pytest.raises(ValueError, match="larger than the unlabelled pool"):
        run("budget", img, lab, "--budget", "0.95", "--batch", "1", quick=False)  # fails before any training
    with pytest.raises(campaign.CampaignError, match="none of"):
        campaign.main(["--data", str(tmp_path / "budget.npz"), "--strategies", "batchbald", "--quick",
                       "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="not a segmentation strategy"):
        SEG.run_one(campaign.load_dataset(str(tmp_path / "budget.npz")), "badge", 0, _seg_cfg(), campaign.RunResult)
    # the seed set always holds every class, even when that takes more than seg_init_slices slices
    d = campaign.load_dataset(str(tmp_path / "budget.npz"))
    sp = SEG.split(d, _seg_cfg(seg_init_slices=1), 0)
    assert np.array_equal(np.unique(d.labels[sp.pool[sp.init]]), [0, 1, 2])
    assert not set(sp.test) & set(sp.pool) and len(sp.test) + len(sp.pool) == d.image.shape[0]


def test_segmentation_nan_model_output_is_an_error():
    from labelwise.models import build_segmenter
    from labelwise.segcampaign import mc_maps

    model = build_segmenter(3, 0.3, 4)
    with torch.no_grad():
        model.backbone.dec1[3].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        mc_maps(model, torch.zeros(2, 4, 16, 16), 4, ["bald"], 0)


def test_campaign_steps_are_seeded_and_leave_the_global_generator_alone():
    from labelwise import segcampaign

    X = np.random.default_rng(3).normal(size=(40, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)

    def steps(seed):
        model = campaign.train(campaign.make_model(5, 2, 8, 0.5, seed), X, y, 3, seed)
        return campaign.mc_log_probs(model, X, 4, seed)

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = steps(0)
    assert torch.equal(torch.random.get_rng_state(), before), "a campaign step moved the caller's generator"
    assert torch.equal(steps(0), first)  # the seed alone decides
    assert not torch.equal(steps(1), first)
    # the segmentation trainer draws inside the same context
    with segcampaign.seeded_torch(5):
        a = torch.rand(3)
    with segcampaign.seeded_torch(5):
        assert torch.equal(torch.rand(3), a)
    assert torch.equal(torch.random.get_rng_state(), before)
    for bad, exc in ((1.5, TypeError), (-1, ValueError), (2**64, ValueError), ("a", TypeError)):
        with pytest.raises(exc, match="seed"):
            with segcampaign.seeded_torch(bad):
                pass


def test_random_streams_of_runs_and_rounds_never_share_a_seed(monkeypatch):
    """Every seeded step of a run draws from its own stream (run seed, stream, round). The streams were
    seeded with sums like ``seed + rnd``, so seed 0's round-1 model trained on seed 1's round-0 stream,
    and BatchBALD drew the same configurations every round."""
    from labelwise import segcampaign

    seen = {}
    for seed in range(20):
        for stream in segcampaign.STREAMS:
            for rnd in range(20):
                s = segcampaign.stream_seed(seed, stream, rnd)
                assert 0 <= s < 2**64 and s not in seen, (seed, stream, rnd, seen.get(s))
                seen[s] = (seed, stream, rnd)
    # torch's CPU generator keeps the low 32 bits of a seed: those differ too
    assert len({s & 0xFFFFFFFF for s in seen}) == len(seen)
    # a seed past 2^32 would fold onto a small one (SeedSequence reads 32-bit words): refused
    with pytest.raises(ValueError, match=r"below 2\*\*32"):
        segcampaign.stream_seed(2**32 + 5, "init", 0)
    assert segcampaign.stream_seed(3, "mc", 4) == segcampaign.stream_seed(3, "mc", 4)
    with pytest.raises(ValueError, match="stream: expected one of"):
        segcampaign.stream_seed(0, "dropout")
    with pytest.raises(ValueError, match="rnd: expected >= 0"):
        segcampaign.stream_seed(0, "train", -1)
    with pytest.raises(ValueError, match="seed"):
        segcampaign.stream_seed(-1, "train")

    # the wiring: two runs' training, MC and selection seeds are all distinct, round by round
    used = []
    real_train, real_mc, real_bb = campaign.train, campaign.mc_log_probs, campaign.A.batchbald
    monkeypatch.setattr(campaign, "train", lambda m, X, y, e, seed: used.append(("train", seed)) or real_train(m, X, y, 2, seed))
    monkeypatch.setattr(campaign, "mc_log_probs", lambda m, X, K, seed: used.append(("mc", seed)) or real_mc(m, X, K, seed))
    monkeypatch.setattr(campaign.A, "batchbald", lambda *a, seed, **k: used.append(("select", seed)) or real_bb(*a, seed=seed, **k))
    d = campaign.load_dataset("breast_cancer")
    cfg = campaign.build_config(campaign.parse_args(ARGS))
    for seed in (0, 1):
        campaign.run_one(d, "batchbald", seed, cfg)
    for kind in ("train", "mc", "select"):
        seeds = [s for k, s in used if k == kind]
        assert len(seeds) >= 6 and len(set(seeds)) == len(seeds), (kind, seeds)


def test_auto_labelling_that_never_ran_is_said_so(tmp_path):
    """A budget below 10 % of the pool never reaches the 10 % auto-labelling: the report says it did
    not apply instead of printing an empty table ("0 of 0 certified runs")."""
    out = str(tmp_path / "small")
    campaign.main(["--dataset", "breast_cancer", "--quick", "--budget", "0.01", "--strategies", "random",
                   "--out", out])
    report = open(os.path.join(out, "report.md")).read()
    assert "at the first round with at least 10 % of the pool labelled: did not apply" in report
    assert "after the last round (target error" in report  # the final auto-labelling still runs

