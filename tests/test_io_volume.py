"""recon.io.volume: plain arrays and pictures read as float32 slices; unknown or bad inputs refused by name."""

import os

import numpy as np
import pytest
import skimage.io
import tifffile

from recon.io import image_format, read_images


def test_npy_images_and_stacks_become_slices(tmp_path):
    image = np.arange(20, dtype=np.int16).reshape(4, 5)
    np.save(tmp_path / "a.npy", image)
    np.save(tmp_path / "b.npy", np.stack([image, -image])[:, None])  # (N, 1, H, W)
    volume = read_images([tmp_path / "a.npy", tmp_path / "b.npy"])
    assert volume.data.dtype == np.float32 and volume.data.shape == (3, 4, 5)
    np.testing.assert_array_equal(volume.data[2], -image)
    assert volume.affine is None and len(volume.sources) == 2


def test_png_colour_is_grey_and_a_tiff_stack_gives_its_pages(tmp_path):
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 1] = 255
    skimage.io.imsave(tmp_path / "green.png", rgb, check_contrast=False)
    grey = read_images(tmp_path / "green.png").data
    assert grey.shape == (1, 6, 7) and np.allclose(grey, 0.7152, atol=1e-3)  # Rec. 709 luma of green
    pages = np.arange(3 * 6 * 7, dtype=np.uint16).reshape(3, 6, 7)  # 3 greyscale pages, not RGB
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    np.testing.assert_array_equal(read_images(tmp_path / "stack.tif").data, pages)


@pytest.mark.parametrize("pictures", [1, 2])
def test_an_rgb_tiff_in_separate_planes_is_grey_like_the_contiguous_one(tmp_path, pictures, caplog):
    """RGB in separate planes (PlanarConfiguration 2) was read as 3 grey slices, one per colour; a
    warning says how a stack of 3 slices must be written instead."""
    from skimage.color import rgb2gray

    rgb = np.random.default_rng(0).integers(0, 256, (pictures, 6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "contiguous.tif", rgb[0] if pictures == 1 else rgb, photometric="rgb")
    planes = np.moveaxis(rgb, -1, 1)  # (pictures, 3, H, W)
    tifffile.imwrite(tmp_path / "separate.tif", planes[0] if pictures == 1 else planes, photometric="rgb",
                     planarconfig="separate")
    with tifffile.TiffFile(tmp_path / "separate.tif") as tiff:
        assert tiff.pages[0].planarconfig == tifffile.PLANARCONFIG.SEPARATE
    with caplog.at_level("WARNING", logger="recon.io.volume"):
        separate = read_images(tmp_path / "separate.tif").data
    assert "photometric='minisblack'" in caplog.text and "separate.tif" in caplog.text
    assert separate.shape == (pictures, 6, 7)
    np.testing.assert_array_equal(separate, read_images(tmp_path / "contiguous.tif").data)
    np.testing.assert_allclose(separate, rgb2gray(rgb), atol=1e-6)


@pytest.mark.parametrize("n", [3, 4])
def test_a_float_stack_tagged_rgb_in_separate_planes_stays_slices(tmp_path, n):
    """tifffile's defaults tag a float (3 or 4, H, W) stack (HU, say) RGB in separate planes, as
    ``recon export`` wrote its TIFFs before 0.17.0: its slices, not a weighted sum of them."""
    pages = np.random.default_rng(2).normal(0, 500, (n, 6, 7)).astype(np.float32)
    tifffile.imwrite(tmp_path / "hu.tif", pages, photometric="rgb", planarconfig="separate")
    with tifffile.TiffFile(tmp_path / "hu.tif") as tiff:
        assert tiff.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
    np.testing.assert_array_equal(read_images(tmp_path / "hu.tif").data, pages)


def test_three_minisblack_pages_in_one_tiff_stay_three_slices(tmp_path):
    pages = np.random.default_rng(1).integers(0, 256, (3, 6, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", pages, photometric="minisblack")
    volume = read_images(tmp_path / "grey.tif")
    assert volume.data.shape == (3, 6, 7)
    np.testing.assert_array_equal(volume.data, pages)


def test_a_tiff_written_page_by_page_gives_every_page_and_mixed_pages_are_refused(tmp_path):
    """Each appended page is a series of its own; only the first was read (two slices lost unsaid)."""
    pages = np.random.default_rng(2).integers(0, 4000, (3, 16, 16), dtype=np.uint16)
    for page in pages:
        tifffile.imwrite(tmp_path / "appended.tif", page, append=True)
    np.testing.assert_array_equal(read_images(tmp_path / "appended.tif").data, pages)
    tifffile.imwrite(tmp_path / "mixed.tif", pages[0], append=True)
    tifffile.imwrite(tmp_path / "mixed.tif", np.zeros((20, 20), np.uint16), append=True)
    with pytest.raises(ValueError, match=r"mixed.tif.*2 image series of other shapes"):
        read_images(tmp_path / "mixed.tif")


def test_a_miniswhite_tiff_is_read_with_larger_values_brighter(tmp_path):
    picture = np.zeros((8, 8), np.uint8)
    picture[2:5, 2:5] = 200  # dark on a white ground, as MINISWHITE shows it
    tifffile.imwrite(tmp_path / "white.tif", picture, photometric="miniswhite")
    data = read_images(tmp_path / "white.tif").data[0]
    assert data[3, 3] == 55 and data[0, 0] == 255
    tifffile.imwrite(tmp_path / "bilevel.tif", picture > 0, photometric="miniswhite")  # 1 bit: read as bool
    bilevel = read_images(tmp_path / "bilevel.tif").data[0]
    assert bilevel[3, 3] == 0 and bilevel[0, 0] == 1


@pytest.mark.parametrize("name", ["la.png", "la.tif"])
def test_a_grey_picture_with_alpha_is_one_grey_image_not_slices_two_pixels_wide(tmp_path, name):
    """Grey + alpha comes as (H, W, 2): it was read as H slices of W x 2 pixels."""
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))
    pixels = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    if name.endswith(".png"):
        skimage.io.imsave(tmp_path / name, pixels, check_contrast=False)
    else:
        tifffile.imwrite(tmp_path / name, pixels, photometric="minisblack", extrasamples=["unassalpha"])
    volume = read_images(tmp_path / name)
    assert volume.data.shape == (1, 6, 25)
    np.testing.assert_allclose(volume.data[0], grey / 255.0, atol=1e-6)  # opaque: the grey values, in [0, 1]


@pytest.mark.parametrize("name", ["palette.png", "palette.tif"])
def test_a_palette_picture_is_read_through_its_palette_not_as_indices(tmp_path, name):
    """A palette TIFF was read as its palette indices 0, 1, 2, ... instead of the grey values they stand for."""
    from PIL import Image

    indices = np.tile(np.arange(25, dtype=np.uint8), (6, 1))
    levels = (255 - 10 * np.arange(256)).clip(0, 255).astype(np.uint8)  # index i -> grey 255 - 10 i
    picture = Image.fromarray(indices, "P")
    picture.putpalette(np.repeat(levels, 3).tolist())
    picture.save(tmp_path / name)
    volume = read_images(tmp_path / name)
    assert volume.data.shape == (1, 6, 25)
    np.testing.assert_allclose(volume.data[0], levels[indices] / 255.0, atol=1e-6)  # grey, in [0, 1] as RGB is


def test_a_colour_palette_tiff_becomes_the_grey_of_its_colours(tmp_path):
    from PIL import Image

    indices = np.array([[0, 1], [1, 0]] * 4, dtype=np.uint8).repeat(4, axis=1)
    picture = Image.fromarray(indices, "P")
    picture.putpalette([0, 0, 0, 0, 255, 0])  # index 0 black, 1 green
    picture.save(tmp_path / "green.tif")
    grey = read_images(tmp_path / "green.tif").data[0]
    np.testing.assert_allclose(grey, np.where(indices == 1, 0.7152, 0.0), atol=1e-3)  # Rec. 709 luma of green


@pytest.mark.parametrize("channels", [3, 4])
def test_an_rgb_npy_is_refused_naming_the_colour_axis_not_read_as_narrow_slices(tmp_path, channels):
    """(H, W, 3) was read as H slices of W x 3 pixels, without a word."""
    np.save(tmp_path / "photo.npy", np.random.default_rng(0).random((40, 32, channels)))
    with pytest.raises(ValueError, match=r"photo\.npy.*40 slices of 32 x \d pixels.*colour.*grey.*\(\d, H, W\)"):
        read_images(tmp_path / "photo.npy")
    # the ways the message names: grey, or the channels first as slices
    np.save(tmp_path / "grey.npy", np.zeros((40, 32)))
    np.save(tmp_path / "channels.npy", np.zeros((channels, 40, 32)))
    assert read_images(tmp_path / "grey.npy").data.shape == (1, 40, 32)
    assert read_images(tmp_path / "channels.npy").data.shape == (channels, 40, 32)


def test_small_stacks_whose_slices_are_three_or_four_wide_are_still_slices(tmp_path):
    np.save(tmp_path / "tiny.npy", np.ones((5, 6, 3)))  # too small to be taken for a picture
    assert read_images(tmp_path / "tiny.npy").data.shape == (5, 6, 3)


@pytest.mark.parametrize("name, content, match", [
    ("scan.xyz", b"data", "unknown image format '.xyz'"),
    ("noext", b"plain text", "unknown image format"),
    ("bad.npy", b"\x93NUMPY garbage", "cannot read"),
    ("text.npy", b"1 2 3\n4 5 6\n", "not a NumPy .npy file"),
    ("bad.png", b"\x89PNG broken", "cannot read"),
])
def test_unknown_formats_and_damaged_files_are_refused_by_name(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        read_images(path)
    assert name in str(info.value)


def test_a_npy_file_of_python_objects_is_refused_without_unpickling(tmp_path):
    from recon.io.measurement import read_measurement, read_vector

    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    for read in (read_images, read_measurement, lambda p: read_vector(p, "angles")):
        with pytest.raises(ValueError, match="holds Python objects") as info:
            read(path)
        assert "objects.npy" in str(info.value) and "allow_pickle" not in str(info.value)


def test_every_path_is_checked_before_any_is_read(tmp_path, monkeypatch):
    import recon.io.volume as volume

    np.save(tmp_path / "a.npy", np.zeros((4, 4)))
    monkeypatch.setattr(volume, "_read_one", lambda *a: pytest.fail("read before all paths were checked"))
    with pytest.raises(ValueError, match="missing.nii"):
        read_images([tmp_path / "a.npy", tmp_path / "missing.nii"])


@pytest.mark.parametrize("array, match", [
    (np.zeros((2, 3, 4, 5)), "got shape"),
    (np.array([[1.0, np.nan]]), "NaN"),
    (np.ones((4, 4), complex), "real numbers"),
    (np.full((4, 4), 1e39), "values up to 1e.39 do not fit the float32"),  # was "16 values are NaN or Inf"
])
def test_arrays_that_are_not_images_are_refused(tmp_path, array, match):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(ValueError, match=match):
        read_images(tmp_path / "x.npy")


def test_images_of_different_sizes_are_not_stacked(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 4)))
    np.save(tmp_path / "b.npy", np.zeros((4, 5)))
    with pytest.raises(ValueError, match="different sizes"):
        read_images([tmp_path / "a.npy", tmp_path / "b.npy"])


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        image_format(fifo)
