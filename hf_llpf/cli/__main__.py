"""``python -m hf_llpf.cli``: the ``hf-llpf`` command (also under ``accelerate launch`` / ``torchrun``)."""

import sys

from hf_llpf.cli import main

sys.exit(main())
