"""vivitcache: run the frozen spatial ViT once, train the ViViT temporal stage on cached tokens."""

__version__ = "0.1.0"
