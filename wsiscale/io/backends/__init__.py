"""Reader backends: cuCIM, OpenSlide, tiffslide (each imported lazily)."""
