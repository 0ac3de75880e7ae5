"""MedFusionLib: multimodal medical image fusion, without Slicer.

The main entry point is :func:`MedFusionLib.fusion.pipeline.fuse_volumes`; the model registry lives in
:mod:`MedFusionLib.models`, file I/O in :mod:`MedFusionLib.io`.
"""

__version__ = "0.1.0"
