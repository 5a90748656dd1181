# labkit: the two commands of the Quick start (`make lab`, `make test`) and the instructor's tools.
# Everything runs from the repository's own virtual environment, created on first use.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PORT    ?= 8888
STUDENT_DIR ?= my-labs
VERSION := $(shell sed -n 's/^version *= *//p' settings.ini)
STAMP   := $(VENV)/.labkit-installed

.PHONY: help setup lab instructor test test-student-copies check export docs docs-instructor readme student images clean

help:
	@echo "make lab      set up .venv, add the missing student copies to $(STUDENT_DIR)/ (your work there is never overwritten)"
	@echo "              and start JupyterLab on it (token authentication; the URL with the token is printed)"
	@echo "make instructor  JupyterLab on nbs/, the instructor's notebooks with the solutions"
	@echo "make test     set up .venv, run the tests and execute every notebook with nbval (fast mode)"
	@echo "make check    labkit/ is what nbdev_export makes of nbs/, and the notebooks are clean"
	@echo "make docs     build the student docs site (_docs/, no solutions) and README.md; make docs-instructor: _docs_instructor/"
	@echo "make student  student copies in _student/, to hand out"
	@echo "make images   build the lab, yolo, serve, prometheus and alertmanager Docker images (labkit-NAME:$(VERSION))"

# one install of labkit with every lab's dependencies (settings.ini: requirements + extras `all` and `dev`)
$(STAMP): settings.ini setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all,dev]"
	$(PY) -m ipykernel install --sys-prefix --name labkit --display-name "Python (labkit)" >/dev/null
	@touch $@

setup: $(STAMP)

ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

# students: their own folder of student copies, made from nbs/ (existing notebooks kept, new ones added)
lab: setup
	$(VENV)/bin/labkit student nbs $(STUDENT_DIR) --keep-work
	LABKIT_DATA=$${LABKIT_DATA:-$(CURDIR)/data} $(VENV)/bin/jupyter lab --notebook-dir=$(STUDENT_DIR) --ip=127.0.0.1 --port=$(PORT) --no-browser $(ROOT_FLAG)

# instructors: the source notebooks, solutions included
instructor: setup
	$(VENV)/bin/jupyter lab --notebook-dir=nbs --ip=127.0.0.1 --port=$(PORT) --no-browser $(ROOT_FLAG)

test: setup
	LABKIT_FAST=1 $(PY) -m pytest tests nbs -m "not course_run" --nbval-lax --nbval-current-env --nbval-cell-timeout=900 --durations=15 -p no:cacheprovider

# every student copy executed end to end in fast mode: no stored "correct", every self-check "not written yet"
test-student-copies: setup
	LABKIT_FAST=1 $(PY) -m pytest tests/test_student.py -m course_run --durations=20 -p no:cacheprovider

check: setup
	$(VENV)/bin/nbdev_export
	$(VENV)/bin/nbdev_clean
	@git diff --quiet -- labkit nbs && test -z "$$(git status --porcelain -- labkit nbs)" \
	  || { git status --short -- labkit nbs; echo "labkit/ or nbs/ changed: run nbdev_export and nbdev_clean, then commit"; exit 1; }

export: setup
	$(VENV)/bin/nbdev_export

docs: setup
	$(VENV)/bin/labkit docs

docs-instructor: setup
	$(VENV)/bin/labkit docs --instructor

student: setup
	$(VENV)/bin/labkit student nbs _student

# BuildKit builds (cache mounts): `docker buildx`, or a client with BuildKit built in
DOCKER  ?= $(shell docker buildx version >/dev/null 2>&1 && echo docker || { test -x /usr/bin/docker && echo /usr/bin/docker || echo docker; })
SOURCE  := $(shell sed -n 's/^git_url *= *//p' settings.ini)
BUILD    = DOCKER_BUILDKIT=1 $(DOCKER) build --network host

images:
	$(BUILD) -f docker/lab/Dockerfile --build-arg LABKIT_VERSION=$(VERSION) --build-arg LABKIT_SOURCE=$(SOURCE) -t labkit-lab:$(VERSION) -t labkit-lab:latest .
	$(BUILD) -f docker/yolo/Dockerfile -t labkit-yolo:$(VERSION) -t labkit-yolo:latest .
	$(BUILD) -f docker/serve/Dockerfile --build-arg VERSION=$(VERSION) -t labkit-serve:$(VERSION) -t labkit-serve:latest .
	$(BUILD) -f docker/prometheus/Dockerfile -t labkit-prometheus:$(VERSION) -t labkit-prometheus:latest .
	$(BUILD) -f docker/alertmanager/Dockerfile -t labkit-alertmanager:$(VERSION) -t labkit-alertmanager:latest .

clean:
	rm -rf _docs _docs_instructor _proc _student .pytest_cache nbs/_quarto.yml nbs/nbdev.yml nbs/sidebar.yml
