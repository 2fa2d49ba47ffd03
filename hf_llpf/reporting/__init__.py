"""What a run shows: the plots, the evaluation report, the trackers and the log handler.

- :mod:`~hf_llpf.reporting.plots`: ``loss.png``, ``accuracy.png``, ``distance.png`` ... of an evaluated path;
- :mod:`~hf_llpf.reporting.layer_plots`: ``layers.png`` and the one figure writer;
- :mod:`~hf_llpf.reporting.report`: the report section of ``RUN_DIR/README.md`` and the path's verdict;
- :mod:`~hf_llpf.reporting.tracking`: experiment trackers (``report_to``);
- :mod:`~hf_llpf.reporting.logging`: the ``hf_llpf`` logger's handler (:func:`~hf_llpf.reporting.logging.configure`).
"""
