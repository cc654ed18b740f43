"""One reader module per data source; each returns an :class:`episodes.ImageSet`."""
