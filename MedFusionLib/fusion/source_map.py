"""Source map: per voxel, how much of the fused value came from each source.

Definition (one for every model, learned or not, since it needs only the two normalised inputs
``A`` (reference) and ``B`` (moving) and the output ``F``, all in [0, 1]): the share ``s`` of
``B`` is the blend weight that best explains ``F`` as ``(1 - s) A + s B`` in a small in-plane
neighbourhood, with a weak prior towards ``0.5`` where the two sources do not differ:

    s = ( G * [(F - A)(B - A)] + ε² / 2 ) / ( G * [(B - A)²] + ε² ),   clipped to [0, 1],

``G *`` a Gaussian average over the slice (σ = :data:`SOURCE_MAP_SIGMA` pixels, in the plane
the model fused, so it sees what the model saw) and ε = :data:`SOURCE_MAP_EPSILON`. This is the
least-squares solution of ``F - A ≈ s (B - A)`` over the neighbourhood plus ``ε² (s - 1/2)²``:

- ``0`` = the reference's value, ``1`` = the moving image's; the average rule gives exactly
  ``0.5`` everywhere, the maximum rule ``≈ 1`` where ``B`` is the brighter by well over ε and
  ``≈ 0`` where ``A`` is; a model that passes ``A`` through gives ``≈ 0``.
- Where ``|B - A|`` is within about ε (both sources agree, or both are background), no blend
  weight is identifiable and ``s → 0.5``: "either".
- A fused value outside ``[A, B]`` (contrast enhanced beyond both) counts as the nearer end.
- Symmetric: swapping the sources turns ``s`` into ``1 - s``.

It says which source the fused *intensity* resembles, locally; it is not a gradient attribution
(which would, for the average rule, depend on the intensities and not give 0.5). For a colour
functional fusion it is computed on the luminance the model fused (the MRI against the colour's Y).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Differences between the normalised sources below about this much (5 % of the display range,
# the pipeline's foreground threshold) carry no usable information on which source won.
SOURCE_MAP_EPSILON = 0.05
# In-plane Gaussian (pixels): enough to make the estimate stable against noise, small enough
# to keep the map as sharp as the anatomy that decides it.
SOURCE_MAP_SIGMA = 1.0

Scaling = Callable[[np.ndarray], np.ndarray]


def _gaussian_taps(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    taps = np.exp(-(offsets**2) / np.float32(2.0 * sigma**2))
    return (taps / taps.sum()).astype(np.float32)


def _smooth(stack: np.ndarray, taps: np.ndarray | None) -> np.ndarray:
    """Separable Gaussian over the last two axes of ``(N, H, W)`` float32; edges repeat the border pixels.

    As weighted sums of shifted views rather than a convolution: a one-channel 2D convolution is
    a poor fit for the convolution kernels, and the sums are several times faster on the CPU.
    """
    if taps is None:
        return stack
    radius = len(taps) // 2
    height, width = stack.shape[-2:]
    padded = np.pad(stack, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    rows = padded[:, 0:height, :] * taps[0]
    for k in range(1, len(taps)):
        rows += padded[:, k : k + height, :] * taps[k]
    padded = np.pad(rows, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    smoothed = padded[..., 0:width] * taps[0]
    for k in range(1, len(taps)):
        smoothed += padded[..., k : k + width] * taps[k]
    return smoothed


def source_share(
    a: np.ndarray,
    b: np.ndarray,
    fused: np.ndarray,
    sigma: float = SOURCE_MAP_SIGMA,
    epsilon: float = SOURCE_MAP_EPSILON,
) -> np.ndarray:
    """The share of ``b`` in ``fused``, per pixel (module docstring).

    Args:
        a, b, fused: ``(N, H, W)`` stacks of slices, or one ``(H, W)`` slice; float in [0, 1]
            (the normalised reference, the normalised moving image, the model's output).
        sigma: in-plane Gaussian in pixels (0: per pixel). epsilon: the prior's strength.

    Returns:
        float32 of the inputs' shape, in [0, 1]: 0 = from ``a``, 1 = from ``b``, 0.5 = either or both.
    """
    if not (np.shape(a) == np.shape(b) == np.shape(fused)) or np.ndim(a) not in (2, 3):
        raise ValueError(
            "expected three (N, H, W) or (H, W) arrays of one shape, "
            f"got {np.shape(a)}, {np.shape(b)}, {np.shape(fused)}"
        )
    shape = np.shape(a)

    def stack(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(-1, *shape[-2:])

    taps = _gaussian_taps(sigma) if sigma > 0 else None
    source_a = stack(a)
    difference = stack(b) - source_a
    offset = stack(fused) - source_a
    prior = np.float32(epsilon * epsilon)
    share = (_smooth(offset * difference, taps) + 0.5 * prior) / (_smooth(difference * difference, taps) + prior)
    return np.clip(share, 0.0, 1.0, out=share).reshape(shape)


def source_map_array(
    a: np.ndarray,
    b: np.ndarray,
    scale_a: Scaling,
    scale_b: Scaling,
    fused: np.ndarray,
    slice_axis: int | None,
    slab_voxels: int = 16_000_000,
) -> np.ndarray:
    """The source map of a fusion the pipeline ran: raw inputs, their scalings, the fused result.

    ``a``, ``b``: raw arrays ``[z, y, x]`` (3D, fused slice by slice along array axis
    ``slice_axis``) or ``[y, x]`` (``slice_axis`` None); ``scale_a``/``scale_b``: the same maps
    to [0, 1] the fusion used; ``fused``: float32 in [0, 1], same shape. Returns float32 in
    [0, 1] of that shape, computed in slabs of about ``slab_voxels`` (bounded memory), smoothed
    only within the fused slices' plane.
    """
    if slice_axis is None:
        return source_share(scale_a(a), scale_b(b), fused)
    stack_a, stack_b = np.moveaxis(a, slice_axis, 0), np.moveaxis(b, slice_axis, 0)
    stack_fused = np.moveaxis(fused, slice_axis, 0)
    share = np.empty(fused.shape, dtype=np.float32)
    stack_share = np.moveaxis(share, slice_axis, 0)
    step = max(1, slab_voxels // max(1, stack_a[0].size))
    for start in range(0, len(stack_a), step):
        part = slice(start, start + step)
        stack_share[part] = source_share(scale_a(stack_a[part]), scale_b(stack_b[part]), stack_fused[part])
    return share
