"""The options the panel, the console logic and the headless script offer, importable without
torch, VTK or Slicer.

They equal MedFusionLib's own lists (``pipeline.REGISTRATION_CHOICES``, ``registration.BACKENDS``,
``devices.DEVICE_CHOICES``, ``geometry.SLICING_AXES``; Testing/test_slicer_module_files.py checks
it) but are spelled out here because some of those modules import torch, which may not be
installed yet when Slicer loads the module.
"""

REGISTRATION_CHOICES = ("none", "rigid", "affine", "bspline")
BACKEND_CHOICES = ("auto", "elastix", "simpleitk")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
AXIS_CHOICES = ("axial", "coronal", "sagittal")
