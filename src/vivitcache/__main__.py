"""`python -m vivitcache ...` (what `torchrun -m vivitcache train ...` runs)."""

from vivitcache.cli import main

main()
