# Two commands do everything on a fresh machine:
#   make demo   installs into .venv and runs the main job (train AN on the bundled digits data)
#   make test   installs into .venv and runs the linter and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[test]"
	# compile the AN layers' CPU inference kernel now, not in the middle of a run
	$(BIN)/python -c "from attentive_norm.layers.native import native_status as s; print('AN inference route:', s())"
	touch $@

demo: install
	$(BIN)/attentive-norm train

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
