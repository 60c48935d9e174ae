# cxrscreen — the two commands in the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cxrscreen-installed
TORCH  ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: setup demo test test-fast test-avx2 lint sysdeps clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of PyTorch pinned first (an unpinned torch pulls a multi-GB CUDA build); GPU: see README.
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	# Self-supervised ResNet50 weights for `train --init imgsim` (MIT); --no-deps avoids OpenCV.
	$(BIN)/python -m pip install -q --no-deps imgsim==0.1.2
	touch $(STAMP)

# OpenJPEG for glymur's reduced-resolution JPEG 2000 decoding (optional: without it the full
# image is decoded by pylibjpeg-openjpeg, just slower). Installed when we are root with apt.
sysdeps:
	@if ldconfig -p 2>/dev/null | grep -q libopenjp2; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq libopenjp2-7 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libopenjp2-7 >/dev/null)) \
		|| echo "note: could not install libopenjp2-7; JPEG 2000 will be decoded at full resolution"; \
	else echo "note: libopenjp2 not found; JPEG 2000 will be decoded at full resolution (apt-get install libopenjp2-7)"; fi
# dicom3tools' dciodvfy checks the DICOM result objects in the tests (optional: skipped without it).
	@if command -v dciodvfy >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dicom3tools >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq dicom3tools >/dev/null)) \
		|| echo "note: could not install dicom3tools; the dciodvfy checks of DICOM results will be skipped"; \
	else echo "note: dciodvfy not found; its checks of DICOM results will be skipped (apt-get install dicom3tools)"; fi
# Orthanc, the PACS the pull/send tests run (optional: skipped without it). Its system service,
# which the package enables, is disabled again: the tests start their own on free ports.
	@if command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		( (apt-get install -y -qq orthanc >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq orthanc >/dev/null)) \
		 && (systemctl disable --now orthanc >/dev/null 2>&1 || true)) \
		|| echo "note: could not install orthanc; the PACS tests of pull/send will be skipped"; \
	else echo "note: Orthanc not found; the PACS tests of pull/send will be skipped (apt-get install orthanc)"; fi
# Orthanc's DICOMweb plugin, the server of the DICOMweb tests of pull/send (optional: skipped without it).
	@if [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		( (apt-get install -y -qq orthanc-dicomweb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq orthanc-dicomweb >/dev/null)) \
		 && (systemctl disable --now orthanc >/dev/null 2>&1 || true)) \
		|| echo "note: could not install orthanc-dicomweb; the DICOMweb tests of pull/send will be skipped"; \
	else echo "note: Orthanc's DICOMweb plugin not found; the DICOMweb tests will be skipped (apt-get install orthanc-dicomweb)"; fi
# dcmtk (storescu, storescp): a second, independent DICOM peer for the network tests (optional: skipped without it).
	@if command -v storescu >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dcmtk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq dcmtk >/dev/null)) \
		|| echo "note: could not install dcmtk; the tests that use storescu/storescp will be skipped"; \
	else echo "note: dcmtk not found; the tests that use storescu/storescp will be skipped (apt-get install dcmtk)"; fi

setup: $(STAMP) sysdeps

demo: setup
	@$(BIN)/cxrscreen scan sample_dicoms --out $(DEMO_OUT); rc=$$?; \
	if [ $$rc -gt 1 ]; then exit $$rc; fi; \
	echo "worklists: $(DEMO_OUT)/worklist_studies.csv and $(DEMO_OUT)/worklist_images.csv"; \
	echo "reports:   $(DEMO_OUT)/reports/ and $(DEMO_OUT)/summary.pdf"; \
	echo "(exit code $$rc: the sample folder holds one deliberately corrupt file)"

lint: setup
	$(BIN)/ruff check cxrscreen tests tools benchmarks

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The suite without the tests marked slow (subprocesses of cxrscreen or python, Orthanc, dciodvfy,
# kill -9, the fuzz runs, model training, int8 calibration, the longer scans): a quick check while
# editing; `make test` runs them all.
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

# The suite as an AVX2-only CPU runs it, on any x86-64 CPU: no bf16 (precision "auto" → int8 for a
# model with an int8 calibration, else fp32), and ATen / oneDNN / fbgemm limited to AVX2 kernels.
test-avx2: setup
	CXRSCREEN_DISABLE_BF16=1 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \
		$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
