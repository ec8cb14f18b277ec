"""Raw data: folder layouts, the built-in synthetic sample and importers."""
