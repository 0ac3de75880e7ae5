"""The elastix backend: the elastix project's registration, run in-process.

Two ways in, the same parameter maps: ``itk-elastix`` (``pip install itk-elastix``, the elastix
project's own Python package), or ``sitk.ElastixImageFilter`` where SimpleITK was built with
elastix (SimpleElastix; preferred there, it needs no image conversion).

elastix composes its stages as ``T(x) = T_last(... T_first(T_initial(x)))``: each new stage acts
on points the earlier ones have already moved. Its result (parameter maps: text) is converted to
the equivalent SimpleITK transforms, exactly for Euler, affine and B-spline stages, so saving and
applying transforms is the same for both backends.
"""

from __future__ import annotations

import functools
import importlib.metadata
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import SimpleITK as sitk

from MedFusionLib.core.errors import InputError
from MedFusionLib.registration.presets import Stage, shrink_factors
from MedFusionLib.registration.transforms import affine_parts

ParameterMap = dict[str, tuple[str, ...]]
Progress = Callable[[float, str], None]

_ELASTIX_TRANSFORMS = {"rigid": "EulerTransform", "affine": "AffineTransform", "bspline": "BSplineTransform"}


def simpleitk_has_elastix() -> bool:
    """Whether this SimpleITK was built with elastix (``sitk.ElastixImageFilter``)."""
    return hasattr(sitk, "ElastixImageFilter")


def itk_elastix_installed() -> bool:
    """Whether itk-elastix is installed, without the seconds it takes to load it."""
    try:
        importlib.metadata.version("itk-elastix")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@functools.cache
def load_itk_elastix() -> ModuleType:
    """Import itk-elastix and create its first object, once per process.

    That first object loads ITK's wrapped libraries, which takes seconds (about 20 s on a
    two-core machine); every later registration skips it. Raises ImportError without itk-elastix.
    """
    import itk

    itk.ParameterObject.New()
    return itk


def register_stages(
    fixed: sitk.Image,
    moving: sitk.Image,
    stages: tuple[Stage, ...],
    start: sitk.Transform,
    centre: tuple[float, ...],
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    seed: int,
    progress: Progress | None,
) -> sitk.Transform:
    """Run ``stages`` with elastix from ``start``; returns the reference → moving transform.

    ``fixed``/``moving``: float32 3D images. ``start``: a linear transform (elastix takes only
    linear initial transforms here). ``centre``: rotation centre of the rigid stage, mm, on
    reference points (the reference foreground centre).
    """
    start_parts = affine_parts(start)
    if start_parts is None:
        raise InputError(
            "the elastix backend takes only a linear initial transform (rigid or affine); "
            "use backend='simpleitk' for a non-linear one"
        )
    initial_map = _affine_map(*start_parts, fixed)
    # The rigid stage acts on points already moved by the start transform.
    rotation_centre = start.TransformPoint(centre)
    maps = [_stage_map(fixed, moving, stage, seed, rotation_centre) for stage in stages]
    if progress is not None:
        progress(0.0, f"elastix: {' → '.join(stage.kind for stage in stages)}")
    if simpleitk_has_elastix():
        result_maps = _run_simpleitk_elastix(fixed, moving, maps, initial_map, fixed_mask, moving_mask)
    else:
        result_maps = _run_itk_elastix(fixed, moving, maps, initial_map, fixed_mask, moving_mask)
    if progress is not None:
        progress(1.0, "elastix: done")
    # The last len(stages) maps are the stages; some front ends also return the initial map.
    stage_transforms = [_to_simpleitk(result_map) for result_map in result_maps[-len(stages) :]]
    # CompositeTransform applies its last entry first: [T_last, ..., T_first, start].
    return sitk.CompositeTransform(stage_transforms[::-1] + [start])


def _values(*values: object) -> tuple[str, ...]:
    return tuple(str(value) for value in values)


def _affine_map(matrix: np.ndarray, offset: np.ndarray, fixed: sitk.Image) -> ParameterMap:
    """An elastix AffineTransform map for ``x -> matrix @ x + offset``, on the ``fixed`` grid."""
    dimension = fixed.GetDimension()
    return {
        "Transform": ("AffineTransform",),
        "NumberOfParameters": _values(dimension * (dimension + 1)),
        "TransformParameters": _values(*matrix.ravel(), *offset),
        "CenterOfRotationPoint": _values(*[0.0] * dimension),
        "InitialTransformParameterFileName": ("NoInitialTransform",),
        "HowToCombineTransforms": ("Compose",),
        "FixedImageDimension": _values(dimension),
        "MovingImageDimension": _values(dimension),
        "FixedInternalImagePixelType": ("float",),
        "MovingInternalImagePixelType": ("float",),
        "UseDirectionCosines": ("true",),
        "Size": _values(*fixed.GetSize()),
        "Index": _values(*[0] * dimension),
        "Spacing": _values(*fixed.GetSpacing()),
        "Origin": _values(*fixed.GetOrigin()),
        "Direction": _values(*fixed.GetDirection()),
        "ResampleInterpolator": ("FinalLinearInterpolator",),
        "Resampler": ("DefaultResampler",),
        "DefaultPixelValue": ("0",),
        "ResultImagePixelType": ("float",),
        "ResultImageFormat": ("nii",),
    }


def _stage_map(
    fixed: sitk.Image, moving: sitk.Image, stage: Stage, seed: int, rotation_centre: tuple[float, ...]
) -> ParameterMap:
    dimension = fixed.GetDimension()
    factors = shrink_factors(fixed, moving, stage)
    levels = len(factors)
    parameter_map: ParameterMap = {
        "FixedImageDimension": _values(dimension),
        "MovingImageDimension": _values(dimension),
        "FixedInternalImagePixelType": ("float",),
        "MovingInternalImagePixelType": ("float",),
        "UseDirectionCosines": ("true",),
        "Registration": ("MultiResolutionRegistration",),
        # Recursive pyramids shrink as well as smooth: the coarse levels are cheap to build.
        "FixedImagePyramid": ("FixedRecursiveImagePyramid",),
        "MovingImagePyramid": ("MovingRecursiveImagePyramid",),
        "NumberOfResolutions": _values(levels),
        "FixedImagePyramidSchedule": _values(*np.ravel([fixed_factors for fixed_factors, _ in factors])),
        "MovingImagePyramidSchedule": _values(*np.ravel([moving_factors for _, moving_factors in factors])),
        "Metric": ("AdvancedMattesMutualInformation",),
        "NumberOfHistogramBins": _values(stage.bins),
        "Interpolator": ("LinearInterpolator",),
        "Optimizer": ("AdaptiveStochasticGradientDescent",),
        "AutomaticParameterEstimation": ("true",),
        "ASGDParameterEstimationMethod": ("DisplacementDistribution",),
        "MaximumNumberOfIterations": _values(stage.iterations),
        "ImageSampler": ("RandomCoordinate",),
        "NumberOfSpatialSamples": _values(stage.samples_per_iteration),
        "NewSamplesEveryIteration": ("true",),
        "CheckNumberOfSamples": ("true",),
        "MaximumNumberOfSamplingAttempts": ("8",),
        "RandomSeed": _values(seed),
        "ErodeMask": ("false",),
        "AutomaticTransformInitialization": ("false",),
        "HowToCombineTransforms": ("Compose",),
        "Transform": (_ELASTIX_TRANSFORMS[stage.kind],),
        "ResampleInterpolator": ("FinalLinearInterpolator",),
        "Resampler": ("DefaultResampler",),
        "WriteResultImage": ("false",),
        "DefaultPixelValue": ("0",),
        "ResultImagePixelType": ("float",),
        "ResultImageFormat": ("nii",),
    }
    if stage.kind == "bspline":
        parameter_map["FinalGridSpacingInPhysicalUnits"] = _values(stage.grid_spacing_mm)
        parameter_map["GridSpacingSchedule"] = _values(*[2 ** (levels - 1 - level) for level in range(levels)])
        parameter_map["BSplineTransformSplineOrder"] = ("3",)
    else:
        parameter_map["AutomaticScalesEstimation"] = ("true",)
        parameter_map["CenterOfRotationPoint"] = _values(*rotation_centre)
    return parameter_map


def _to_itk(image: sitk.Image, pixel_type: int) -> object:
    """A copy of ``image`` as an itk.Image, geometry included."""
    itk = load_itk_elastix()
    converted = itk.GetImageFromArray(sitk.GetArrayFromImage(sitk.Cast(image, pixel_type)))
    converted.SetOrigin(image.GetOrigin())
    converted.SetSpacing(image.GetSpacing())
    dimension = image.GetDimension()
    converted.SetDirection(itk.matrix_from_array(np.asarray(image.GetDirection()).reshape(dimension, dimension)))
    return converted


def _run_itk_elastix(
    fixed: sitk.Image,
    moving: sitk.Image,
    maps: list[ParameterMap],
    initial_map: ParameterMap,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
) -> list[ParameterMap]:
    itk = load_itk_elastix()
    parameters = itk.ParameterObject.New()
    for parameter_map in maps:
        parameters.AddParameterMap(parameter_map)
    initial = itk.ParameterObject.New()
    initial.AddParameterMap(initial_map)
    method = itk.ElastixRegistrationMethod.New(_to_itk(fixed, sitk.sitkFloat32), _to_itk(moving, sitk.sitkFloat32))
    method.SetParameterObject(parameters)
    method.SetInitialTransformParameterObject(initial)
    if fixed_mask is not None:
        method.SetFixedMask(_to_itk(fixed_mask > 0, sitk.sitkUInt8))
    if moving_mask is not None:
        method.SetMovingMask(_to_itk(moving_mask > 0, sitk.sitkUInt8))
    method.SetLogToConsole(False)
    method.UpdateLargestPossibleRegion()
    result = method.GetTransformParameterObject()
    return [dict(result.GetParameterMap(index)) for index in range(result.GetNumberOfParameterMaps())]


def _run_simpleitk_elastix(
    fixed: sitk.Image,
    moving: sitk.Image,
    maps: list[ParameterMap],
    initial_map: ParameterMap,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
) -> list[ParameterMap]:
    elastix = sitk.ElastixImageFilter()
    elastix.LogToConsoleOff()
    elastix.SetFixedImage(fixed)
    elastix.SetMovingImage(moving)
    if fixed_mask is not None:
        elastix.SetFixedMask(sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
    if moving_mask is not None:
        elastix.SetMovingMask(sitk.Cast(moving_mask > 0, sitk.sitkUInt8))
    elastix.SetParameterMap([dict(parameter_map) for parameter_map in maps])
    # This front end reads initial transforms only from a parameter file.
    with tempfile.TemporaryDirectory(prefix="medfusion-elastix-") as folder:
        initial_file = str(Path(folder) / "initial.txt")
        sitk.WriteParameterFile(initial_map, initial_file)
        elastix.SetInitialTransformParameterFileName(initial_file)
        elastix.SetOutputDirectory(folder)
        elastix.Execute()
        return [dict(result_map) for result_map in elastix.GetTransformParameterMap()]


def _numbers(parameter_map: ParameterMap, key: str) -> list[float]:
    return [float(value) for value in parameter_map[key]]


def _to_simpleitk(parameter_map: ParameterMap) -> sitk.Transform:
    """The SimpleITK transform equal to one elastix stage (Euler, affine or B-spline)."""
    kind = parameter_map["Transform"][0]
    parameters = _numbers(parameter_map, "TransformParameters")
    if kind == "EulerTransform":
        transform: sitk.Transform = sitk.Euler3DTransform()
        transform.SetCenter(_numbers(parameter_map, "CenterOfRotationPoint"))
        transform.SetComputeZYX(parameter_map.get("ComputeZYX", ("false",))[0] == "true")
        transform.SetParameters(parameters)
        return transform
    if kind == "AffineTransform":
        transform = sitk.AffineTransform(len(_numbers(parameter_map, "CenterOfRotationPoint")))
        transform.SetCenter(_numbers(parameter_map, "CenterOfRotationPoint"))
        transform.SetParameters(parameters)
        return transform
    if kind == "BSplineTransform":
        grid_size = _numbers(parameter_map, "GridSize")
        order = int(parameter_map.get("BSplineTransformSplineOrder", ("3",))[0])
        spacing = np.asarray(_numbers(parameter_map, "GridSpacing"))
        direction = np.asarray(_numbers(parameter_map, "GridDirection")).reshape(len(grid_size), len(grid_size))
        # ITK's fixed parameters are elastix's grid (size, origin, spacing, direction), with the
        # origin moved to the first control point where elastix's grid index does not start at 0.
        index = np.asarray(_numbers(parameter_map, "GridIndex"))
        origin = np.asarray(_numbers(parameter_map, "GridOrigin")) + direction @ (index * spacing)
        transform = sitk.BSplineTransform(len(grid_size), order)
        transform.SetFixedParameters(grid_size + [*origin] + [*spacing] + [*direction.ravel()])
        transform.SetParameters(parameters)
        return transform
    raise ValueError(f"elastix returned a {kind}, which MedFusion does not request")  # a bug, not a user error
