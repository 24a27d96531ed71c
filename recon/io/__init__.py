"""A user's own images in and out: DICOM, NIfTI, PNG/TIFF and ``.npy`` read as slices; results written
as NIfTI or a DICOM series; a study simulated from images in the batch's native layout.

Importing this package is light: pydicom, nibabel and scikit-image load inside the functions that
need them.
"""

from recon.io.dicom import read_dicom, write_dicom_series
from recon.io.nifti import read_nifti, write_nifti
from recon.io.volume import FORMATS, Volume, image_format, read_images

__all__ = ["FORMATS", "Volume", "image_format", "read_images", "read_dicom", "read_nifti", "write_dicom_series",
           "write_nifti"]
