# Two commands on a fresh clone: `make demo` and `make test`. Each builds .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# editable_mode=compat keeps conf/ and experiments/ (repo root) next to the imported package
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ssl-bench demo

# ruff: pyflakes, pycodestyle and import order (configured in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check ssl_bench tests bench

test: lint
	# the real-vs-fake page is tested in Debian's Chromium (installed here when missing)
	bash tests/browser_setup.sh
	$(PY) -m pytest -q

# every bench/ script, one table of ratios (logs and JSON in outputs/bench/)
bench: $(STAMP)
	$(PY) bench/run_all.py

bench-quick: $(STAMP)
	$(PY) bench/run_all.py --quick

clean:
	rm -rf $(VENV) outputs multirun .cache
