"""Stand-in datasets generated on first use (no downloads): `demo` (coloured shapes), `crowded`
(crowded small nuclei), `rods` (rod-shaped cells in colonies), and the writer they share."""

from .crowded import make_crowded_dataset
from .demo import make_demo_dataset
from .rods import make_rods_dataset
from .writer import RenderedObject, Renderer, write_dataset

__all__ = ["RenderedObject", "Renderer", "make_crowded_dataset", "make_demo_dataset",
           "make_rods_dataset", "write_dataset"]
