"""The napari writer: an image layer saved as NIfTI reopens with its values and voxel size."""

import numpy as np
import pytest

from recon.viewer.writer import write_nifti_layer


def test_a_layer_round_trips_through_nifti_with_its_scale(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    data = np.random.default_rng(0).random((3, 16, 12)).astype(np.float32)
    path = str(tmp_path / "mean.nii.gz")
    assert write_nifti_layer(path, data, {"scale": (2.5, 0.8, 0.7)}) == [path]
    image = nibabel.load(path)
    assert np.allclose(image.header.get_zooms(), (0.7, 0.8, 2.5))
    assert np.array_equal(np.transpose(np.asarray(image.dataobj), (2, 1, 0)), data)
    with pytest.raises(FileExistsError, match="exists"):  # napari swallows a writer's ValueError
        write_nifti_layer(path, data, {"scale": (1, 1, 1)})  # never replaced silently
    with pytest.raises(TypeError, match="RGB"):
        write_nifti_layer(str(tmp_path / "rgb.nii"), np.zeros((8, 8, 3)), {"rgb": True})


def test_a_layers_translate_is_the_origin_and_a_rotated_layer_is_refused(tmp_path):
    """The translate was dropped (origin 0) and a rotation written as if there were none."""
    nibabel = pytest.importorskip("nibabel")
    data = np.zeros((3, 8, 6), np.float32)
    path = write_nifti_layer(str(tmp_path / "t.nii"), data, {"scale": (2.0, 1.0, 0.5), "translate": (10, 20, 30)})[0]
    np.testing.assert_allclose(nibabel.load(path).affine[:3, 3], (30, 20, 10))  # (column, row, slice) order
    turned = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    with pytest.raises(TypeError, match="rotated"):
        write_nifti_layer(str(tmp_path / "r.nii"), data, {"rotate": turned})
    assert not (tmp_path / "r.nii").exists()
    write_nifti_layer(str(tmp_path / "i.nii"), data, {"rotate": np.eye(3), "shear": np.zeros(3), "affine": np.eye(4)})


def test_napari_saves_through_the_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((10, 12), dtype=np.float32), name="std", scale=(0.5, 0.25))
    path = tmp_path / "std.nii"
    written = viewer.layers.save(str(path), plugin="diffrecon")
    assert [str(p) for p in written] == [str(path)] and path.is_file()


def test_napari_shows_why_the_plugin_refuses_an_existing_file(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((10, 12), dtype=np.float32), name="std")
    path = tmp_path / "std.nii"
    path.write_text("a user's file")
    with pytest.raises(FileExistsError, match="not replaced"):
        viewer.layers.save(str(path), plugin="diffrecon")
    assert path.read_text() == "a user's file"
