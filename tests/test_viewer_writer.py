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
    with pytest.raises(ValueError, match="exists"):
        write_nifti_layer(path, data, {"scale": (1, 1, 1)})  # never replaced silently
    with pytest.raises(ValueError, match="RGB"):
        write_nifti_layer(str(tmp_path / "rgb.nii"), np.zeros((8, 8, 3)), {"rgb": True})


def test_napari_saves_through_the_plugin(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((10, 12), dtype=np.float32), name="std", scale=(0.5, 0.25))
    path = tmp_path / "std.nii"
    written = viewer.layers.save(str(path), plugin="diffrecon")
    assert [str(p) for p in written] == [str(path)] and path.is_file()
