"""Region-of-interest pooling: RoI Pool (Fast R-CNN), RoI Align (Mask R-CNN) and the pyramid.

Each function cuts a fixed ``h x w`` grid of features out of a feature map for every region of
interest (RoI), so that boxes of any size can feed the same detection head:

* :mod:`detlib.roi.pool`: :func:`roi_pool`, the maximum of each bin;
* :mod:`detlib.roi.align`: :func:`roi_align`, bilinearly interpolated samples averaged per bin;
* :mod:`detlib.roi.multiscale`: :func:`assign_fpn_levels` and :func:`multiscale_roi_align`, RoI
  Align on a feature pyramid, each RoI from the level that suits its size.

RoIs are ``(batch_index, x1, y1, x2, y2)`` rows in input-image pixels, or a list with one
``Tensor[L, 4]`` of ``(x1, y1, x2, y2)`` boxes per image; ``spatial_scale`` maps them onto the
feature map. RoIs are constants: gradients flow to ``input`` only. Results are on the device of
``input``.
"""

from detlib.roi.align import roi_align
from detlib.roi.multiscale import assign_fpn_levels, multiscale_roi_align
from detlib.roi.pool import roi_pool

__all__ = ["assign_fpn_levels", "multiscale_roi_align", "roi_align", "roi_pool"]
