"""honed keeps a local language model learning.

Heavy libraries (torch, transformers, peft) are imported lazily by the modules that
need them, so ``honed --help`` and ``honed status`` start quickly.
"""

__version__ = "0.1.0"
