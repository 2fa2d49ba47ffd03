"""Where the work runs: the Accelerator of a run (:mod:`~hf_llpf.devices.accelerator`) and one process's own view
of it for repeats (:mod:`~hf_llpf.devices.process_local`)."""
