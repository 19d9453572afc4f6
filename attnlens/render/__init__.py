"""Rendering: heat-map overlays, token highlighting, comparison grids, linked interactive views.

Rendering never calls a model: it takes arrays, :class:`~attnlens.attention_map.AttentionMap`
objects and :class:`~attnlens.types.Regions`. Region weights become pixels through the same
code as the metrics (:func:`attnlens.geometry.regions_to_pixels`). Images are RGB; inputs are
never modified; an array in gives an array out and a PIL image in gives a PIL image out.

* :func:`overlay` - a heat map blended over an image, with ground-truth and top-k boxes.
* :func:`tokens` - words highlighted by scores (HTML and a matplotlib strip).
* :func:`grid` - small multiples (rows: alignment functions / layers / heads, columns: words).
* :func:`interactive` - a plotly view linking words and regions, saved as offline HTML.
* :func:`word_panels` - one panel per word of a whole caption on one scale.
* :func:`map_view` - a notebook view (click a word, switch layer/head/alternative), no server.
* :func:`save` - PNG/SVG/PDF for static figures, HTML for interactive ones (atomic writes);
  :func:`export` - a figure for a paper: width in inches, fonts embedded.

Heat is drawn with an opacity that follows it (zero heat shows the bare image pixel), a colour
bar with numbers on request, nearest-neighbour upsampling of patch grids, and signed maps on a
diverging scale centred at 0 (``norm="symmetric"``, the default when a map has negative values).

Note: the functions ``overlay``, ``tokens``, ``grid`` and ``interactive`` share their names with
the modules that define them; ``attnlens.render.overlay`` is the function. Import module
internals with ``from attnlens.render.overlay import as_rgb``.
"""
from .export import atomic_write, export, paper_width, save, save_figure, save_image
from .heatmap import colorize, colormap_lut, limits, normalize, resize_map, signed_lut, to_pixels
from .overlay import as_rgb, colorbar_strip, draw_boxes, overlay_regions
from .overlay import overlay  # noqa: E402  (binds the name to the function, not the module)
from .tokens import TokenStrip
from .tokens import tokens  # noqa: E402
from .grid import grid_limits, grid_maps, word_panels
from .grid import grid  # noqa: E402
from .interactive import InteractiveView, save_html
from .interactive import interactive  # noqa: E402
from .notebook import MapView, map_view

__all__ = ["overlay", "overlay_regions", "tokens", "TokenStrip", "grid", "grid_limits", "grid_maps", "word_panels",
           "interactive", "InteractiveView", "save_html", "save", "save_figure", "save_image", "atomic_write",
           "export", "paper_width", "as_rgb", "draw_boxes", "colorbar_strip", "colorize", "colormap_lut",
           "signed_lut", "limits", "normalize", "resize_map", "to_pixels", "map_view", "MapView"]
