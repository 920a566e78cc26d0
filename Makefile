# hierdiff developer commands. Each target first runs tools/setup_env.sh, which creates .venv and the
# ComfyUI host in .comfyui/ on a fresh machine (Python 3.11) and returns quickly once they exist.

.PHONY: setup test lint demo

setup:
	tools/setup_env.sh

# Lint and the whole test suite (see tools/run_tests.sh). `.ci/run` runs exactly this.
test: setup
	tools/run_tests.sh

lint: setup
	.venv/bin/ruff check .

# Images for the embedded prompt set on a real headless ComfyUI server with the tiny test model.
demo: setup
	.venv/bin/python tools/demo.py
