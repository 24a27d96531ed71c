"""Shared test settings: CUDA tests skip with a reason where there is no GPU."""

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is an install error caught elsewhere
        return False


HAS_CUDA = _has_cuda()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


@pytest.fixture
def scored_estimates(monkeypatch):
    """Every estimate self-validation scores on held-out data (``Split.misfit``'s ``x``), in order."""
    from recon.methods.holdout import Split

    seen = []
    original = Split.misfit

    def recording(self, physics, x, y):
        seen.append(x.detach().clone())
        return original(self, physics, x, y)

    monkeypatch.setattr(Split, "misfit", recording)
    return seen


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op torch thread for a module of tiny tensors: on a busy 2-core machine the thread
    pool makes a 16x16 FFT or a small network call 20-1000x slower. Restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_dicom_slices(folder, values, spacing=(2.5, 0.8, 0.7), origin=(-40.0, -30.0, 12.0), modality="CT",
                       slope=1.0, intercept=-1024.0, order=None, series_uid=None, study_uid=None, thickness=None):
    """A synthetic single-frame DICOM series of ``values`` (N, H, W, in HU for CT), written with pydicom:
    axial slices at ``origin + k * spacing[0]`` along z, files in ``order`` (default: reversed, so a
    reader must sort); ``thickness`` (default: the spacing) may differ from the spacing, as in overlapping
    reconstructions. Returns the paths in slice order. The tests build their own files only."""
    import os

    import numpy as np
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    values = np.asarray(values, dtype=np.float64)
    series_uid, study_uid = series_uid or generate_uid(), study_uid or generate_uid()
    os.makedirs(folder, exist_ok=True)
    order = list(range(len(values)))[::-1] if order is None else order
    paths = [None] * len(values)
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.Modality = "Test^Phantom", "P001", modality
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, "1.2.3.4"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0] if thickness is None else thickness
        ds.Rows, ds.Columns = values.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.round((values[k] - intercept) / slope).astype(np.int16).tobytes()
        paths[k] = os.path.join(folder, f"file{file_index:03d}.dcm")
        pydicom.dcmwrite(paths[k], ds, enforce_file_format=True)
    return paths
