#!/usr/bin/env python3
"""Weights and outputs of the segmentation heads, both ways between Python and C++ (ctest drives it,
see tests/CMakeLists.txt; the C++ half is tests/cpp/heads_roundtrip.cpp):

    heads_roundtrip.py write DIR   random heads -> DIR/py_<name>.pt (labelwise.torch.save_head_weights),
                                   their outputs on fixed inputs -> DIR/py_outputs.pt
    heads_roundtrip.py check DIR   loads the C++ heads DIR/cpp_<name>.pt (labelwise.torch.load_head_weights)
                                   and checks Python's outputs against DIR/cpp_outputs.pt

Exit status 0 on success, 1 on a mismatch, 77 (ctest: skipped) when torch or labelwise cannot be
imported.
"""

from __future__ import annotations

import os
import sys

try:
    import torch

    import labelwise.torch as lt
except ImportError as exc:  # pragma: no cover - environment without torch / the built extension
    print(f"skipped: {exc}")
    sys.exit(77)

METRICS = ("predictive_entropy", "expected_entropy", "bald", "least_confidence", "margin", "ratio",
           "variation_ratio", "max_mean_variation_ratio", "mean_std", "balentacq")
EV_METRICS = tuple(m for m in METRICS if m != "variation_ratio")
K = 16
SEED = 0x1234567890ABCDEF


def make_heads():
    return {
        "mc2": lt.MCDropoutHead(6, 4, p=0.3, dims=2),
        "mc3": lt.MCDropoutHead(6, 4, p=0.6, dims=3),
        "en2": lt.EnsembleHead(6, 4, members=3, dims=2),
        "ev2": lt.EvidentialHead(6, 4, dims=2),
        "ev3": lt.EvidentialHead(6, 4, dims=3),
    }


@torch.no_grad()
def outputs(h, x2, x3):
    """The outputs that heads_roundtrip.cpp's outputs() computes, under the same names."""
    out = {"x2": x2, "x3": x3}
    for m in h.values():
        m.eval()

    def put(name, maps):
        for k, v in maps.items():
            out[f"{name}.{'mean' if k == 'mean' else 'score.' + k}"] = v

    out["mc2.forward"] = h["mc2"](x2)
    out["mc2.sample"] = h["mc2"].sample(x2, K, SEED)
    put("mc2", h["mc2"].score(x2, K, METRICS, SEED, return_mean=True))
    out["mc3.forward"] = h["mc3"](x3)
    out["mc3.sample"] = h["mc3"].sample(x3, K, SEED + 1, index_offset=5)
    put("mc3", h["mc3"].score(x3, K, METRICS, SEED + 1, return_mean=True, index_offset=5))
    out["en2.forward"] = h["en2"](x2)
    out["en2.forward_members"] = h["en2"].forward_members(x2)
    out["en2.sample"] = h["en2"].sample(x2)
    put("en2", h["en2"].score(x2, None, METRICS, 0, return_mean=True))
    for name, x in (("ev2", x2), ("ev3", x3)):
        e = h[name]
        out[f"{name}.forward"] = e(x)
        out[f"{name}.concentrations"] = e.concentrations(x)
        put(name, e.score(x, None, EV_METRICS, return_mean=True))
        for k, v in e.uncertainty(x).items():
            out[f"{name}.uncertainty.{k}"] = v
    return out


def tolerance(key):
    # see heads_roundtrip.cpp: the samples are bit-identical by construction (the same kernel, exactly
    # rounded arithmetic); the maps within a few float32 ulps; forward is each torch version's own float32
    # convolution.
    if ".forward" in key or ".concentrations" in key:
        return 1e-5
    return 0.0 if key.endswith(".sample") else 2e-6


def compare(mine, theirs, what):
    bad = exact = 0
    close = []
    for key in theirs:
        if key not in mine:
            print(f"  MISSING here, present in {what}: {key}")
            bad += 1
    for key, a in mine.items():
        if key in ("x2", "x3"):
            continue
        if key not in theirs:
            print(f"  MISSING in {what}: {key}")
            bad += 1
            continue
        x, y = a.double(), theirs[key].double()
        if x.shape != y.shape:
            print(f"  SHAPE {key}: {tuple(x.shape)} vs {tuple(y.shape)}")
            bad += 1
            continue
        fx, fy = torch.isfinite(x), torch.isfinite(y)
        same_nonfinite = bool(torch.equal(fx, fy)) and bool(torch.equal(x[~fx], y[~fy]))
        err = float(((x[fx] - y[fx]).abs() / (1 + y[fx].abs())).max()) if bool(fx.any()) else 0.0
        if not same_nonfinite or err > tolerance(key):
            print(f"  DIFF {key}: max relative difference {err:.3g} (tolerance {tolerance(key):g})"
                  + ("" if same_nonfinite else ", non-finite values differ"))
            bad += 1
        elif err == 0.0:
            exact += 1
        else:
            close.append(f"{key} ({err:.3g})")
    print(f"{what} (labelwise from {os.path.dirname(lt.__file__)}): {len(mine) - 2} outputs compared, {exact} bit-identical, {bad} mismatches")
    if close:
        print("  within tolerance, not bit-identical: " + ", ".join(close))
    return bad


def main(argv):
    if len(argv) != 3 or argv[1] not in ("write", "check"):
        print(__doc__)
        return 2
    mode, d = argv[1], argv[2]
    torch.set_num_threads(1)
    if mode == "write":
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):  # no stale files from an earlier run
            if f.endswith(".pt"):
                os.remove(os.path.join(d, f))
        torch.manual_seed(1128)
        h = make_heads()
        with torch.no_grad():
            for m in h.values():  # non-zero biases, so that a transposed or dropped bias shows
                for p in m.parameters():
                    p.normal_(0.0, 0.7)
        for name, m in h.items():
            lt.save_head_weights(m, os.path.join(d, f"py_{name}.pt"))
        torch.save(h["mc2"].state_dict(), os.path.join(d, "py_mc2_ordereddict.pt"))  # the raw OrderedDict
        x2 = torch.randn(2, 6, 5, 7)
        x3 = torch.randn(1, 6, 3, 4, 5)
        torch.save(outputs(h, x2, x3), os.path.join(d, "py_outputs.pt"))
        print(f"wrote {len(h)} heads and their outputs to {d}")
        return 0
    h = make_heads()
    for name, m in h.items():
        lt.load_head_weights(m, os.path.join(d, f"cpp_{name}.pt"))
    theirs = torch.load(os.path.join(d, "cpp_outputs.pt"))  # plain torch.load (weights_only=True by default)
    bad = compare(outputs(h, theirs["x2"], theirs["x3"]), theirs, "Python heads with C++'s weights vs C++'s outputs")
    # a wrong head shape is refused by torch, naming the key
    try:
        lt.load_head_weights(lt.MCDropoutHead(6, 5, dims=2), os.path.join(d, "cpp_mc2.pt"))
        print("  a 5-class head accepted 4-class weights")
        bad += 1
    except RuntimeError as exc:
        if "conv.weight" not in str(exc):
            print(f"  unclear error: {exc}")
            bad += 1
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
