"""Volume loading and the bundled Colin27 / AAL MRI."""

import os

import numpy as np
import pytest

from labelwise import data

HAVE_MRI = os.path.exists(os.path.join(data.MRICRON_TEMPLATES, "ch2.nii.gz"))


def test_numpy_volumes_and_errors(tmp_path):
    v = np.random.rand(4, 5, 6).astype(np.float32)
    np.save(tmp_path / "v.npy", v)
    np.savez(tmp_path / "two.npz", a=v, b=v[0])
    assert np.array_equal(data.load_volume(str(tmp_path / "v.npy")).data, v)
    assert np.array_equal(data.load_volume(str(tmp_path / "two.npz"), key="b").data, v[0])
    with pytest.raises(ValueError, match="pass key="):
        data.load_volume(str(tmp_path / "two.npz"))
    with pytest.raises(ValueError, match="no array 'c'"):
        data.load_volume(str(tmp_path / "two.npz"), key="c")
    with pytest.raises(FileNotFoundError):
        data.load_volume(str(tmp_path / "missing.nii.gz"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unsupported file type"):
        data.load_volume(str(tmp_path / "x.txt"))
    with pytest.raises(TypeError, match="templates: expected a folder path"):
        data.class_names(False)  # the templates folder comes first; lobes is keyword-only
    with pytest.raises(TypeError, match="templates: expected a folder path"):
        data.colin27(3)
    with pytest.raises(ValueError, match="key='b' applies to .npz archives only"):
        data.load_volume(str(tmp_path / "v.npy"), key="b")


def test_nifti_round_trip(tmp_path):
    nib = pytest.importorskip("nibabel")
    v = (np.random.rand(7, 8, 9) * 100).astype(np.float32)
    aff = np.diag([0.5, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(v, aff), str(tmp_path / "v.nii.gz"))
    got = data.load_volume(str(tmp_path / "v.nii.gz"))
    assert np.allclose(got.data, v) and np.allclose(got.affine, aff)
    assert got.spacing == pytest.approx((0.5, 0.7, 2.0))


@pytest.mark.skipif(not HAVE_MRI, reason="Debian's mricron-data is not installed")
def test_colin27_with_aal_lobes():
    pytest.importorskip("nibabel")
    t1, lab = data.colin27()
    assert t1.data.shape == lab.data.shape == (181, 217, 181)
    assert t1.data.dtype == np.float32 and lab.data.dtype == np.uint8
    present = np.unique(lab.data)
    assert set(present.tolist()) == set(range(len(data.AAL_LOBES)))  # every lobe class occurs
    # Anatomy sanity: brain voxels are brighter on average than background in the T1.
    assert t1.data[lab.data > 0].mean() > 2 * t1.data[lab.data == 0].mean()
    # The cerebellum sits below (smaller z) the frontal lobe in this RAS-oriented template.
    z = np.arange(181)
    cz = (z * (lab.data == 8).sum(axis=(0, 1))).sum() / (lab.data == 8).sum()
    fz = (z * (lab.data == 1).sum(axis=(0, 1))).sum() / (lab.data == 1).sum()
    assert cz < fz
    _, regions = data.colin27(lobes=False)
    assert len(np.unique(regions.data)) == 117 and len(data.class_names(lobes=False)) == 117
    with pytest.raises(TypeError, match="lobes: expected True or False"):
        data.class_names(lobes="no")


def test_loader_arguments(tmp_path):
    """Paths may be os.PathLike; bad types, float or unknown AAL labels and non-flag lobes are named."""
    import pathlib

    v = np.arange(12.0).reshape(3, 4)
    np.save(tmp_path / "v.npy", v)
    vol = data.load_volume(pathlib.Path(tmp_path / "v.npy"))
    assert np.array_equal(vol.data, v) and vol.spacing == (1.0, 1.0)  # one spacing per axis
    with pytest.raises(TypeError, match="load_volume: path must be a str or os.PathLike"):
        data.load_volume(5)
    with pytest.raises(TypeError, match="load_volume: path must be"):
        data.load_volume(None)
    if not os.path.exists(os.path.join(data.MRICRON_TEMPLATES, "aal.nii.txt")):
        pytest.skip("mricron-data is not installed")
    with pytest.raises(TypeError, match="AAL labels must be integers"):
        data.aal_lobes(np.array([1.7, 2.2]))
    with pytest.raises(ValueError, match="not AAL regions"):
        data.aal_lobes(np.array([1, 117, 200]))
    assert data.aal_lobes(np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(TypeError, match="lobes: expected True or False"):
        data.colin27(lobes="no")


def test_make_output_folder(tmp_path):
    target = tmp_path / "a" / "b"
    data.make_output_folder(target)  # parents made, the probe removed
    assert target.is_dir() and list(target.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        data.make_output_folder(tmp_path / "file")
    with pytest.raises(OSError, match="cannot be written"):
        data.make_output_folder(tmp_path / "file" / "sub")
    # the probe is a file of its own: a user's file of any name survives
    (target / ".write-test").write_text("precious")
    data.make_output_folder(target)
    assert sorted(p.name for p in target.iterdir()) == [".write-test"]
    assert (target / ".write-test").read_text() == "precious"
    with pytest.raises(OSError, match="the output folder path is empty"):
        data.make_output_folder("")
    data.make_output_folder(os.fsencode(tmp_path / "bytes"))  # a bytes path, as os.fspath allows
    assert (tmp_path / "bytes").is_dir()
    assert "make_output_folder_or_exit" in data.__all__


def test_make_output_folder_or_exit_ends_through_the_parser(tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser(prog="tool")
    data.make_output_folder_or_exit(parser, tmp_path / "ok")
    assert (tmp_path / "ok").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        data.make_output_folder_or_exit(parser, tmp_path / "file")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "tool: error: --out " in err and "exists and is not a folder" in err
