"""``python -m flops_fit`` (and ``accelerate launch -m flops_fit run SPEC``)."""

from .entry import main

main()
