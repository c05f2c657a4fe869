"""``python -m flops_fit`` (and ``accelerate launch -m flops_fit run SPEC``)."""

from .cli import main

main()
