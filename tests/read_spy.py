"""A stand-in for ``safetensors.safe_open`` that records what each call reads, for the tests of the routes that must
read a point or an endpoint by rows only (the sharded connect, the sharded evaluation)."""

from __future__ import annotations


class ReadSpy:
    """Stands in for ``safetensors.safe_open`` and records each read in ``reads`` as ``[file, name, kind, start,
    stop]``: ``get_tensor`` or a slice taken other than by rows is ``"whole"``, ``get_slice(name)[start:stop]`` is
    ``"rows"``. (A module imported while it stands in may keep it: it reads on, recording into a list nobody looks at
    any more.)"""

    def __init__(self, real):
        self.real, self.reads = real, []

    def __call__(self, file, *args, **kwargs):
        spy, handle = self, self.real(file, *args, **kwargs)

        class Slice:
            def __init__(self, name):
                self.name, self.inner = name, handle.get_slice(name)

            def __getattr__(self, attr):  # get_shape, get_dtype: the header only
                return getattr(self.inner, attr)

            def __getitem__(self, rows):  # a slice of rows, or anything else (``...``: all of it)
                if isinstance(rows, slice):
                    spy.reads.append([str(file), self.name, "rows", rows.start or 0, rows.stop])
                else:
                    spy.reads.append([str(file), self.name, "whole", None, None])
                return self.inner[rows]

        class Handle:
            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return handle.keys()

            def get_slice(self, name):
                return Slice(name)

            def get_tensor(self, name):
                spy.reads.append([str(file), name, "whole", None, None])
                return handle.get_tensor(name)

        return Handle()
